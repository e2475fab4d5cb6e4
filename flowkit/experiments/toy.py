r"""``flowkit reproduce toy``: the toy experiment of Nitanda & Suzuki (2018), sec. 7.

Algorithm 1 without a pretrained generator (``g = id``) from base noise
:math:`\mathcal N(0, 0.5^2 I)`, with the paper's settings: data sizes 500 / 1000 / 500
(8 gaussians / 25 gaussians / swiss roll), a 4-layer critic of width 128 (512 for 25
gaussians), one-sided penalty :math:`\lambda = 10`, Adam(1e-4, 0.5, 0.9), minibatch 50,
:math:`\eta = 0.1`, :math:`T_0 = 5 \cdot \text{datasize} / b`, :math:`T = 100`, tanh output
with the gradient layers stacked below it.

Data scaling (the paper does not say): the usual toy scalings put modes at radius
:math:`\sqrt 2`, outside tanh's range, so the data are multiplied by ``0.8 / max|x|``
(largest coordinate 0.8, i.e. :math:`\operatorname{artanh} 0.8 = 1.10` before the tanh, 2.2
base standard deviations out). W1 and W2 are measured in this scaled data space, on
``tanh(particles)``.

Beside Algorithm 1 it runs the WGAN-GP baseline (:class:`flowkit.generators.WGANGP`: an
MLP generator of the critic's width and depth with a tanh output, the same base noise, the
same critic configuration and initial weights, n_critic = 5) for the same number of critic
steps :math:`T T_0`, and tabulates W2 against critic steps for both. Algorithm 2 is
checked on ``10 x`` fresh base samples. On a CPU the command runs the baseline in a second
process at the same time as Algorithm 1 (``--sequential``: after it, in one process); every
random stream is seeded, so both ways give the same numbers. Both critics take their
steps with the gradient written out (:class:`flowkit.critics.WGANGPCritic`'s
``explicit_backward``; ``--autograd-backward``: autograd's, the same up to rounding).
The exact W1/W2 monitors run every 10 outer steps, the rows of the table.

Writes ``config.json``, ``results.json``, ``table.md``, ``figure2`` (steps 0, 25, 50, 100
over the data), ``wgangp`` (the baseline at the same critic steps) and ``w2``, each figure
as PNG and PDF.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from flowkit.experiments._common import integer, launch, spawned_pool, usable_cores

NAME = "toy"
HELP = "Algorithm 1 vs WGAN-GP on 8 gaussians / 25 gaussians / swiss roll (paper sec. 7)"

SIZES = {"8gaussians": 500, "25gaussians": 1000, "swissroll": 500}
HIDDEN = {"8gaussians": 128, "25gaussians": 512, "swissroll": 128}
DATA_MAX = 0.8  # largest |coordinate| of the scaled data, inside tanh's range
# Measured (benchmarks/toy_alg1.py, 2 cores): a width-128 critic step is slower on two
# threads than on one, a width-512 step twice as fast.
WIDE_CRITIC = 256


@dataclass
class ToyConfig:
    """All settings of one toy run (defaults: the paper's, sec. 7)."""

    dataset: str = "8gaussians"
    size: int = 500
    hidden: int = 128
    depth: int = 4
    penalty: str = "one-sided"
    lam: float = 10.0
    lr: float = 1e-4
    betas: tuple[float, float] = (0.5, 0.9)
    batch_size: int = 50
    step_size: float = 0.1
    critic_steps: int = 50  # T_0
    outer_steps: int = 100  # T
    base_std: float = 0.5
    mode: str = "pool"
    # the exact monitors are a large part of a run (two 1000 x 1000 network simplex solves
    # per method and evaluation): at the table's rows only
    monitor_every: int = 10
    n_critic: int = 5
    fresh_factor: int = 10
    baseline: bool = True
    snapshots: tuple[int, ...] = field(default=(0, 25, 50, 100))
    seed: int = 0
    device: str = "cpu"
    # the critic step's gradient written out by hand (WGANGPCritic(explicit_backward=True)):
    # the same gradient as autograd's up to rounding, with less arithmetic and overhead
    explicit_backward: bool = True


def toy_config(dataset: str, *, quick: bool = False, **overrides: Any) -> ToyConfig:
    """The paper's configuration for ``dataset``; ``quick`` shrinks it to a smoke test.

    Quick: :math:`T = 20`, :math:`T_0 = 10`, width 64, Algorithm 2 on ``2 N`` fresh samples
    (seconds on a CPU).
    """
    if dataset not in SIZES:
        raise ValueError(f"dataset must be one of {sorted(SIZES)}, got {dataset!r}")
    size = SIZES[dataset]
    cfg = ToyConfig(dataset=dataset, size=size, hidden=HIDDEN[dataset],
                    critic_steps=5 * size // 50)
    if quick:
        cfg.outer_steps, cfg.critic_steps, cfg.hidden, cfg.fresh_factor = 20, 10, 64, 2
    for key, value in overrides.items():
        if value is None:
            continue
        if not hasattr(cfg, key):
            raise ValueError(f"unknown toy setting {key!r}")
        setattr(cfg, key, value)
    t = cfg.outer_steps
    cfg.snapshots = tuple(sorted({0, t // 4, t // 2, t}))
    if (cfg.monitor_every * cfg.critic_steps) % cfg.n_critic:
        raise ValueError("monitor_every * critic_steps must be a multiple of n_critic, so that "
                         "both methods are measured at the same numbers of critic steps")
    return cfg


def run_toy(cfg: ToyConfig, *, progress: bool = False, history_dir: str | None = None,
            parallel: bool = False) -> dict[str, Any]:
    """Run Algorithm 1, Algorithm 2 on fresh samples, and the WGAN-GP baseline.

    Returns a JSON-ready dictionary (plus tensors under ``"_snapshots"``, ``"_baseline_
    snapshots"``, ``"_data"`` for the figures). Seeds: data ``seed``, particles ``seed + 1``,
    critic (both methods) ``seed + 2``, base samples of ``mode="paper"`` ``seed + 3``,
    baseline ``seed + 4``, reference data draw ``seed + 5``, Algorithm 2's fresh samples
    ``seed + 6``.

    With ``parallel=True`` (and ``cfg.baseline``) the WGAN-GP baseline and the distances
    that do not involve Algorithm 1 (the reference W2 and the held-out W2 of the data) run
    in a second process, with this process's number of torch threads, while this process
    runs Algorithm 1 and Algorithm 2. Every random stream is seeded, so the numbers are the
    same as with ``parallel=False`` (bit for bit at equal thread counts; tested); only the
    wall time changes.
    """
    import flowkit as fk

    device = torch.device(cfg.device)
    make = fk.datasets.DATASETS[cfg.dataset]
    raw = make(cfg.size, seed=cfg.seed, device=device)
    scale = DATA_MAX / raw.abs().max()
    data = raw * scale
    n = cfg.size
    # What a perfect sampler scores: independent draws of the data distribution (same
    # scaling), N and fresh_factor * N of them. Training particles can go below it, since
    # they fit the one data sample they were trained on.
    reference = make(cfg.fresh_factor * cfg.size, seed=cfg.seed + 5, device=device) * scale
    with contextlib.ExitStack() as stack:
        side = None
        if parallel and cfg.baseline:
            side = stack.enter_context(spawned_pool(1))
            threads = torch.get_num_threads()
            pending = (side.apply_async(_baseline_job, (cfg, data, threads)),
                       side.apply_async(_reference_job, (data, reference, n, threads)))
        alg = _algorithms_1_and_2(cfg, data, reference, progress, history_dir)
        if side is None:
            reference_w2, held_data = _reference_job(data, reference, n)
            baseline = _baseline_job(cfg, data, progress=progress) if cfg.baseline else {}
        else:
            baseline, (reference_w2, held_data) = (job.get() for job in pending)
    held = alg.pop("held_out_W2")
    out: dict[str, Any] = {
        "config": asdict(cfg),
        "algorithm1": alg.pop("algorithm1"),
        "algorithm2_fresh": alg.pop("algorithm2_fresh"),
        "reference_W2": reference_w2,
        "held_out_W2": {**held, "data": held_data},
        **alg,  # the tensors for the figures
        **baseline,
    }
    out["table"] = comparison_table(out)
    return out


def _algorithms_1_and_2(cfg: ToyConfig, data: Tensor, reference: Tensor, progress: bool,
                        history_dir: str | None) -> dict[str, Any]:
    """Algorithm 1 with its monitors, then Algorithm 2 on fresh samples and their W2."""
    import flowkit as fk
    from flowkit.objectives.adversarial import gaussian_base

    device = data.device
    n = cfg.size
    base = gaussian_base(cfg.base_std, (2,), device=device)
    x0 = base(n, torch.Generator(device=device).manual_seed(cfg.seed + 1))
    objective = fk.objectives.AdversarialObjective(
        _critic(cfg), data, cfg.mode, base if cfg.mode == "paper" else None,
        output_map=torch.tanh, seed=cfg.seed + 3, history_dir=history_dir)
    snapshots: dict[int, Tensor] = {0: torch.tanh(x0).cpu()}

    def keep(state: fk.FlowState) -> None:
        if state.step in cfg.snapshots:
            snapshots[state.step] = torch.tanh(state.particles).cpu()

    monitors = [fk.monitors.W1(data, transform=torch.tanh),
                fk.monitors.W2(data, transform=torch.tanh)]
    flow = fk.FunctionalGradientDescent(objective, cfg.step_size, monitors=monitors,
                                        monitor_every=cfg.monitor_every, callbacks=[keep],
                                        progress=progress)
    start, cpu = time.perf_counter(), time.process_time()
    result = flow.run(x0, cfg.outer_steps)
    alg1_wall, alg1_cpu = time.perf_counter() - start, time.process_time() - cpu

    fresh = _fresh_samples(result.layers, base, cfg, data)
    particles, samples = torch.tanh(result.particles), fresh.pop("_samples")
    chunks = _chunks(reference, n)
    return {
        "algorithm1": {"history": result.history, "wall_time": alg1_wall, "cpu_time": alg1_cpu,
                       "critic_steps": objective.critic.total_steps,
                       "grad_norm2": result.trace["grad_norm2"]},
        "algorithm2_fresh": fresh,
        "held_out_W2": {"n": n, "chunks": len(chunks),
                        "training_particles": _w2_to_chunks([particles] * len(chunks), chunks),
                        "fresh": _w2_to_chunks(list(samples.split(n)), chunks)},
        "_snapshots": snapshots,
        "_data": data.cpu(),
    }


def _critic(cfg: ToyConfig) -> Any:
    """The critic of both methods: same configuration, same initial weights."""
    import flowkit as fk

    return fk.critics.WGANGPCritic(2, cfg.hidden, cfg.depth, cfg.penalty, cfg.lam, cfg.lr,
                                   cfg.betas, cfg.batch_size, cfg.critic_steps,
                                   seed=cfg.seed + 2, explicit_backward=cfg.explicit_backward)


def _reference_job(data: Tensor, reference: Tensor, n: int, threads: int | None = None
                   ) -> tuple[dict[str, Any], dict[str, float]]:
    """The reference W2 (``N`` and all reference points) and the held-out W2 of the data.

    Neither involves Algorithm 1 or the baseline, so a second process can compute them.
    """
    from flowkit.monitors import wasserstein

    if threads is not None:
        torch.set_num_threads(threads)
    ref_n = wasserstein(reference[:n], data, 2).value
    ref_all = wasserstein(reference, data, 2, exact_max=len(reference)).value
    chunks = _chunks(reference, n)
    return ({"n": n, "W2_n": ref_n, "n_all": len(reference), "W2_all": ref_all},
            _w2_to_chunks([data] * len(chunks), chunks))


def _baseline_job(cfg: ToyConfig, data: Tensor, threads: int | None = None,
                  progress: bool = False) -> dict[str, Any]:
    """The WGAN-GP baseline, monitored in the data space (its samples are already there)."""
    import flowkit as fk

    if threads is not None:
        torch.set_num_threads(threads)
    return _baseline(cfg, data, _critic(cfg), [fk.monitors.W1(data), fk.monitors.W2(data)],
                     progress)


def _fresh_samples(layers: Any, base: Any, cfg: ToyConfig, data: Tensor) -> dict[str, Any]:
    """Algorithm 2 on ``fresh_factor * N`` new base samples, against the data."""
    from flowkit.monitors import wasserstein

    n = cfg.size
    gen = torch.Generator(device=data.device).manual_seed(cfg.seed + 6)
    z = base(cfg.fresh_factor * n, gen)
    start = time.perf_counter()
    # chunks of 512 rows keep a width-512 layer's activations in cache (4096 rows do not)
    fresh = torch.tanh(layers(z, batch_size=512))
    gen_time = time.perf_counter() - start
    start = time.perf_counter()
    # exact OT on all samples (a few seconds at 10 x 1000 points), and on N-sized chunks so
    # the comparison with the N training particles is at equal sample size
    full = wasserstein(fresh, data, 2, exact_max=cfg.fresh_factor * n).value
    chunks = torch.tensor([wasserstein(c, data, 2).value for c in fresh.split(n)],
                          dtype=torch.float64)
    return {
        "_samples": fresh,
        "n_fresh": len(fresh),
        "W2_all": full,
        "W2_chunks_mean": float(chunks.mean()),
        "W2_chunks_std": float(chunks.std()) if len(chunks) > 1 else 0.0,
        "generation_seconds": gen_time,
        "seconds_per_1000_samples_per_layer": gen_time / (len(fresh) / 1000) / max(len(layers), 1),
        "ot_seconds": time.perf_counter() - start,
    }


def _chunks(reference: Tensor, n: int) -> list[Tensor]:
    """The whole chunks of ``n`` points of the held-out data draw."""
    return [c for c in reference.split(n) if len(c) == n]


def _w2_to_chunks(samples: list[Tensor], chunks: list[Tensor]) -> dict[str, float]:
    r"""W2 of ``samples[i]`` to held-out chunk ``i``: mean and standard deviation over chunks.

    The training particles were fitted against ``data`` and can sit closer to it than any
    sampler of the data *distribution* would; against an independent draw that advantage
    is gone. Chunk ``i`` of the held-out draw is compared with the training particles, with
    chunk ``i`` of the fresh samples, and with ``data`` (two independent draws: what a
    perfect sampler scores), so all three are at the same sample size ``N``.
    """
    from flowkit.monitors import wasserstein

    values = torch.tensor([wasserstein(x, c, 2).value for x, c in zip(samples, chunks)],
                          dtype=torch.float64)
    std = float(values.std()) if len(values) > 1 else 0.0
    return {"mean": float(values.mean()), "std": std}


def _baseline(cfg: ToyConfig, data: Tensor, critic: Any, monitors: list,
              progress: bool) -> dict[str, Any]:
    import flowkit as fk

    gan = fk.generators.WGANGP(data, critic, latent_dim=2, hidden=cfg.hidden, depth=cfg.depth,
                               n_critic=cfg.n_critic, lr=cfg.lr, betas=cfg.betas,
                               batch_size=cfg.batch_size, noise_std=cfg.base_std,
                               seed=cfg.seed + 4)
    eval_latents = gan.latents(cfg.size)
    kept: list[Tensor] = []

    def keep(samples: Tensor) -> dict[str, Any]:
        kept.append(samples.cpu())
        return {}

    total_critic = cfg.outer_steps * cfg.critic_steps
    every = cfg.monitor_every * cfg.critic_steps // cfg.n_critic
    start, cpu = time.perf_counter(), time.process_time()
    history = gan.train(total_critic // cfg.n_critic, monitors=[*monitors, keep],
                        monitor_every=every, eval_latents=eval_latents, progress=progress)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    by_critic = dict(zip(history.critic_steps, kept))
    snaps = {s: by_critic[s * cfg.critic_steps] for s in cfg.snapshots
             if s * cfg.critic_steps in by_critic}
    return {"wgan_gp": {"history": history, "wall_time": wall, "cpu_time": cpu},
            "_baseline_snapshots": snaps}


def comparison_table(out: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows ``critic steps -> (W1, W2)`` of Algorithm 1 and of WGAN-GP at equal critic steps."""
    t0 = out["config"]["critic_steps"]
    h1 = out["algorithm1"]["history"]
    h2 = out.get("wgan_gp", {}).get("history")  # a WGANGPResult, absent without baseline
    base = {c: i for i, c in enumerate(h2.critic_steps)} if h2 is not None else {}
    rows = []
    for i, step in enumerate(h1["step"]):
        c = step * t0
        row = {"critic_steps": c, "alg1_step": step, "alg1_W1": h1["W1"][i],
               "alg1_W2": h1["W2"][i]}
        if c in base:
            j = base[c]
            row.update(wgan_generator_steps=h2.generator_steps[j],
                       wgan_W1=h2.metrics["W1"][j], wgan_W2=h2.metrics["W2"][j])
        rows.append(row)
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """The comparison table as Markdown."""
    lines = ["| critic steps | Alg. 1 outer step | Alg. 1 W1 | Alg. 1 W2 | WGAN-GP generator step "
             "| WGAN-GP W1 | WGAN-GP W2 |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "wgan_W2" in r:
            tail = f"{r['wgan_generator_steps']} | {r['wgan_W1']:.4f} | {r['wgan_W2']:.4f}"
        else:
            tail = "- | - | -"
        lines.append(f"| {r['critic_steps']} | {r['alg1_step']} | {r['alg1_W1']:.4f} | "
                     f"{r['alg1_W2']:.4f} | {tail} |")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", choices=sorted(SIZES), default="8gaussians")
    parser.add_argument("--mode", choices=["pool", "paper"], default="pool",
                        help="minibatches from the particle pool (fast) or fresh base samples "
                             "pushed through all layers at every critic step (Algorithm 1 as "
                             "printed, O(T^2 T_0))")
    parser.add_argument("--steps", type=integer(1), default=None,
                        help="outer steps T (default 100)")
    parser.add_argument("--critic-steps", type=integer(1), default=None,
                        help="critic steps per layer T_0 (default 5 * datasize / 50)")
    parser.add_argument("--hidden", type=integer(1), default=None,
                        help="critic width (default 128; 512 for 25gaussians)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the WGAN-GP baseline")
    parser.add_argument("--save-layers", action="store_true",
                        help="write every gradient layer to <run>/layers/ (Algorithm 2 from disk)")
    backward = parser.add_mutually_exclusive_group()
    backward.add_argument("--explicit-backward", dest="explicit_backward", action="store_true",
                          default=True,
                          help="the critic's parameter gradient written out by hand (default)")
    backward.add_argument("--autograd-backward", dest="explicit_backward",
                          action="store_false",
                          help="the critic's parameter gradient by autograd (the same up to "
                               "rounding, slower)")
    parser.add_argument("--sequential", action="store_true",
                        help="run the WGAN-GP baseline after Algorithm 1 in this process "
                             "(default on a CPU: in a second process at the same time; the "
                             "numbers are the same, only the wall time differs)")
    parser.epilog = ("--quick: T=20, T_0=10, width 64, 2x fresh samples. --threads (per "
                     f"process) default: 1 for critics narrower than {WIDE_CRITIC}, whose "
                     "matrices are too small to share; for wider ones all cores, shared out "
                     "between the two processes when the baseline runs beside Algorithm 1.")


def folder_name(args: argparse.Namespace) -> str:
    """``toy-<dataset>``."""
    return f"toy-{args.dataset}"


def configure(args: argparse.Namespace) -> dict:
    """The paper's configuration with the command line's changes (checked here)."""
    cfg = toy_config(args.dataset, quick=args.quick, outer_steps=args.steps,
                     critic_steps=args.critic_steps, hidden=args.hidden, mode=args.mode,
                     baseline=not args.no_baseline, seed=args.seed, device=args.device,
                     explicit_backward=args.explicit_backward)
    # the baseline beside Algorithm 1 on a CPU with a core for each (--sequential: after it)
    side = cfg.baseline and not args.sequential and torch.device(cfg.device).type == "cpu"
    processes = 2 if side and usable_cores() >= 2 else 1
    if args.threads is None:
        threads = torch.get_num_threads()  # torch's default: all cores
        args.threads = 1 if cfg.hidden < WIDE_CRITIC else max(1, threads // processes)
    args._toy_config, args._toy_processes = cfg, processes
    return {**asdict(cfg), "processes": processes}


def main(args: argparse.Namespace):
    """Run the experiment with parsed arguments (what the command line does)."""
    return launch(sys.modules[__name__], args)


def run(args: argparse.Namespace, run) -> None:
    from flowkit import plotting

    cfg = args._toy_config
    out = run_toy(cfg, progress=not args.no_progress,
                  history_dir=str(run.path / "layers") if args.save_layers else None,
                  parallel=args._toy_processes > 1)

    table = format_table(out["table"])
    fresh = out["algorithm2_fresh"]
    final = out["table"][-1]
    ref, held = out["reference_W2"], out["held_out_W2"]
    lines = [
        f"toy {cfg.dataset} ({cfg.mode} mode): T={cfg.outer_steps}, T_0={cfg.critic_steps}, "
        f"width {cfg.hidden}",
        "",
        table,
        "",
        f"Algorithm 1: {out['algorithm1']['wall_time']:.1f} s for "
        f"{out['algorithm1']['critic_steps']} critic steps",
    ]
    if "wgan_gp" in out:
        lines.append(f"WGAN-GP: {out['wgan_gp']['wall_time']:.1f} s")
    lines += [
        f"Algorithm 2 on {fresh['n_fresh']} fresh samples: W2 {fresh['W2_all']:.4f} (all), "
        f"{fresh['W2_chunks_mean']:.4f} +- {fresh['W2_chunks_std']:.4f} (chunks of "
        f"{cfg.size}); training particles {final['alg1_W2']:.4f}",
        f"Reference (a perfect sampler: fresh draws of the data distribution): W2 "
        f"{ref['W2_all']:.4f} ({ref['n_all']} points), {ref['W2_n']:.4f} ({ref['n']} points)",
        f"Held out (W2 to an independent data draw, {held['chunks']} chunks of {held['n']}): "
        f"training particles {held['training_particles']['mean']:.4f} +- "
        f"{held['training_particles']['std']:.4f}, fresh samples {held['fresh']['mean']:.4f} +- "
        f"{held['fresh']['std']:.4f}, the data themselves {held['data']['mean']:.4f} +- "
        f"{held['data']['std']:.4f}",
        f"Algorithm 2 cost: {1e3 * fresh['seconds_per_1000_samples_per_layer']:.2f} ms per 1000 "
        "samples per layer",
    ]
    text = "\n".join(lines)
    print(text)
    (run.file("table.md")).write_text(text + "\n", encoding="utf-8")
    run.write_json("results.json", {k: v for k, v in out.items() if not k.startswith("_")})

    lim = 1.0
    title = f"Algorithm 1, {cfg.dataset}"
    plotting.save_figure(plotting.plot_snapshots(out["_snapshots"], out["_data"], title=title,
                                                 lim=lim, step_label="outer step"),
                         run, "figure2")
    if "wgan_gp" in out:
        snaps = {s * cfg.critic_steps: x for s, x in out["_baseline_snapshots"].items()}
        plotting.save_figure(plotting.plot_snapshots(snaps, out["_data"], lim=lim,
                                                     title=f"WGAN-GP, {cfg.dataset}",
                                                     step_label="critic step"),
                             run, "wgangp")
    rows = out["table"]
    curves = {"Algorithm 1": ([r["critic_steps"] for r in rows], [r["alg1_W2"] for r in rows])}
    if "wgan_gp" in out:
        base = [r for r in rows if "wgan_W2" in r]
        curves["WGAN-GP"] = ([r["critic_steps"] for r in base], [r["wgan_W2"] for r in base])
    reference = {f"fresh data draw ({cfg.size} points)": out["reference_W2"]["W2_n"]}
    plotting.save_figure(plotting.plot_metrics(curves, xlabel="critic steps",
                                               ylabel="W$_2$ to the data (scaled data units)",
                                               title=f"{cfg.dataset}", references=reference),
                         run, "w2")
