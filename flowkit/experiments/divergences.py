"""``flowkit reproduce divergences``: the divergences users swap in, side by side.

From one start (``N`` points of N(0, 0.5^2 I)) toward 25 gaussians, particle flows of
Algorithm 3 for: the MMD with a Gaussian, an inverse multiquadric and a Laplacian kernel,
the energy distance, the debiased Sinkhorn divergence, and Algorithm 1 (a WGAN-GP critic
fitted at every step, :class:`flowkit.objectives.AdversarialObjective`). Each flow runs for
the same wall-clock budget, in chunks of 1, 2, 4, ... up to ``--chunk`` steps; the
particles are saved between chunks and their exact W2 to the data computed after the run,
so monitoring is *not* counted in the wall time. Step sizes
are per method (the objectives' gradients have different scales) and are part of the
configuration.

Writes ``config.json``, ``results.json``, ``w2_time`` (W2 against steps and against wall
time, log axes: a method's slow first step does not squeeze the others) and ``particles``
(final particles over the data), each as PNG and PDF.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from flowkit.experiments._common import integer, launch, number

NAME = "divergences"
HELP = "MMD (3 kernels), energy, Sinkhorn and Algorithm 1 flows to 25 gaussians: W2 vs time"

# label -> default step size (tuned once on this problem; overridable with --steps-sizes)
STEP_SIZES = {
    "MMD Gaussian(0.2)": 0.5,
    "MMD IMQ(0.2)": 0.5,
    "MMD Laplacian(0.2)": 0.5,
    "energy distance": 0.5,
    "Sinkhorn (blur 0.05)": 0.5,
    "Algorithm 1 (WGAN-GP)": 0.02,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n", type=integer(2), default=500, help="particles N = data points M")
    parser.add_argument("--seconds", type=number(0, strict=True), default=15.0,
                        help="wall-clock budget per method (monitoring excluded)")
    parser.add_argument("--chunk", type=integer(1), default=20,
                        help="largest number of steps between W2 evaluations")
    parser.add_argument("--max-steps", type=integer(1), default=3000,
                        help="step cap per method")
    parser.add_argument("--step-sizes", type=number(0, strict=True), nargs=len(STEP_SIZES),
                        default=None, help="step sizes in the order " + ", ".join(STEP_SIZES))
    parser.add_argument("--critic-steps", type=integer(1), default=5,
                        help="Algorithm 1: Adam steps per outer step (T_0)")


def _objectives(data: torch.Tensor, args: argparse.Namespace) -> dict:
    import flowkit as fk

    k = fk.kernels
    objs = {
        "MMD Gaussian(0.2)": fk.objectives.MMD(data, k.Gaussian(0.2)),
        "MMD IMQ(0.2)": fk.objectives.MMD(data, k.InverseMultiquadric(0.2)),
        "MMD Laplacian(0.2)": fk.objectives.MMD(data, k.Laplacian(0.2)),
        "energy distance": fk.objectives.EnergyDistance(data),
        "Sinkhorn (blur 0.05)": fk.objectives.SinkhornDivergence(data, blur=0.05),
    }
    critic = fk.critics.WGANGPCritic(dim=2, hidden=128, steps=args.critic_steps, seed=args.seed)
    objs["Algorithm 1 (WGAN-GP)"] = fk.objectives.AdversarialObjective(critic, data)
    return objs


def _flow(label: str, objective, eta: float, x0: torch.Tensor, data: torch.Tensor,
          args: argparse.Namespace) -> dict:
    import flowkit as fk

    flow = fk.FunctionalGradientDescent(objective, step_size=eta, keep_layers=False,
                                        progress=False)
    x, elapsed, steps = x0, 0.0, 0
    # snapshots now, W2 after the run: the OT solver's threads would otherwise still be
    # spinning when the next chunk starts and slow it down
    times, snaps, stepss = [0.0], [x0.cpu()], [0]
    k = 0
    while elapsed < args.seconds and steps < args.max_steps:
        # chunks of 1, 2, 4, ... steps up to --chunk: slow flows get early points too
        n = min(args.chunk, 2**k, args.max_steps - steps)
        k += 1
        t0 = time.perf_counter()
        x = flow.run(x, n).particles
        elapsed += time.perf_counter() - t0
        steps += n
        times.append(elapsed)
        stepss.append(steps)
        snaps.append(x.cpu())
    w2s = [fk.monitors.wasserstein(s, data.cpu()).value for s in snaps]
    return {"label": label, "step_size": eta, "seconds": times, "steps": stepss, "w2": w2s,
            "final_particles": x.cpu()}


def configure(args: argparse.Namespace) -> dict:
    """``--quick``: 60 points, 2 steps per method."""
    if args.quick:
        args.n, args.seconds, args.chunk, args.max_steps = min(args.n, 60), 0.05, 2, 2
        args.critic_steps = min(args.critic_steps, 2)
    sizes = dict(zip(STEP_SIZES, args.step_sizes)) if args.step_sizes else dict(STEP_SIZES)
    config = {k: v for k, v in vars(args).items() if not k.startswith("_")}
    config["step_sizes_used"] = sizes
    return config


def main(args: argparse.Namespace):
    """Run the experiment with parsed arguments (what the command line does)."""
    return launch(sys.modules[__name__], args)


def run(args: argparse.Namespace, run) -> None:
    import flowkit as fk
    from flowkit import plotting

    sizes = dict(zip(STEP_SIZES, args.step_sizes)) if args.step_sizes else dict(STEP_SIZES)
    device = torch.device(args.device)
    data = fk.datasets.twenty_five_gaussians(args.n, seed=args.seed, device=device)
    g = torch.Generator().manual_seed(args.seed + 1)
    x0 = (0.5 * torch.randn(args.n, 2, generator=g)).to(device)
    floor = fk.monitors.wasserstein(
        fk.datasets.twenty_five_gaussians(args.n, seed=args.seed + 7), data.cpu()).value

    results = [_flow(label, obj, sizes[label], x0, data, args)
               for label, obj in _objectives(data, args).items()]
    print(f"25 gaussians, N = M = {args.n}, {args.seconds:g} s per method "
          f"(W2 excluded), W2 of a fresh data sample: {floor:.4f}")
    print(f"{'method':<24} {'eta':>6} {'steps':>6} {'W2 start':>9} {'W2 final':>9}")
    for r in results:
        print(f"{r['label']:<24} {r['step_size']:>6g} {r['steps'][-1]:>6d} {r['w2'][0]:>9.4f} "
              f"{r['w2'][-1]:>9.4f}")
    run.write_json("results.json", {"w2_data_vs_data": floor, "runs": [
        {k: v for k, v in r.items() if k != "final_particles"} for r in results]})

    fig, (by_step, by_time) = plotting.figure(2, width=7.0, height=2.8, sharey=True)
    # step 0 / time 0 cannot sit on a log axis: both panels start at the first step
    plotting.plot_curves(by_step, {r["label"]: (r["steps"][1:], r["w2"][1:]) for r in results})
    plotting.plot_curves(by_time, {r["label"]: (r["seconds"][1:], r["w2"][1:])
                                   for r in results})
    for ax in (by_step, by_time):
        plotting.log_axis(ax, "x")
        plotting.log_axis(ax, "y")
        plotting.reference_line(ax, floor, f"data vs fresh data ({floor:.3f})")
    by_step.set_xlabel("outer steps")
    by_time.set_xlabel("wall time [s] (monitoring excluded)")
    by_step.set_ylabel("W$_2$ to the data (data units)")
    fig.suptitle(f"Flows to 25 gaussians from one start (N = {args.n}; start W$_2$ = "
                 f"{results[0]['w2'][0]:.2f})")
    plotting.place_legend(fig, [by_step], loc="outside lower center")
    plotting.save_figure(fig, run, "w2_time")

    fig = plotting.plot_snapshots({r["label"]: r["final_particles"] for r in results},
                                  data.cpu(), lim=2.0, step_label="",
                                  title="Final particles over the data")
    plotting.save_figure(fig, run, "particles")
