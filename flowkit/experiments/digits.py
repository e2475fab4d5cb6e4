r"""``flowkit reproduce digits``: Algorithm 1 fine-tuning a WGAN-GP DCGAN, on 8 x 8 digits.

The image experiment of Nitanda & Suzuki (2018) [NS18], sec. 7 and Figure 3, at laptop
scale: a DCGAN (:class:`flowkit.generators.dcgan.DCGANGenerator`, batch norm in the
generator only; critic :class:`flowkit.critics.dcgan.DCGANCritic`) is trained by WGAN-GP with
the paper's settings (two-sided penalty, :math:`\lambda = 10`, Adam(1e-4, 0.5, 0.9), batch
64, 5 critic steps per generator step) on the 1000 training digits until its Inception
score plateaus. From that checkpoint, for each seed:

(a) Algorithm 1 with the gradient layers inserted below the output tanh (top insertion,
    [NS18] sec. 3.3): critic warm-started from the pretrained one, Adam(5e-5, 0.5, 0.9),
    :math:`T_0 = \lceil \text{datasize} / b \rceil = 16`, :math:`\eta = 0.5`, fresh latents
    for every critic minibatch (``mode="paper"``, Algorithm 1 as printed);
(b) WGAN-GP continued from the checkpoint for the same number of critic steps;
(c) Algorithm 1 with an MMD critic (:class:`flowkit.critics.MMDCritic` on DCGAN-critic
    features) in place of the WGAN-GP one.

IS, FD (:mod:`flowkit.metrics`) and the exact pixel W2 against the 797 held-out digits are
tracked against critic steps and outer iterations on fixed evaluation latents.

Writes ``config.json``, ``results.json`` (every curve), ``table.md``, ``pretrained.pt``
(reuse with ``--checkpoint``), ``pretrain``, ``figure3`` and the sample grids
``samples_*`` (each a PNG beside a PDF, through :func:`flowkit.plotting.save_figure`).
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from flowkit.experiments._common import integer, launch, number

NAME = "digits"
HELP = "Algorithm 1 vs continued WGAN-GP from a plateaued DCGAN on 8x8 digits (paper Fig. 3)"


@dataclass
class DigitsConfig:
    """All settings of one digits run (defaults: the paper's where it gives them)."""

    latent_dim: int = 32
    gen_width: int = 32
    critic_width: int = 32
    lam: float = 10.0
    lr: float = 1e-4
    betas: tuple[float, float] = (0.5, 0.9)
    batch_size: int = 64
    n_critic: int = 5
    # pretraining ([NS18] sec. 7: "until the Inception score plateaus"), the rule of
    # `plateau_rule`: every `eval_every` generator steps the IS on the fixed evaluation
    # latents; fit a least-squares line to the last `plateau_window` evaluations; the window
    # is flat when the line's rise over it is below max(`plateau_tol` x the window's mean,
    # `noise_factor` x the residual standard deviation of the fit, the IS noise); stop once
    # `patience` consecutive windows are flat (and at least `pretrain_min` steps ran), or
    # at `pretrain_max` generator steps with `plateau_reached: false`
    pretrain_max: int = 10000
    pretrain_min: int = 1500
    eval_every: int = 250
    plateau_window: int = 6
    plateau_tol: float = 0.02
    noise_factor: float = 2.0
    patience: int = 2
    # Algorithm 1 (paper: critic Adam 5e-5, T_0 = datasize / b, eta = 0.5 on CIFAR-10)
    alg1_lr: float = 5e-5
    step_size: float = 0.5
    critic_steps: int = 16  # T_0 = ceil(1000 / 64)
    outer_steps: int = 30  # T
    monitor_every: int = 5  # outer steps between evaluations (5 T_0 = 16 generator steps)
    mmd: bool = True
    arms: tuple[str, ...] = ("wgan-gp", "continued", "mmd")  # of ARMS; "mmd" only with mmd
    mmd_features: int = 16
    mmd_bandwidth: float = 4.0
    mmd_lr: float = 5e-5
    mmd_penalty: float = 1.0
    n_eval: int = 1000
    seeds: int = 3
    seed: int = 0
    threads: int = 1


#: The arms of the comparison: command-line name -> row label.
ARMS = {"wgan-gp": "Algorithm 1 (WGAN-GP critic)", "continued": "WGAN-GP continued",
        "mmd": "Algorithm 1 (MMD critic)"}

QUICK = dict(pretrain_max=30, pretrain_min=10, eval_every=10, plateau_window=3,
             outer_steps=3, critic_steps=5, monitor_every=1, n_eval=200, seeds=1,
             gen_width=16, critic_width=16)


# --------------------------------------------------------------------------- building blocks


def make_generator(cfg: DigitsConfig, seed: int):
    from flowkit.generators.dcgan import DCGANGenerator

    return DCGANGenerator(cfg.latent_dim, cfg.gen_width, seed=seed)


def make_wgan(cfg: DigitsConfig, data: Tensor, seed: int, generator=None, net=None):
    """The WGAN-GP trainer of the paper's settings (a fresh DCGAN unless given)."""
    import flowkit as fk
    from flowkit.critics.dcgan import DCGANCritic

    net = DCGANCritic(cfg.critic_width, seed=seed + 1) if net is None else net
    critic = fk.critics.WGANGPCritic(penalty="two-sided", penalty_weight=cfg.lam, lr=cfg.lr,
                                     betas=cfg.betas, batch_size=cfg.batch_size,
                                     steps=cfg.n_critic, net=net, seed=seed + 2)
    generator = make_generator(cfg, seed) if generator is None else generator
    return fk.generators.WGANGP(data, critic, generator, latent_dim=cfg.latent_dim,
                                n_critic=cfg.n_critic, lr=cfg.lr, betas=cfg.betas,
                                batch_size=cfg.batch_size, noise_std=1.0, seed=seed + 3)


def eval_latents(cfg: DigitsConfig, seed: int) -> Tensor:
    return torch.randn(cfg.n_eval, cfg.latent_dim,
                       generator=torch.Generator().manual_seed(10_000 + seed))


def evaluate(metrics, images: Tensor) -> dict[str, float]:
    """The metrics, or NaN for all of them when a run has diverged (non-finite images)."""
    if not bool(torch.isfinite(images).all()):
        return {"IS": float("nan"), "FD": float("nan"), "W2": float("nan")}
    return metrics(images)


def samples(generator, z: Tensor) -> Tensor:
    """``generator(z)`` in eval mode (batch norm on its running statistics)."""
    was = generator.training
    generator.eval()
    with torch.no_grad():
        out = generator(z)
    generator.train(was)
    return out


class LatentBase:
    """Algorithm 1's base sampler: fresh latents through the frozen generator below tanh."""

    def __init__(self, generator, latent_dim: int):
        self.generator, self.latent_dim = generator, latent_dim

    def __call__(self, n: int, g: torch.Generator) -> Tensor:
        with torch.no_grad():
            return self.generator.body(torch.randn(n, self.latent_dim, generator=g))


# --------------------------------------------------------------------------- phases


def plateau_window_check(steps: list[int], scores: list[float], tol: float,
                         noise_factor: float) -> dict[str, float | bool]:
    """The plateau test on one window of evaluations (generator ``steps``, IS ``scores``).

    A least-squares line through the window; ``rise`` is its rise from the first to the
    last step; ``noise`` is the residual standard deviation of the fit (the IS on a finite
    latent set jitters from one evaluation to the next); the window is ``flat`` when
    ``rise < threshold = max(tol * mean, noise_factor * noise)``. A non-finite score (a
    diverged run) is never flat.
    """
    t = torch.tensor(steps, dtype=torch.float64)
    y = torch.tensor(scores, dtype=torch.float64)
    if len(t) < 3 or len(t) != len(y):
        raise ValueError(f"a plateau window needs >= 3 (step, score) pairs, got {len(t)} "
                         f"steps and {len(y)} scores")
    if not bool(torch.isfinite(y).all()):
        nan = float("nan")
        return {"rise": nan, "noise": nan, "threshold": nan, "flat": False}
    tc, yc = t - t.mean(), y - y.mean()
    slope = (tc * yc).sum() / tc.square().sum()
    noise = float(((yc - slope * tc).square().sum() / (len(t) - 2)).sqrt())
    rise = float(slope * (t[-1] - t[0]))
    threshold = max(tol * float(y.mean()), noise_factor * noise)
    return {"rise": rise, "noise": noise, "threshold": threshold, "flat": rise < threshold}


def plateau_rule(steps: list[int], scores: list[float], cfg: DigitsConfig) -> dict[str, Any]:
    """The pretraining's stop rule applied to a score sequence (see :class:`DigitsConfig`).

    Parameters
    ----------
    steps, scores
        Generator steps and the IS measured there, in order (the pretraining's curve).
    cfg
        Its ``plateau_window``, ``plateau_tol``, ``noise_factor``, ``patience``,
        ``pretrain_min`` and ``pretrain_max``.

    Returns
    -------
    dict
        ``stop``: index of the evaluation where the run stops (``None``: keep training);
        ``plateau_reached``: whether it stops because ``patience`` consecutive windows were
        flat (``False`` when it stops at the cap ``pretrain_max``); ``checks``: the window
        test at every evaluation (``None`` before the first full window).
    """
    from flowkit.validation import check_int

    window = check_int(cfg.plateau_window, "plateau_window", minimum=3)
    patience = check_int(cfg.patience, "patience")
    if len(steps) != len(scores):
        raise ValueError(f"steps and scores must have the same length, got {len(steps)} and "
                         f"{len(scores)}")
    checks: list[dict[str, Any] | None] = []
    flat = 0
    for k in range(len(scores)):
        check = None if k + 1 < window else plateau_window_check(
            steps[k + 1 - window:k + 1], scores[k + 1 - window:k + 1], cfg.plateau_tol,
            cfg.noise_factor)
        checks.append(check)
        flat = flat + 1 if check is not None and check["flat"] else 0
        if steps[k] >= cfg.pretrain_min and flat >= patience:
            return {"stop": k, "plateau_reached": True, "checks": checks}
        if steps[k] >= cfg.pretrain_max:
            return {"stop": k, "plateau_reached": False, "checks": checks}
    return {"stop": None, "plateau_reached": False, "checks": checks}


def plateau_rule_text(cfg: DigitsConfig) -> str:
    """The stop rule of the pretraining in words, with this configuration's numbers."""
    return (f"IS on {cfg.n_eval} fixed latents every {cfg.eval_every} generator steps; a "
            f"least-squares line through the last {cfg.plateau_window} evaluations is flat when "
            f"its rise over them is below max({cfg.plateau_tol} x their mean, "
            f"{cfg.noise_factor} x the residual standard deviation of the fit); stop after "
            f"{cfg.patience} flat windows in a row and at least {cfg.pretrain_min} steps, or at "
            f"{cfg.pretrain_max} steps with plateau_reached false")


def cap_warning(step: int | None, cfg: DigitsConfig | None = None) -> str:
    """The loud line of a start that is not a plateau (``step=None``: not recorded)."""
    if step is None:
        return ("WARNING: the checkpoint does not record whether its pretraining reached the "
                "plateau (an older run); the start may not be a plateau")
    rule = f" (the rule of plateau_window={cfg.plateau_window}, " \
           f"plateau_tol={cfg.plateau_tol}, noise_factor={cfg.noise_factor}, " \
           f"patience={cfg.patience})" if cfg is not None else ""
    return (f"WARNING: PLATEAU NOT REACHED: the pretraining stopped at the cap of {step} "
            f"generator steps with the IS still rising{rule}; the start of the comparison "
            "is not a plateau (raise --pretrain-max)")


def pretrain(cfg: DigitsConfig, data: Tensor, metrics, *, progress: bool = False
             ) -> tuple[dict[str, Any], dict[str, Any]]:
    """WGAN-GP from scratch until the IS plateaus (:func:`plateau_rule`).

    Returns ``(checkpoint, curve)``; both record ``plateau_reached`` and the step where the
    run stopped, and the curve every window's test.
    """
    gan = make_wgan(cfg, data, cfg.seed)
    z = eval_latents(cfg, cfg.seed)
    curve: dict[str, Any] = {"generator_steps": [], "critic_steps": [], "IS": [], "FD": [],
                             "W2": []}
    start = time.perf_counter()
    while True:
        m = evaluate(metrics, samples(gan.generator, z))
        curve["generator_steps"].append(gan.generator_steps)
        curve["critic_steps"].append(gan.critic_steps)
        for k in ("IS", "FD", "W2"):
            curve[k].append(m[k])
        decision = plateau_rule(curve["generator_steps"], curve["IS"], cfg)
        if progress:
            check = decision["checks"][-1]
            test = "" if check is None else (
                f"  window rise {check['rise']:+.3f} vs threshold {check['threshold']:.3f} "
                f"(noise {check['noise']:.3f}): {'flat' if check['flat'] else 'rising'}")
            print(f"  pretrain {gan.generator_steps:>5}: IS {m['IS']:.3f} FD {m['FD']:.2f} "
                  f"W2 {m['W2']:.3f}{test}", flush=True)
        if decision["stop"] is not None:
            break
        gan.train(cfg.eval_every)
    curve["plateau_reached"] = decision["plateau_reached"]
    curve["stopped_at"] = gan.generator_steps
    curve["checks"] = decision["checks"]
    curve["wall_time"] = time.perf_counter() - start
    if not curve["plateau_reached"]:
        print(cap_warning(gan.generator_steps, cfg), flush=True)
    checkpoint = {"generator": gan.generator.state_dict(),
                  "generator_optimizer": gan.optimizer.state_dict(),
                  "critic": gan.critic.state_dict(),
                  "generator_steps": gan.generator_steps,
                  "plateau_reached": curve["plateau_reached"],
                  "architecture": {"latent_dim": cfg.latent_dim, "gen_width": cfg.gen_width,
                                   "critic_width": cfg.critic_width}}
    return checkpoint, curve


def load_checkpoint(cfg: DigitsConfig, path: str) -> dict[str, Any]:
    """A ``pretrained.pt`` of an earlier run (tensors only: read with ``weights_only``)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    arch = {"latent_dim": cfg.latent_dim, "gen_width": cfg.gen_width,
            "critic_width": cfg.critic_width}
    if ckpt.get("architecture") != arch:
        raise ValueError(f"checkpoint architecture {ckpt.get('architecture')} does not match "
                         f"the configuration {arch}")
    return ckpt


def restore(cfg: DigitsConfig, data: Tensor, ckpt: dict[str, Any], seed: int):
    """A WGAN-GP trainer in the checkpoint's state, with its random streams from ``seed``."""
    gan = make_wgan(cfg, data, seed)
    gan.generator.load_state_dict(ckpt["generator"])
    gan.optimizer.load_state_dict(ckpt["generator_optimizer"])
    # the critic's minibatch stream restarts from `seed` (rng=None keeps the new one)
    gan.critic.load_state_dict({**ckpt["critic"], "rng": None, "total_steps": 0, "n_fits": 0})
    return gan


def run_algorithm1(cfg: DigitsConfig, data: Tensor, ckpt: dict[str, Any], metrics, seed: int,
                   critic_kind: str = "wgan-gp") -> dict[str, Any]:
    """Algorithm 1 from the pretrained generator, layers below its tanh ([NS18] sec. 3.3)."""
    import flowkit as fk
    from flowkit.critics.dcgan import DCGANCritic

    gan = restore(cfg, data, ckpt, seed)
    gen = gan.generator.eval()
    if critic_kind == "wgan-gp":
        critic: Any = fk.critics.WGANGPCritic(
            penalty="two-sided", penalty_weight=cfg.lam, lr=cfg.alg1_lr, betas=cfg.betas,
            batch_size=cfg.batch_size, steps=cfg.critic_steps,
            net=copy.deepcopy(gan.critic.net), seed=seed + 4)
    else:
        features = DCGANCritic(cfg.critic_width, cfg.mmd_features, seed=seed + 5)
        critic = fk.critics.MMDCritic(features, fk.kernels.Gaussian(cfg.mmd_bandwidth),
                                      penalty_weight=cfg.mmd_penalty, lr=cfg.mmd_lr,
                                      betas=cfg.betas, batch_size=cfg.batch_size,
                                      steps=cfg.critic_steps, seed=seed + 4)
    objective = fk.objectives.AdversarialObjective(
        critic, data, "paper", LatentBase(gen, cfg.latent_dim), output_map=torch.tanh,
        seed=seed + 6)
    with torch.no_grad():
        x0 = gen.body(eval_latents(cfg, seed))
    flow = fk.FunctionalGradientDescent(
        objective, cfg.step_size, monitors=[lambda s: evaluate(metrics, torch.tanh(s.particles))],
        monitor_every=cfg.monitor_every, progress=False)
    start = time.perf_counter()
    result = flow.run(x0, cfg.outer_steps)
    h = result.history
    return {"outer_steps": list(h["step"]),
            "critic_steps": [k * cfg.critic_steps for k in h["step"]],
            **{k: list(h[k]) for k in ("IS", "FD", "W2")},
            "wall_time": time.perf_counter() - start,
            "_final": torch.tanh(result.particles), "_layers": result.layers,
            "_generator": gen}


def run_continued(cfg: DigitsConfig, data: Tensor, ckpt: dict[str, Any], metrics, seed: int
                  ) -> dict[str, Any]:
    """WGAN-GP continued from the checkpoint for Algorithm 1's number of critic steps."""
    gan = restore(cfg, data, ckpt, seed)
    z = eval_latents(cfg, seed)
    every = cfg.monitor_every * cfg.critic_steps
    total = cfg.outer_steps * cfg.critic_steps
    if every % cfg.n_critic or total % cfg.n_critic:
        raise ValueError("monitor_every * critic_steps and outer_steps * critic_steps must be "
                         "multiples of n_critic, so both arms are measured at equal critic steps")
    curve: dict[str, list] = {"critic_steps": [], "IS": [], "FD": [], "W2": []}
    start = time.perf_counter()
    for c in range(0, total + 1, every):
        if c:
            gan.train(every // cfg.n_critic)
        m = evaluate(metrics, samples(gan.generator, z))
        curve["critic_steps"].append(c)
        for k in ("IS", "FD", "W2"):
            curve[k].append(m[k])
    if curve["critic_steps"][-1] != total:  # a last, shorter stretch
        gan.train((total - curve["critic_steps"][-1]) // cfg.n_critic)
        m = evaluate(metrics, samples(gan.generator, z))
        curve["critic_steps"].append(total)
        for k in ("IS", "FD", "W2"):
            curve[k].append(m[k])
    return {**curve, "wall_time": time.perf_counter() - start,
            "_final": samples(gan.generator, z)}


# --------------------------------------------------------------------------- summary


def _mean_std(values: list[float]) -> tuple[float, float]:
    t = torch.tensor(values, dtype=torch.float64)
    return float(t.mean()), float(t.std()) if len(t) > 1 else 0.0


def summarize(arms: dict[str, list[dict[str, Any]]], real: dict[str, float],
              cfg: DigitsConfig) -> dict[str, Any]:
    """The table rows (start, each arm's end and early point) and the verdict."""
    # each seed has its own evaluation latents: the start is a mean over seeds too
    first = next(runs for runs in arms.values() if runs)
    start = {k: _mean_std([r[k][0] for r in first]) for k in ("IS", "FD", "W2")}
    rows = [{"row": "real vs real (1000 train vs 797 held-out)",
             **{k: (real[k], 0.0) for k in ("IS", "FD", "W2")}},
            {"row": "start (pretrained WGAN-GP)", **start}]
    few = min(cfg.monitor_every, cfg.outer_steps)  # "few outer iterations"
    for name, runs in arms.items():
        if not runs:
            continue
        steps = runs[0]["critic_steps"]
        early = steps.index(min((s for s in steps if s >= few * cfg.critic_steps),
                                default=steps[-1]))
        for label, i in ((f"after {steps[early]} critic steps", early),
                         (f"end ({steps[-1]} critic steps)", -1)):
            rows.append({"row": f"{name}, {label}",
                         **{k: _mean_std([r[k][i] for r in runs]) for k in ("IS", "FD", "W2")}})
    alg1 = arms.get("Algorithm 1 (WGAN-GP critic)", [])
    wgan = arms.get("WGAN-GP continued", [])
    verdict = "not enough runs for a verdict"
    if alg1 and wgan:
        a_early = _mean_std([r["IS"][1] for r in alg1])
        a_end = _mean_std([r["IS"][-1] for r in alg1])
        w_end = _mean_std([r["IS"][-1] for r in wgan])
        rise = a_early[0] - start["IS"][0]
        noise = max(a_early[1], w_end[1], 1e-12)
        rapid = rise > 2 * noise and a_end[0] > w_end[0] + 2 * max(a_end[1], w_end[1])
        verdict = (
            f"{'SUPPORTED' if rapid else 'NOT SUPPORTED'} at this scale: IS "
            f"{start['IS'][0]:.3f} +- {start['IS'][1]:.3f} at the start; Algorithm 1 "
            f"{a_early[0]:.3f} +- {a_early[1]:.3f} after "
            f"{alg1[0]['outer_steps'][1]} outer iteration(s) and {a_end[0]:.3f} +- {a_end[1]:.3f}"
            f" after {alg1[0]['outer_steps'][-1]}; WGAN-GP continued for the same critic steps "
            f"{w_end[0]:.3f} +- {w_end[1]:.3f} (mean +- std over {len(alg1)} seeds; 'supported' "
            "needs a rise beyond twice the seed spread and an end above continued WGAN-GP by "
            "twice the spread)")
    return {"rows": rows, "verdict": verdict}


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| | IS (higher is better) | FD (lower) | pixel W2 (lower) |", "|---|---:|---:|---:|"]
    for r in rows:
        cells = " | ".join(f"{r[k][0]:.3f} +- {r[k][1]:.3f}" if r[k][1] else f"{r[k][0]:.3f}"
                           for k in ("IS", "FD", "W2"))
        lines.append(f"| {r['row']} | {cells} |")
    return "\n".join(lines)



# --------------------------------------------------------------------------- figures


def image_grid(images: Tensor, title: str, n: int = 64):
    """A square grid of the first ``n`` images ``(N, 1, 8, 8)`` in [-1, 1]."""
    from flowkit import plotting

    side = int(math.isqrt(min(n, len(images))))
    x = images[:side * side, 0].detach().cpu().reshape(side, side, 8, 8)
    grid = x.permute(0, 2, 1, 3).reshape(side * 8, side * 8)
    fig, (ax,) = plotting.figure(width=3.0, height=3.2)
    ax.imshow(grid.numpy(), cmap="gray_r", vmin=-1, vmax=1)
    ax.set_title(title)
    ax.axis("off")
    return fig


def curves_figure(arms: dict[str, list[dict[str, Any]]], real: dict[str, float],
                  critic_steps: int, title: str = ""):
    """IS, FD and W2 against critic steps: mean and a min-max band over seeds per arm."""
    from flowkit import plotting

    fig, axes = plotting.figure(3, width=9.6, height=2.8)
    labels = {"IS": "Inception score (higher is better)", "FD": "FD (lower is better)",
              "W2": "pixel W$_2$ (lower is better)"}
    for ax, key in zip(axes, ("IS", "FD", "W2")):
        plotting.plot_curves(ax, {name: (runs[0]["critic_steps"], [r[key] for r in runs])
                                  for name, runs in arms.items() if runs}, band="range")
        plotting.reference_line(ax, real[key], "real vs real")
        ax.set_xlabel(f"critic steps ({critic_steps} per outer iteration)")
        ax.set_ylabel(labels[key])
    plotting.place_legend(fig, axes[:1], loc="outside lower center")
    if title:
        fig.suptitle(title)
    return fig


def pretrain_figure(curve: dict[str, Any], real: dict[str, float], cfg: DigitsConfig):
    """The pretraining's IS and FD against generator steps, where it stopped and why.

    The IS panel shows the least-squares line of the last window of :func:`plateau_rule`
    and a vertical line at the stop, labelled with the verdict (plateau or cap).
    """
    from flowkit import plotting

    fig, axes = plotting.figure(2, width=8.0, height=2.8)
    steps = curve["generator_steps"]
    stop = curve["stopped_at"]
    verdict = (f"plateau reached at {stop} steps" if curve["plateau_reached"] else
               f"cap of {stop} steps: NO plateau")
    w = cfg.plateau_window
    t = torch.tensor(steps[-w:], dtype=torch.float64)
    y = torch.tensor(curve["IS"][-w:], dtype=torch.float64)
    tc = t - t.mean()
    fit = y.mean() + ((tc * (y - y.mean())).sum() / tc.square().sum()) * tc
    for ax, key, label in zip(axes, ("IS", "FD"), ("digits IS (higher is better)",
                                                   "FD (lower is better)")):
        plotting.plot_curves(ax, {"WGAN-GP, seed 0": (steps, curve[key])})
        plotting.reference_line(ax, real[key], "real vs real")
        # not the reference style: the stop must not read as a second "real vs real"
        ax.axvline(stop, color="C3" if curve["plateau_reached"] is False else "C2", ls="--",
                   lw=1.2, label=verdict, zorder=1)
        ax.set_xlabel("WGAN-GP generator steps")
        ax.set_ylabel(label)
    axes[0].plot(t.tolist(), fit.tolist(), color="k", lw=2.0,
                 label=f"line fit over the last {w} evaluations")
    axes[1].set_yscale("log")
    plotting.place_legend(fig, axes[:1], loc="outside lower center")
    fig.suptitle(f"digits pretraining: IS and FD on {cfg.n_eval} fixed latents every "
                 f"{cfg.eval_every} steps")
    return fig


# --------------------------------------------------------------------------- command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", default=None,
                        help="reuse the pretrained.pt of an earlier run (skip pretraining)")
    parser.add_argument("--seeds", type=integer(1), default=None,
                        help="seeds of the fine-tuning (3)")
    parser.add_argument("--steps", type=integer(1), default=None, help="outer steps T (30)")
    parser.add_argument("--step-size", type=number(0, strict=True), default=None,
                        help="eta (0.5)")
    parser.add_argument("--pretrain-max", type=integer(1), default=None,
                        help="most WGAN-GP generator steps of the pretraining (10000); a run that "
                             "hits it reports plateau_reached: false")
    parser.add_argument("--no-mmd", action="store_true", help="skip the MMD-critic arm")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=None,
                        help="run only these arms (default all: wgan-gp continued mmd); the "
                             "verdict needs wgan-gp and continued")


def run_arms(cfg: DigitsConfig) -> list[str]:
    """Row labels of the arms this configuration runs (``mmd=False`` drops the MMD arm)."""
    return [ARMS[a] for a in cfg.arms if a != "mmd" or cfg.mmd]


def config_from_args(args: argparse.Namespace) -> DigitsConfig:
    """The run's settings: the paper's, ``--quick``'s, then the options given."""
    cfg = DigitsConfig(seed=args.seed, threads=args.threads or 1)
    if args.quick:
        cfg = replace(cfg, **QUICK)
    over = {"seeds": args.seeds, "outer_steps": args.steps, "step_size": args.step_size,
            "pretrain_max": args.pretrain_max}
    cfg = replace(cfg, **{k: v for k, v in over.items() if v is not None})
    if args.no_mmd:
        cfg.mmd = False
    arms = getattr(args, "arms", None)
    if arms is not None:
        if args.no_mmd and "mmd" in arms:
            raise ValueError("--arms mmd contradicts --no-mmd")
        cfg.arms = tuple(a for a in ARMS if a in arms)  # in the table's order
    return cfg


def configure(args: argparse.Namespace) -> dict[str, Any]:
    """``--quick``: tiny networks, 30 pretraining steps, T = 3, one seed; one thread."""
    if torch.device(args.device).type != "cpu":
        raise ValueError(f"--device {args.device}: digits runs on the CPU only (8x8 images, "
                         "small networks); use --device cpu")
    if args.checkpoint is not None and not Path(args.checkpoint).is_file():
        raise ValueError(f"--checkpoint {args.checkpoint!r}: no such file")
    if args.threads is None:
        args.threads = 1  # small convolutions: one thread is the fastest
    cfg = config_from_args(args)
    if (cfg.outer_steps * cfg.critic_steps) % cfg.n_critic:
        # continued WGAN-GP trains in whole generator steps of n_critic critic steps
        raise ValueError(f"--steps {cfg.outer_steps}: outer steps x {cfg.critic_steps} critic "
                         f"steps must be a multiple of n_critic = {cfg.n_critic}, so both arms "
                         "are measured at equal critic steps")
    args._cfg = cfg
    return {**asdict(args._cfg), "plateau_rule": plateau_rule_text(cfg),
            "device": args.device, "checkpoint": args.checkpoint}


def main(args: argparse.Namespace):
    """Run the experiment with parsed arguments (what the command line does)."""
    return launch(sys.modules[__name__], args)


def run(args: argparse.Namespace, folder) -> None:
    from flowkit.metrics import DigitsMetrics

    t_start = time.perf_counter()
    cfg = getattr(args, "_cfg", None) or config_from_args(args)
    out = _run(cfg, args, folder, DigitsMetrics())
    out["total_wall_time"] = time.perf_counter() - t_start
    folder.write_json("results.json", out)
    start = (f"start: the pretraining's generator after {out['pretrain_steps']} steps, "
             + ("at its plateau" if out["plateau_reached"] else
                cap_warning(None if out["plateau_reached"] is None else out["pretrain_steps"],
                            cfg)))
    text = "\n".join([out["table_md"], "", start, "", out["verdict"], "",
                      f"classifier held-out accuracy {out['classifier_accuracy']:.4f}; "
                      f"wall time {out['total_wall_time']:.1f} s"])
    folder.file("table.md").write_text(text + "\n", encoding="utf-8")
    print(text)


def _run(cfg: DigitsConfig, args: argparse.Namespace, folder, metrics) -> dict[str, Any]:
    from flowkit.plotting import save_figure

    data = metrics.split.train_images
    real = metrics.real_vs_real()
    progress = not args.no_progress
    if args.checkpoint:
        ckpt, curve = load_checkpoint(cfg, args.checkpoint), None
        if not ckpt.get("plateau_reached", False):
            print(cap_warning(ckpt["generator_steps"] if "plateau_reached" in ckpt else None,
                              cfg), flush=True)
    else:
        ckpt, curve = pretrain(cfg, data, metrics, progress=progress)
        torch.save(ckpt, folder.file("pretrained.pt"))
        save_figure(pretrain_figure(curve, real, cfg), folder, "pretrain")
    arm_names = run_arms(cfg)
    arms: dict[str, list[dict[str, Any]]] = {name: [] for name in arm_names}
    finals: dict[str, Tensor] = {}
    for i in range(cfg.seeds):
        seed = cfg.seed + 100 * (i + 1)
        jobs = {"Algorithm 1 (WGAN-GP critic)": lambda s=seed: run_algorithm1(
                    cfg, data, ckpt, metrics, s),
                "WGAN-GP continued": lambda s=seed: run_continued(cfg, data, ckpt, metrics, s),
                "Algorithm 1 (MMD critic)": lambda s=seed: run_algorithm1(
                    cfg, data, ckpt, metrics, s, "mmd")}
        for name in arm_names:
            res = jobs[name]()
            finals.setdefault(name, res.pop("_final"))
            res.pop("_layers", None), res.pop("_generator", None)
            arms[name].append(res)
            if progress:
                print(f"  seed {seed} {name}: IS {res['IS'][0]:.3f} -> {res['IS'][-1]:.3f}, "
                      f"{res['wall_time']:.1f} s", flush=True)
    summary = summarize(arms, real, cfg)
    start_is = summary["rows"][1]["IS"][0]
    gan0 = restore(cfg, data, ckpt, cfg.seed)
    z = eval_latents(cfg, cfg.seed + 100)
    save_figure(image_grid(samples(gan0.generator, z), "start (pretrained WGAN-GP)"),
                folder, "samples_start")
    for name, x in finals.items():
        slug = name.split(" (")[0].lower().replace(" ", "_") + (
            "_mmd" if "MMD" in name else "")
        save_figure(image_grid(x, f"{name}, end"), folder, f"samples_{slug}")
    save_figure(image_grid(data, "training digits"), folder, "samples_real")
    save_figure(curves_figure(arms, real, cfg.critic_steps,
                              title=f"digits: from the pretrained DCGAN (IS {start_is:.2f}), "
                                    f"{cfg.seeds} seed(s), eta={cfg.step_size}"),
                folder, "figure3")
    return {"config": asdict(cfg), "classifier_accuracy": metrics.accuracy,
            "real_vs_real": real, "pretrain": curve,
            "plateau_reached": ckpt.get("plateau_reached"),
            "pretrain_steps": ckpt["generator_steps"], "arms": arms, "table": summary["rows"],
            "table_md": format_table(summary["rows"]), "verdict": summary["verdict"]}
