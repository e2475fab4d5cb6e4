"""``flowkit reproduce cg``: the conjugate gradient method for games (Naganuma & Iiduka
2023) against SGD, momentum and Adam.

1. The toy saddle of the paper's code, ``U = (1 + x^2)(100 - y^2)`` from ``(2, -4)`` for
   400 simultaneous iterations (the paper's public code [NI23]): CG with the FR and PRP
   rules and coefficients 0.5 and 1 against SGD and momentum 0.5, all with the same step sizes.
2. A small non-saturating GAN on 8 gaussians, discriminator then generator each
   iteration as in the paper's ``main.py``, trained with CG, SGD, momentum and Adam; the
   exact W2 distance (POT ``ot.emd2``, float64, uniform weights) between generated and
   held-out data is tracked over the iterations for several seeds.

Writes ``config.json``, ``results.json``, ``saddle`` and ``gan_w2`` (PNG and PDF).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from typing import TYPE_CHECKING

import torch
from torch import nn

from flowkit.experiments._common import integer, launch, number
from flowkit.nn import MLP

if TYPE_CHECKING:
    from flowkit.runs import RunFolder

NAME = "cg"
HELP = "conjugate gradient vs SGD/momentum/Adam: the (1+x^2)(100-y^2) saddle and a GAN"

_SADDLE_START = (2.0, -4.0)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    positive = number(0, strict=True)
    parser.add_argument("--saddle-steps", type=integer(1), default=400,
                        help="saddle iterations")
    parser.add_argument("--saddle-lr-x", type=positive, default=5e-5,
                        help="step of the min player x (paper grid: 5e-6 .. 5e-5)")
    parser.add_argument("--saddle-lr-y", type=positive, default=5e-5,
                        help="step of the max player y (paper grid: 5e-6 .. 5e-5)")
    parser.add_argument("--gan-iters", type=integer(1), default=1500, help="GAN iterations")
    parser.add_argument("--seeds", type=integer(1), default=3,
                        help="GAN seeds: seed, seed+1, ...")
    parser.add_argument("--lr", type=positive, default=0.02,
                        help="step of SGD, momentum and CG")
    parser.add_argument("--adam-lr", type=positive, default=1e-3, help="step of Adam")
    parser.add_argument("--momentum", type=number(0, maximum=1), default=0.5,
                        help="heavy-ball momentum in [0, 1]")
    parser.add_argument("--batch", type=integer(1), default=128, help="GAN batch size")
    parser.add_argument("--hidden", type=integer(1), default=64,
                        help="hidden width of both MLPs")
    parser.add_argument("--n-eval", type=integer(2), default=512,
                        help="points in each W2 estimate")
    parser.add_argument("--eval-every", type=integer(1), default=100,
                        help="iterations between W2")


# --------------------------------------------------------------------------- saddle


def _saddle_methods(momentum: float) -> dict[str, dict]:
    methods = {"SGD": {"kind": "sgd"},
               f"momentum {momentum:g}": {"kind": "sgd", "momentum": momentum}}
    for rule in ("FR", "PRP"):
        for coeff in (0.5, 1.0):
            methods[f"CG-{rule} c={coeff:g}"] = {"kind": "cg", "beta": rule, "beta_coeff": coeff}
    return methods


def make_optimizer(params: list[torch.Tensor], lr: float, spec: dict) -> torch.optim.Optimizer:
    """The optimizer a method spec names: ``{"kind": "cg" | "adam" | "sgd", **options}``
    (shared by the toy and digits CG experiments, so both compare the same optimizers)."""
    from flowkit.games import ConjugateGradient

    options = {k: v for k, v in spec.items() if k != "kind"}
    if spec["kind"] == "cg":
        return ConjugateGradient(params, lr=lr, **options)
    if spec["kind"] == "adam":
        return torch.optim.Adam(params, lr=lr, betas=(0.5, 0.999))
    return torch.optim.SGD(params, lr=lr, **options)


def _run_saddle(spec: dict, steps: int, lr_x: float, lr_y: float,
                device: torch.device) -> dict:
    from flowkit.games import ProductSaddle, TwoPlayerOptimizer

    game = ProductSaddle(device=device)
    x = nn.Parameter(torch.tensor([_SADDLE_START[0]], dtype=torch.float64, device=device))
    y = nn.Parameter(torch.tensor([_SADDLE_START[1]], dtype=torch.float64, device=device))
    opt = TwoPlayerOptimizer(make_optimizer([x], lr_x, spec), make_optimizer([y], lr_y, spec))
    path = [(x.item(), y.item())]
    for _ in range(steps):
        opt.step(lambda: game.value(x, y))
        path.append((x.item(), y.item()))
    return {"path": path, "final_x": path[-1][0], "final_y": path[-1][1],
            "final_distance": math.hypot(*path[-1])}


# --------------------------------------------------------------------------- GAN


def _mlp(sizes: list[int], gen: torch.Generator) -> MLP:
    """ReLU MLP ``sizes[0] -> ... -> sizes[-1]`` (:class:`flowkit.nn.MLP`, PyTorch's default
    bounds ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``) drawn from ``gen``, so a seed fixes it."""
    return MLP(sizes[0], sizes[-1], sizes[1], len(sizes) - 1, "relu", generator=gen)


def _gan_methods(args: argparse.Namespace) -> dict[str, tuple[float, dict]]:
    methods = {
        "SGD": (args.lr, {"kind": "sgd"}),
        f"momentum {args.momentum:g}": (args.lr, {"kind": "sgd", "momentum": args.momentum}),
        "CG-FR": (args.lr, {"kind": "cg", "beta": "FR"}),
        "CG-PRP": (args.lr, {"kind": "cg", "beta": "PRP"}),
        "Adam": (args.adam_lr, {"kind": "adam"}),
    }
    if args.quick:
        methods.pop("CG-PRP")
    return methods


def _eight_gaussians(n: int, gen: torch.Generator) -> torch.Tensor:
    from flowkit.datasets import eight_gaussians

    return eight_gaussians(n, seed=gen)


def _train_gan(lr: float, spec: dict, seed: int, args: argparse.Namespace,
               device: torch.device) -> dict:
    from flowkit.games import TwoPlayerOptimizer
    from flowkit.monitors import wasserstein

    # One generator drives data, initialisation and batches: the same seed gives every
    # method the same networks and the same stream of batches.
    gen = torch.Generator().manual_seed(seed)
    latent = 2
    data = _eight_gaussians(10_000, gen).to(device)
    held_out = _eight_gaussians(args.n_eval, gen).to(device)
    eval_noise = torch.randn(args.n_eval, latent, generator=gen).to(device)
    G = _mlp([latent, args.hidden, args.hidden, 2], gen).to(device)
    D = _mlp([2, args.hidden, args.hidden, 1], gen).to(device)
    opt = TwoPlayerOptimizer(make_optimizer(list(G.parameters()), lr, spec),
                             make_optimizer(list(D.parameters()), lr, spec),
                             mode="alternating", first="max")

    def losses() -> tuple[torch.Tensor, torch.Tensor]:
        real = data[torch.randint(len(data), (args.batch,), generator=gen).to(device)]
        fake = G(torch.randn(args.batch, latent, generator=gen).to(device))
        d_real, d_fake = D(real), D(fake)
        softplus = nn.functional.softplus  # BCE with logits: -log sigmoid(t) = softplus(-t)
        loss_d = softplus(-d_real).mean() + softplus(d_fake).mean()
        return softplus(-d_fake).mean(), loss_d

    def w2() -> float:
        with torch.no_grad():
            return wasserstein(G(eval_noise), held_out, p=2).value

    def mean_beta() -> float | None:
        """Mean over both players' tensors of the last beta_n (CG only)."""
        betas = [st["beta"] for o in (opt.min_optimizer, opt.max_optimizer)
                 for st in o.state.values() if "beta" in st]
        return float(torch.stack(betas).mean()) if betas else None

    iters, values, betas = [0], [w2()], []
    t0 = time.perf_counter()
    for it in range(1, args.gan_iters + 1):
        opt.step(losses)
        if it % args.eval_every == 0 or it == args.gan_iters:
            iters.append(it)
            values.append(w2())
            betas.append(mean_beta())
    return {"iters": iters, "w2": values, "mean_beta": betas,
            "wall_time": time.perf_counter() - t0}


def _w2_floor(args: argparse.Namespace, seeds: list[int]) -> float:
    """W2 between two independent data samples of the evaluation size: the value a
    perfect generator would score, on average."""
    from flowkit.monitors import wasserstein

    vals = []
    for seed in seeds:
        gen = torch.Generator().manual_seed(10_000 + seed)
        a, b = _eight_gaussians(args.n_eval, gen), _eight_gaussians(args.n_eval, gen)
        vals.append(wasserstein(a, b, p=2).value)
    return sum(vals) / len(vals)


def _mean_std(values: list[float]) -> tuple[float, float]:
    t = torch.tensor(values, dtype=torch.float64)
    return float(t.mean()), float(t.std()) if len(values) > 1 else 0.0


# --------------------------------------------------------------------------- figures


def _saddle_figure(saddle: dict, game_value):
    from flowkit import plotting

    fig, axes = plotting.figure(3, width=7.2, height=2.6)
    xs_all = [p[0] for r in saddle.values() for p in r["path"]]
    ys_all = [p[1] for r in saddle.values() for p in r["path"]]
    pad_x, pad_y = 0.05 * (max(xs_all) - min(xs_all)), 0.1 * (max(ys_all) - min(ys_all))
    xs = torch.linspace(min(xs_all) - pad_x, max(xs_all) + pad_x, 120, dtype=torch.float64)
    ys = torch.linspace(min(ys_all) - pad_y, max(ys_all) + pad_y, 120, dtype=torch.float64)
    X, Y = torch.meshgrid(xs, ys, indexing="xy")
    axes[0].contour(X, Y, game_value(X, Y), levels=25, linewidths=0.4, colors="0.8")
    # Several methods coincide (FR capped at 1/2 is heavy ball 1/2): each curve has its
    # own line style and marker, so coinciding ones stay visible.
    paths = {label: list(zip(*res["path"], strict=True)) for label, res in saddle.items()}
    for label, (px, py) in paths.items():
        axes[0].plot(px, py, label=label)
    for i, line in enumerate(axes[0].lines):
        line.set_linestyle(plotting.LINESTYLES[i % len(plotting.LINESTYLES)])
        line.set_marker(plotting.MARKERS[i % len(plotting.MARKERS)])
        line.set_markevery((i * 7 % 50, 50))
    iters = list(range(len(next(iter(saddle.values()))["path"])))
    plotting.log_axis(axes[1])
    plotting.plot_curves(axes[1], {label: (iters, [abs(v) for v in px])
                                   for label, (px, _) in paths.items()})
    plotting.plot_curves(axes[2], {label: (iters, [abs(v) for v in py])
                                   for label, (_, py) in paths.items()})
    axes[0].plot(*_SADDLE_START, "k^", ms=5, label="start (2, -4)")
    axes[0].set_xlabel("x (min player)")
    axes[0].set_ylabel("y (max player)")
    axes[0].set_title("paths on (1 + x$^2$)(100 - y$^2$)")
    axes[1].set_title("min player (curvature ~ 170)")
    axes[2].set_title("max player (curvature ~ 2 to 10)")
    axes[1].set_ylabel("|x$_n$|")
    axes[2].set_ylabel("|y$_n$|")
    for ax in axes[1:]:
        ax.set_xlabel("iteration n")
    plotting.place_legend(fig, axes[:1], loc="outside lower center")
    return fig


def _gan_figure(gan: dict, floor: float):
    from flowkit import plotting

    n_seeds = len(next(iter(gan.values())))
    fig, (ax,) = plotting.figure(width=4.8, height=3.4)
    plotting.log_axis(ax)
    plotting.plot_curves(ax, {label: (runs[0]["iters"], [r["w2"] for r in runs])
                              for label, runs in gan.items()})
    plotting.reference_line(ax, floor, f"data vs data ({floor:.3f})")
    ax.set_xlabel("iteration (one D step + one G step)")
    ax.set_ylabel("W$_2$(generated, held-out data)")
    spread = ("1 seed: no band" if n_seeds == 1
              else f"mean +- std over {n_seeds} seeds")
    ax.set_title(f"8 gaussians, non-saturating GAN ({spread})")
    # below the axes: on the right, the legend ran over this long title
    plotting.place_legend(fig, loc="outside lower center")
    return fig


# --------------------------------------------------------------------------- main


def configure(args: argparse.Namespace) -> dict:
    """``--quick``: 150 GAN iterations, one seed, width 32; one thread by default."""
    if args.quick:
        args.gan_iters = min(args.gan_iters, 150)
        args.seeds = 1
        args.eval_every = min(args.eval_every, 50)
        args.n_eval = min(args.n_eval, 128)
        args.hidden = min(args.hidden, 32)
    if args.threads is None:
        args.threads = 1  # tiny networks: one thread is the fastest
    return {k: v for k, v in vars(args).items() if not k.startswith("_")}


def main(args: argparse.Namespace) -> RunFolder:
    """Run the experiment with parsed arguments (what the command line does)."""
    return launch(sys.modules[__name__], args)


def run(args: argparse.Namespace, run: RunFolder) -> None:
    from flowkit import plotting
    from flowkit.games import ProductSaddle

    device = torch.device(args.device)
    t_start = time.perf_counter()

    t0 = time.perf_counter()
    saddle = {label: _run_saddle(spec, args.saddle_steps, args.saddle_lr_x, args.saddle_lr_y,
                                 device)
              for label, spec in _saddle_methods(args.momentum).items()}
    saddle_time = time.perf_counter() - t0
    print(f"Saddle (1 + x^2)(100 - y^2) from {_SADDLE_START}, {args.saddle_steps} "
          f"simultaneous iterations, lr_x = {args.saddle_lr_x:g}, lr_y = {args.saddle_lr_y:g}")
    print(f"{'method':<16} {'x':>10} {'y':>10} {'distance':>10}")
    for label, res in saddle.items():
        print(f"{label:<16} {res['final_x']:>10.4f} {res['final_y']:>10.4f} "
              f"{res['final_distance']:>10.4f}")
    game = ProductSaddle()
    plotting.save_figure(
        _saddle_figure(saddle, lambda X, Y: (game.a + X**2) * (game.b - Y**2)), run, "saddle")

    seeds = [args.seed + i for i in range(args.seeds)]
    gan: dict[str, list[dict]] = {}
    for label, (lr, spec) in _gan_methods(args).items():
        gan[label] = [_train_gan(lr, spec, s, args, device) for s in seeds]
    floor = _w2_floor(args, seeds)
    summary = {}
    print(f"\nGAN on 8 gaussians: {args.gan_iters} iterations, seeds {seeds}, W2 on "
          f"{args.n_eval} points (data vs data: {floor:.4f})")
    print(f"{'method':<14} {'lr':>7} {'final W2':>17} {'best W2':>17} {'mean beta':>10} "
          f"{'s/run':>6}")
    for label, runs in gan.items():
        final = _mean_std([r["w2"][-1] for r in runs])
        best = _mean_std([min(r["w2"]) for r in runs])
        secs = sum(r["wall_time"] for r in runs) / len(runs)
        betas = [b for r in runs for b in r["mean_beta"] if b is not None]
        beta = sum(betas) / len(betas) if betas else None
        summary[label] = {"lr": _gan_methods(args)[label][0], "final_w2": final,
                          "best_w2": best, "mean_beta": beta, "seconds_per_run": secs}
        shown = "-" if beta is None else f"{beta:.3f}"
        print(f"{label:<14} {summary[label]['lr']:>7g} {final[0]:>8.4f} +- {final[1]:<6.4f}"
              f"{best[0]:>8.4f} +- {best[1]:<6.4f}{shown:>10} {secs:>6.1f}")
    plotting.save_figure(_gan_figure(gan, floor), run, "gan_w2")
    wall = time.perf_counter() - t_start
    run.write_json("results.json", {
        "saddle": saddle, "saddle_wall_time": saddle_time, "gan": gan,
        "gan_summary": summary, "w2_data_vs_data": floor, "wall_time": wall,
    })
    print(f"\nwall time {wall:.1f} s")
