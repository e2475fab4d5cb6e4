"""``flowkit demo``: an MMD flow from Gaussian noise to 8 Gaussians, on the CPU in seconds.

Algorithm 3 of Nitanda & Suzuki (2018) with the closed-form MMD first variation (the kernel
witness, Arbel et al. 2019): no network at all. Prints W2 (exact, POT) and MMD every few
steps and writes ``config.json``, ``metrics.json`` (also as ``results.json``) and
``snapshots.png`` / ``snapshots.pdf`` to a run folder.

Under ``torchrun --nproc-per-node P -m flowkit demo`` the particles and the data are
sharded over the ``P`` processes (:class:`flowkit.distributed.ShardedMMD`, the same flow up
to the order of floating-point sums); rank 0 prints and writes the run folder.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import torch

from flowkit.experiments._common import integer, launch, number

NAME = "demo"
HELP = "MMD flow from N(0, 0.5^2) noise to 8 gaussians (a few seconds on a CPU)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n", type=integer(1), default=500, help="particles and data points")
    parser.add_argument("--steps", type=integer(1), default=100, help="outer steps T")
    parser.add_argument("--step-size", type=number(0, strict=True), default=1.0, help="eta")
    parser.add_argument("--bandwidth", type=number(0, strict=True), default=0.5,
                        help="Gaussian kernel bandwidth")
    parser.add_argument("--every", type=integer(1), default=10, help="monitoring period")


def configure(args: argparse.Namespace) -> dict:
    """``--quick``: 200 points, 40 steps. Under ``torchrun``, join its process group first
    (before :func:`launch` decides which rank writes the run folder)."""
    from flowkit.distributed import init_from_env

    _, size = init_from_env()  # (0, 1) unless launched by torchrun
    if args.quick:
        args.n, args.steps = min(args.n, 200), min(args.steps, 40)
    config = {k: v for k, v in vars(args).items() if not k.startswith("_")}
    if size > 1:
        config["world_size"] = size
    return config


def main(args: argparse.Namespace):
    """Run the demo with parsed arguments (what ``flowkit demo`` does)."""
    return launch(sys.modules[__name__], args)


def run(args: argparse.Namespace, run) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import flowkit as fk
    from flowkit import distributed as fkd

    rank, size = fkd.world()  # (0, 1) unless launched by torchrun
    device = torch.device(args.device)
    data = fk.datasets.eight_gaussians(args.n, seed=args.seed, device=device)
    gen = torch.Generator().manual_seed(args.seed + 1)
    x0 = (0.5 * torch.randn(args.n, 2, generator=gen)).to(device)
    kernel = fk.kernels.Gaussian(args.bandwidth)
    if size > 1:
        objective = fkd.ShardedMMD(fkd.shard(data), kernel)
        mmd = _ShardedMMDMonitor(objective)
        monitors = [fkd.ShardedWasserstein(fkd.shard(data)), mmd, fk.monitors.WallTime()]
    else:
        objective = fk.objectives.MMD(data, kernel=kernel)
        monitors = [fk.monitors.W2(data), fk.monitors.MMD(data, kernel),
                    fk.monitors.WallTime()]
    snap_steps = sorted({0, args.steps // 4, args.steps // 2, args.steps})
    snapshots = {0: x0.cpu()}

    def keep_snapshot(state: fk.FlowState) -> None:
        if state.step in snap_steps:
            full = fkd.gather_particles(state.particles)  # every rank calls it
            if full is not None:
                snapshots[state.step] = full.cpu()

    flow = fk.FunctionalGradientDescent(
        objective, step_size=args.step_size, monitor_every=args.every,
        monitors=monitors, callbacks=[keep_snapshot], progress=not args.no_progress)
    t0 = time.perf_counter()
    result = flow.run(fkd.shard(x0), n_steps=args.steps)
    wall = time.perf_counter() - t0
    if rank != 0:
        return None

    h = result.history
    print(f"{'step':>5} {'W2':>8} {'MMD':>8} {'time[s]':>8}")
    for i, step in enumerate(h["step"]):
        print(f"{step:>5} {h['W2'][i]:>8.4f} {h['MMD'][i]:>8.4f} {h['wall_time'][i]:>8.2f}")
    print(f"final W2 = {h['W2'][-1]:.4f} after {result.n_steps} steps, {wall:.2f} s")
    metrics = {**result.summary(), "total_wall_time": wall}
    run.write_json("metrics.json", metrics)
    run.write_json("results.json", metrics)
    fig = fk.plotting.plot_snapshots(snapshots, data.cpu(), lim=2.0,
                                     title="MMD flow (Algorithm 3) to 8 gaussians")
    fk.plotting.save_figure(fig, run, "snapshots")


class _ShardedMMDMonitor:
    """``MMD`` of the union of the shards (the objective's value is its square)."""

    name = "MMD"

    def __init__(self, objective):
        self.objective = objective

    def __call__(self, state) -> dict[str, float]:
        return {self.name: math.sqrt(max(float(self.objective.value(state.particles)), 0.0))}
