"""``flowkit reproduce kernelized-flow``: a generator trained by gradient descent on MMD^2
against the same generator trained by the parametric kernelized flow (Mroueh & Nguyen 2021 [MN21]).

Both start from the same weights (an MLP from a 2-D Gaussian latent to the plane) and see
the same latent batches; the target is 8 gaussians. Plain gradient descent takes
``theta <- theta - eta_gd grad_theta MMD^2 / 2``; the kernelized flow takes
``theta <- theta - eta (lam I + G_theta)^{-1} grad_theta MMD^2 / 2`` with conjugate
gradients on Jacobian-vector products (:class:`flowkit.generators.ParametricKernelizedFlow`,
a reconstruction of Mroueh & Nguyen 2021, see its docstring). MMD^2 is recorded at every
step on that step's batch; the exact W2 between ``--n-eval`` generated points and as many
held-out data points every ``--eval-every`` steps.

Writes ``config.json``, ``results.json`` and ``curves`` (PNG and PDF).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from flowkit.experiments._common import integer, launch, number

NAME = "kernelized-flow"
HELP = "generator on 8 gaussians: gradient descent vs the parametric kernelized MMD flow"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    positive = number(0, strict=True)
    parser.add_argument("--steps", type=integer(1), default=300, help="parameter updates")
    parser.add_argument("--batch", type=integer(2), default=256, help="latent samples per step")
    parser.add_argument("--data", type=integer(2), default=1000, help="target points")
    parser.add_argument("--hidden", type=integer(1), default=64, help="generator MLP width")
    parser.add_argument("--bandwidth", type=positive, default=0.5, help="Gaussian kernel h")
    parser.add_argument("--eta-gd", type=positive, default=5.0, help="gradient-descent step")
    parser.add_argument("--eta", type=positive, default=0.5, help="kernelized-flow step")
    parser.add_argument("--lam", type=positive, default=1e-3, help="kernelized-flow lambda")
    parser.add_argument("--cg-iters", type=integer(1), default=20,
                        help="CG iterations per step")
    parser.add_argument("--n-eval", type=integer(2), default=500, help="points in each W2")
    parser.add_argument("--eval-every", type=integer(1), default=25, help="steps between W2")


def _train(solver: str, args: argparse.Namespace, data: torch.Tensor, held_out: torch.Tensor,
           device: torch.device) -> dict:
    import flowkit as fk

    gen = fk.nn.MLP(2, 2, hidden=args.hidden, depth=3,
                    generator=torch.Generator().manual_seed(args.seed)).to(device)
    cg = solver == "cg"
    flow = fk.generators.ParametricKernelizedFlow(
        gen, data, fk.kernels.Gaussian(args.bandwidth), args.eta if cg else args.eta_gd,
        args.lam, batch_size=args.batch, solver=solver, cg_iters=args.cg_iters,
        seed=args.seed + 1)
    w2_steps, w2, seconds = [], [], 0.0

    def evaluate(k: int) -> None:
        fake = flow.sample(args.n_eval, seed=args.seed + 2)
        w2_steps.append(k)
        w2.append(fk.monitors.wasserstein(fake, held_out, 2).value)

    evaluate(0)
    history = {"step": [], "mmd2": [], "cg_iters": [], "cg_residual": []}
    for k in range(args.steps):
        t0 = time.perf_counter()
        info = flow.step()
        seconds += time.perf_counter() - t0
        history["step"].append(k)
        for key in ("mmd2", "cg_iters", "cg_residual"):
            history[key].append(info[key])
        if (k + 1) % args.eval_every == 0 or k + 1 == args.steps:
            evaluate(k + 1)
    return {"history": history, "w2_steps": w2_steps, "w2": w2, "train_seconds": seconds,
            "n_params": flow.n_params}


def configure(args: argparse.Namespace) -> dict:
    """``--quick``: 4 steps of a width-16 generator on 200 points."""
    if args.quick:
        args.steps, args.batch, args.data = min(args.steps, 4), min(args.batch, 32), 200
        args.hidden, args.n_eval, args.eval_every = min(args.hidden, 16), 64, 2
        args.cg_iters = min(args.cg_iters, 5)
    return {k: v for k, v in vars(args).items() if not k.startswith("_")}


def main(args: argparse.Namespace):
    """Run the experiment with parsed arguments (what the command line does)."""
    return launch(sys.modules[__name__], args)


def run(args: argparse.Namespace, run) -> None:
    import flowkit as fk
    from flowkit import plotting

    device = torch.device(args.device)
    data = fk.datasets.eight_gaussians(args.data, seed=args.seed, device=device)
    held_out = fk.datasets.eight_gaussians(args.n_eval, seed=args.seed + 100, device=device)
    results = {"gradient descent": _train("none", args, data, held_out, device),
               "kernelized flow": _train("cg", args, data, held_out, device)}

    print(f"8 gaussians, generator MLP ({results['kernelized flow']['n_params']} parameters), "
          f"Gaussian kernel h = {args.bandwidth}, {args.steps} steps, batch {args.batch}")
    print(f"{'method':<18} {'step':>6} {'MMD^2 first':>12} {'MMD^2 last10':>13} {'W2 final':>9} "
          f"{'s/step':>8}")
    for label, r in results.items():
        m = r["history"]["mmd2"]
        step = args.eta_gd if label == "gradient descent" else args.eta
        tail = sum(m[-10:]) / len(m[-10:])
        print(f"{label:<18} {step:>6g} {m[0]:>12.4f} {tail:>13.4f} {r['w2'][-1]:>9.4f} "
              f"{r['train_seconds'] / args.steps:>8.3f}")
    run.write_json("results.json", results)

    fig, axes = plotting.figure(2, width=6.6, height=2.6)
    plotting.log_axis(axes[0])
    plotting.plot_curves(axes[0], {label: (r["history"]["step"], r["history"]["mmd2"])
                                   for label, r in results.items()})
    plotting.plot_curves(axes[1], {label: (r["w2_steps"], r["w2"])
                                   for label, r in results.items()})
    axes[0].set_xlabel("parameter update")
    axes[0].set_ylabel("MMD$^2$ on the step's batch")
    axes[1].set_xlabel("parameter update")
    axes[1].set_ylabel("W$_2$ to held-out data (data units)")
    fig.suptitle("Generator on 8 gaussians: gradient descent vs kernelized flow")
    plotting.place_legend(fig, axes[:1], loc="outside lower center")
    plotting.save_figure(fig, run, "curves")
