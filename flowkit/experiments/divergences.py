"""``flowkit reproduce divergences``: the divergences and flows users swap in, side by side.

From one start (``N`` points of N(0, 0.5^2 I)) toward 25 gaussians, particle flows of
Algorithm 3 for two families of objectives:

* **sample-based**, flowing to the data sample: the MMD with a Gaussian, an inverse
  multiquadric and a Laplacian kernel, the energy distance, the debiased Sinkhorn
  divergence, the sliced Wasserstein distance (50 fresh directions per step), the
  Wasserstein-Fisher-Rao MMD flow (weights by birth-death) and Algorithm 1 (a WGAN-GP
  critic fitted at every step, :class:`flowkit.objectives.AdversarialObjective`);
* **score-based**, flowing to the law the data is drawn from, through its score in closed
  form (:func:`flowkit.datasets.twenty_five_gaussians_score`, the equal-weight mixture of
  25 isotropic Gaussians): SVGD, KSD descent, unadjusted Langevin and the blob method of
  KL (:mod:`flowkit.flows`).

Every flow runs for the same time budget (wall-clock seconds, or with ``--clock cpu`` the
process's CPU seconds), in chunks of 1, 2, 4, ... up to
``--chunk`` steps; the particles (and WFR's weights) are saved between chunks and their
exact W2 to the data computed after the run, the same monitor for every flow, so
monitoring is *not* counted in the wall time. Step sizes are per method (the objectives'
gradients have different scales: the mixture's score is stiff, ``1/std^2 = 3200``) and are
part of the configuration.

Writes ``config.json``, ``results.json`` (every curve), ``w2_time`` (W2 against steps and
against wall time, log axes, one row per family) and ``particles`` (final particles over
the data), each as PNG and PDF.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time

import torch

from flowkit.experiments._common import integer, launch, number

NAME = "divergences"
HELP = ("sample-based (MMD, energy, Sinkhorn, sliced, WFR, Algorithm 1) and score-based "
        "(SVGD, KSD, Langevin, blob KL) flows to 25 gaussians: W2 vs time")

# label -> default step size (tuned once on this problem; overridable with --step-sizes,
# whose order is this one: the first six are the original methods, so older command lines
# keep their meaning)
STEP_SIZES = {
    "MMD Gaussian(0.2)": 0.5,
    "MMD IMQ(0.2)": 0.5,
    "MMD Laplacian(0.2)": 0.5,
    "energy distance": 0.5,
    "Sinkhorn (blur 0.05)": 0.5,
    "Algorithm 1 (WGAN-GP)": 0.02,
    "sliced W2 (50 dirs)": 1.0,
    "WFR MMD Gaussian(0.2)": 0.5,
    # the score-based flows: steps of about a third of the modes' variance (3.1e-4)
    "SVGD (median bandwidth)": 1e-4,
    "KSD Gaussian(0.1)": 1e-6,
    "Langevin": 1e-4,
    "blob KL (delta 0.05)": 1e-4,
}
#: The target's mode width: twenty_five_gaussians' default (its score is in closed form).
TARGET_STD = 0.05 / (2 * 2**0.5)
SCORE_BASED = ("SVGD (median bandwidth)", "KSD Gaussian(0.1)", "Langevin",
               "blob KL (delta 0.05)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n", type=integer(2), default=500, help="particles N = data points M")
    parser.add_argument("--seconds", type=number(0, strict=True), default=15.0,
                        help="wall-clock budget per method (monitoring excluded)")
    parser.add_argument("--chunk", type=integer(1), default=20,
                        help="largest number of steps between W2 evaluations")
    parser.add_argument("--max-steps", type=integer(1), default=3000,
                        help="step cap per method")
    parser.add_argument("--step-sizes", type=number(0, strict=True), nargs="+", default=None,
                        help="step sizes in the order " + ", ".join(STEP_SIZES)
                        + " (fewer values set the first methods, the others keep theirs)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="what the budget and the time axis count: wall-clock seconds, or "
                             "the process's CPU seconds (CPU device only; on a shared "
                             "machine the CPU time of a one-thread run does not count the "
                             "time other jobs hold the cores)")
    parser.add_argument("--critic-steps", type=integer(1), default=5,
                        help="Algorithm 1: Adam steps per outer step (T_0)")


def _step_sizes(args: argparse.Namespace) -> dict[str, float]:
    sizes = dict(STEP_SIZES)
    given = args.step_sizes or []
    if len(given) > len(sizes):
        raise ValueError(f"--step-sizes: at most {len(sizes)} values (one per method), got "
                         f"{len(given)}")
    sizes.update(zip(sizes, given))
    return sizes


def _objectives(data: torch.Tensor, args: argparse.Namespace) -> dict:
    import flowkit as fk
    import flowkit.flows as flows

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
    objs["sliced W2 (50 dirs)"] = flows.SlicedWasserstein(data, 50, resample=True,
                                                          seed=args.seed)
    objs["WFR MMD Gaussian(0.2)"] = flows.WFR(data, k.Gaussian(0.2), weight_step=1.0)
    # the law the data is drawn from, by its score (modes moved to the device once)
    centers = fk.datasets.twenty_five_gaussians_centers().to(data.device, data.dtype)
    score = functools.partial(fk.datasets.mixture_score, centers=centers,
                              std=TARGET_STD)
    objs["SVGD (median bandwidth)"] = flows.SVGD(score=score, bandwidth="median")
    objs["KSD Gaussian(0.1)"] = flows.KSD(score=score, kernel=k.Gaussian(0.1))
    objs["Langevin"] = flows.Langevin(score=score)
    objs["blob KL (delta 0.05)"] = flows.BlobKL(score=score, bandwidth=0.05)
    return objs


def _flow(label: str, objective, eta: float, x0: torch.Tensor, data: torch.Tensor,
          args: argparse.Namespace) -> dict:
    import flowkit as fk

    flow = fk.FunctionalGradientDescent(objective, step_size=eta, keep_layers=False,
                                        progress=False)
    # each chunk is a new run, which restarts the noise seeds from noise_seed: a fresh
    # noise_seed per chunk keeps Langevin's noise independent across chunks
    noise_seeds = torch.Generator().manual_seed(args.seed + 2)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    x, w, elapsed, steps = x0, None, 0.0, 0
    # snapshots now, W2 after the run: the OT solver's threads would otherwise still be
    # spinning when the next chunk starts and slow it down
    times, snaps, stepss = [0.0], [(x0.cpu(), None)], [0]
    k = 0
    while elapsed < args.seconds and steps < args.max_steps:
        # chunks of 1, 2, 4, ... steps up to --chunk: slow flows get early points too
        n = min(args.chunk, 2**k, args.max_steps - steps)
        k += 1
        flow.noise_seed = int(torch.randint(0, 2**62, (1,), generator=noise_seeds))
        t0 = clock()
        res = flow.run(x, n, weights=w)
        elapsed += clock() - t0
        x, w = res.particles, res.weights
        steps += n
        times.append(elapsed)
        stepss.append(steps)
        snaps.append((x.cpu(), None if w is None else w.cpu()))
    # one monitor for every flow: exact W2 of the (weighted) particles to the data
    w2s = [fk.monitors.wasserstein(s, data.cpu(), weights=sw).value for s, sw in snaps]
    return {"label": label, "family": "score" if label in SCORE_BASED else "sample",
            "step_size": eta, "seconds": times, "steps": stepss, "w2": w2s,
            "final_particles": x.cpu()}


def configure(args: argparse.Namespace) -> dict:
    """``--quick``: 60 points, 2 steps per method. One thread unless ``--threads``."""
    if args.clock == "cpu" and torch.device(args.device).type != "cpu":
        raise ValueError(f"--clock cpu: the process's CPU time misses the work of device "
                         f"{args.device}; use --clock wall")
    if args.threads is None:
        # 500 points: a kernel matrix is 0.25 M entries, too small for a second thread to
        # pay for its synchronisation, which on a loaded machine costs a scheduler slice
        # per operation (measured: a Sinkhorn step 10x slower with 2 threads at load 10)
        args.threads = 1
    if args.quick:
        args.n, args.seconds, args.chunk, args.max_steps = min(args.n, 60), 0.05, 2, 2
        args.critic_steps = min(args.critic_steps, 2)
    config = {k: v for k, v in vars(args).items() if not k.startswith("_")}
    config["step_sizes_used"] = _step_sizes(args)
    config["target"] = (f"25 gaussians (std {TARGET_STD:.5g}); score-based flows use the "
                        "mixture's closed-form score")
    return config


def main(args: argparse.Namespace):
    """Run the experiment with parsed arguments (what the command line does)."""
    return launch(sys.modules[__name__], args)


def run(args: argparse.Namespace, run) -> None:
    import flowkit as fk
    from flowkit import plotting

    sizes = _step_sizes(args)
    device = torch.device(args.device)
    data = fk.datasets.twenty_five_gaussians(args.n, seed=args.seed, std=TARGET_STD,
                                             device=device)
    g = torch.Generator().manual_seed(args.seed + 1)
    x0 = (0.5 * torch.randn(args.n, 2, generator=g)).to(device)
    floor = fk.monitors.wasserstein(fk.datasets.twenty_five_gaussians(
        args.n, seed=args.seed + 7, std=TARGET_STD), data.cpu()).value

    results = [_flow(label, obj, sizes[label], x0, data, args)
               for label, obj in _objectives(data, args).items()]
    print(f"25 gaussians, N = M = {args.n}, {args.seconds:g} {args.clock} s per method "
          f"(W2 excluded), W2 of a fresh data sample: {floor:.4f}")
    print(f"{'method':<24} {'family':>6} {'eta':>6} {'steps':>6} {'W2 start':>9} "
          f"{'W2 final':>9}")
    for r in results:
        print(f"{r['label']:<24} {r['family']:>6} {r['step_size']:>6g} {r['steps'][-1]:>6d} "
              f"{r['w2'][0]:>9.4f} {r['w2'][-1]:>9.4f}")
    run.write_json("results.json", {"w2_data_vs_data": floor, "clock": args.clock, "runs": [
        {k: v for k, v in r.items() if k != "final_particles"} for r in results]})

    fig, axes = plotting.figure(2, 2, width=7.6, height=5.0, sharey=True)
    families = (("sample", "sample-based (to the data)"),
                ("score", "score-based (to the mixture's score)"))
    for row, (family, name) in enumerate(families):
        by_step, by_time = axes[2 * row], axes[2 * row + 1]
        runs = [r for r in results if r["family"] == family]
        # step 0 / time 0 cannot sit on a log axis: both panels start at the first step
        plotting.plot_curves(by_step, {r["label"]: (r["steps"][1:], r["w2"][1:]) for r in runs})
        plotting.plot_curves(by_time, {r["label"]: (r["seconds"][1:], r["w2"][1:])
                                       for r in runs})
        for ax in (by_step, by_time):
            plotting.log_axis(ax, "x")
            plotting.log_axis(ax, "y")
            plotting.reference_line(ax, floor, f"data vs fresh data ({floor:.3f})")
        by_step.set_xlabel("outer steps")
        by_time.set_xlabel(f"{'CPU' if args.clock == 'cpu' else 'wall'} time [s] "
                           "(monitoring excluded)")
        by_step.set_ylabel("W$_2$ to the data (data units)")
        by_step.set_title(name, loc="left")
        plotting.place_legend(fig, [by_step],
                              loc="outside right upper" if row == 0 else "outside right lower")
    fig.suptitle(f"Flows to 25 gaussians from one start (N = {args.n}; start W$_2$ = "
                 f"{results[0]['w2'][0]:.2f})")
    plotting.save_figure(fig, run, "w2_time")

    fig = plotting.plot_snapshots({r["label"]: r["final_particles"] for r in results},
                                  data.cpu(), lim=2.0, step_label="", ncols=6,
                                  title="Final particles over the data")
    plotting.save_figure(fig, run, "particles")
