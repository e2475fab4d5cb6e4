"""``flowkit reproduce noisy-mmd``: the MMD flow with and without noise injection.

Arbel, Korba, Salim & Gretton (2019) [ArbelKorbaSalimGretton19], Gaussian experiment,
reduced in size:
particles start at nu_0 = N(10, 0.5^2) and flow toward mu = N(0, 1) under the MMD with a
Gaussian kernel of bandwidth 2, step gamma on F = MMD^2 / 2 (flowkit step
``eta = gamma / 2`` on MMD^2), noise beta_n = beta until step ``--noise-until``, then 0.
The paper uses N = M = 1000, gamma = 0.1 and 10^5 iterations with noise until 5000; the
defaults here are N = M = 100, 15000 steps, noise until 5000 and gamma = 1 (ten times the
paper's step, still within Arbel et al.'s gamma <= 2/(3L) = 4/3 for sigma = 2, to make up
for 7x fewer iterations). The dimension (1 by default) and the reading of 0.5 as a
standard deviation are this reproduction's choices (not stated in the paper's text at
hand).
Float64 throughout, so MMD^2 can be followed far down.

Writes ``config.json``, ``results.json`` and ``mmd2`` (PNG and PDF: MMD^2 against steps,
one curve per noise level, the mean over seeds with a +- one standard deviation band, and
a labelled line where the noise stops).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from flowkit.experiments._common import integer, launch, number

NAME = "noisy-mmd"
HELP = "MMD flow with noise injection (Arbel et al. 2019): Gaussian experiment, reduced"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    positive = number(0, strict=True)
    parser.add_argument("--n", type=integer(2), default=100,
                        help="particles N = target points M")
    parser.add_argument("--dim", type=integer(1), default=1, help="dimension of the Gaussians")
    parser.add_argument("--steps", type=integer(1), default=15000, help="flow steps")
    parser.add_argument("--gamma", type=positive, default=1.0,
                        help="Arbel's step on MMD^2/2 (flowkit eta = gamma/2)")
    parser.add_argument("--bandwidth", type=positive, default=2.0, help="Gaussian kernel sigma")
    parser.add_argument("--noise", type=number(0), nargs="+", default=[0.0, 1.0, 10.0],
                        help="noise levels beta to compare (0 = plain MMD flow)")
    parser.add_argument("--noise-until", type=integer(0), default=5000,
                        help="beta_n = beta for n < this, then 0 (paper: 5000 of 1e5)")
    parser.add_argument("--seeds", type=integer(1), default=2, help="seeds per noise level")
    parser.add_argument("--monitor-every", type=integer(1), default=100,
                        help="steps between MMD^2")


def _run(beta: float, seed: int, args: argparse.Namespace, device: torch.device) -> dict:
    import flowkit as fk

    g = torch.Generator().manual_seed(seed)
    dt = torch.float64
    mu = torch.randn(args.n, args.dim, generator=g, dtype=dt).to(device)
    x0 = (10.0 + 0.5 * torch.randn(args.n, args.dim, generator=g, dtype=dt)).to(device)
    obj = fk.objectives.NoisyMMDFlow(
        mu, fk.kernels.Gaussian(args.bandwidth),
        noise_level=fk.objectives.arbel_schedule(beta, args.noise_until), seed=seed)
    flow = fk.FunctionalGradientDescent(
        obj, step_size=args.gamma / 2.0, monitors=[fk.monitors.ObjectiveValue()],
        monitor_every=args.monitor_every, keep_layers=False, progress=not args.no_progress)
    t0 = time.perf_counter()
    res = flow.run(x0, args.steps)
    curve = res.history["objective"]
    return {"beta": beta, "seed": seed, "steps": res.history["step"], "mmd2": curve,
            "final_mmd2": curve[-1], "min_mmd2": min(curve),
            "final_mean": float(res.particles.mean()), "final_std": float(res.particles.std()),
            # particles left beyond the kernel's reach of the target (|x| > 3 sigma + 3)
            "stranded": int((res.particles.norm(dim=1) > 3 * args.bandwidth + 3).sum()),
            "seconds": time.perf_counter() - t0}


def configure(args: argparse.Namespace) -> dict:
    """``--quick``: 40 particles, 200 steps, one seed."""
    if args.quick:
        args.n, args.steps, args.seeds = min(args.n, 40), min(args.steps, 200), 1
        args.noise_until = min(args.noise_until, 100)
        args.monitor_every = min(args.monitor_every, 50)
    return {k: v for k, v in vars(args).items() if not k.startswith("_")}


def main(args: argparse.Namespace):
    """Run the experiment with parsed arguments (what the command line does)."""
    return launch(sys.modules[__name__], args)


def run(args: argparse.Namespace, run) -> None:
    from flowkit import plotting

    device = torch.device(args.device)
    runs = [_run(beta, args.seed + s, args, device)
            for beta in args.noise for s in range(args.seeds)]

    print(f"MMD flow, nu_0 = N(10, 0.5^2) -> mu = N(0, 1) in {args.dim}-D, N = M = {args.n}, "
          f"Gaussian kernel sigma = {args.bandwidth}, gamma = {args.gamma}, {args.steps} steps, "
          f"noise until step {args.noise_until}")
    print(f"{'beta':>6} {'seed':>5} {'MMD^2 start':>12} {'final MMD^2':>12} {'min MMD^2':>12} "
          f"{'mean':>8} {'std':>7} {'stranded':>8}")
    for r in runs:
        print(f"{r['beta']:>6g} {r['seed']:>5d} {r['mmd2'][0]:>12.3e} {r['final_mmd2']:>12.3e} "
              f"{r['min_mmd2']:>12.3e} {r['final_mean']:>8.3f} {r['final_std']:>7.3f} "
              f"{r['stranded']:>8d}")
    run.write_json("results.json", {"runs": runs})
    plotting.save_figure(_figure(runs, args.noise_until), run, "mmd2")


def _figure(runs: list[dict], noise_until: int):
    """MMD^2 against steps, one curve per noise level (a band over seeds)."""
    from flowkit import plotting

    fig, (ax,) = plotting.figure(width=4.6, height=3.2)
    plotting.log_axis(ax)
    curves = {}
    for beta in dict.fromkeys(r["beta"] for r in runs):
        group = [r for r in runs if r["beta"] == beta]
        curves[f"beta = {beta:g}" if beta else "no noise"] = (
            group[0]["steps"], [r["mmd2"] for r in group])
    plotting.plot_curves(ax, curves)
    plotting.reference_line(ax, noise_until, f"noise stops (step {noise_until})", axis="x")
    ax.set_xlabel("step")
    ax.set_ylabel("MMD$^2$ (Gaussian kernel)")
    n_seeds = len(runs) // len(curves)
    seeds = "1 seed" if n_seeds == 1 else f"mean +- std over {n_seeds} seeds"
    ax.set_title(f"MMD flow with noise injection ({seeds})")
    # below the axes: on the right, the legend ran over the title
    plotting.place_legend(fig, loc="outside lower center")
    return fig
