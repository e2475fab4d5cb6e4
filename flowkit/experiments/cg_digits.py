r"""``flowkit reproduce cg-digits``: conjugate gradient for GANs against SGD, momentum and
Adam, on 8 x 8 digits.

Naganuma & Iiduka (2023) [NI23] train a GAN with the nonlinear conjugate gradient method
(:class:`flowkit.games.ConjugateGradient`: the FR, PRP, HS, DY, HZ rules and the hybrids
HS_DY, FR_PRP, with ``beta`` capped at 1/2) and claim it beats SGD and momentum SGD in best
FID and Adam on average. Here: the DCGAN of ``flowkit reproduce digits`` (batch norm in the
generator only; the discriminator is the same network with a logit output) with the
non-saturating loss, discriminator then generator at each iteration (as in the paper's
code), every method with a sweep of learning rates (one of the paper's rules, constant by
default, or :math:`a/\sqrt n`) and several seeds; FD (:mod:`flowkit.metrics`) on 1000 samples
against the held-out digits every ``--eval-every`` iterations.

Per run the *best* FD over the evaluations is kept. Per method: "best" = the lowest over
learning rates and seeds (the paper's top-1); "mean" = at the learning rate with the lowest
seed-mean, the mean and standard deviation over seeds (our stand-in for the paper's top-10
mean). The runs are independent and each seeds its own random streams, so ``--workers``
processes (default: one per usable core, one torch thread each) run them in parallel with
the same numbers as one process. A run whose parameters become non-finite stops and is
reported as diverged; one whose generator receives an exactly zero gradient to the end is
reported too. Writes ``config.json``, ``results.json``, ``table.md`` and ``fd.png`` /
``fd.pdf``.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import torch
from torch import nn

from flowkit.experiments._common import integer, launch, usable_cores
from flowkit.experiments.cg import make_optimizer

NAME = "cg-digits"
HELP = "CG (FR/PRP/HS/DY/HZ/hybrids) vs SGD, momentum, Adam on a DCGAN for 8x8 digits (FD)"

CG_RULES = ("FR", "PRP", "HS", "DY", "HZ", "HS_DY", "FR_PRP")
LRS = {"sgd": (0.01, 0.02, 0.05), "adam": (5e-5, 1e-4, 2e-4)}
MOMENTUM = 0.5
TIE = 0.01  # relative FD difference below which two methods tie


def methods(quick: bool = False) -> dict[str, dict[str, Any]]:
    """Method name -> optimiser spec (kind and options)."""
    out: dict[str, dict[str, Any]] = {
        "SGD": {"kind": "sgd"},
        f"momentum {MOMENTUM:g}": {"kind": "sgd", "momentum": MOMENTUM},
        "Adam": {"kind": "adam"},
    }
    for rule in (("FR", "PRP") if quick else CG_RULES):
        out[f"CG-{rule}"] = {"kind": "cg", "beta": rule}
    return out


def train(spec: dict, lr: float, seed: int, args: argparse.Namespace, data: torch.Tensor,
          metrics) -> dict[str, Any]:
    """One non-saturating GAN run; FD and IS on fixed latents every ``eval_every``.

    A run whose parameters become non-finite has diverged: it stops there, records
    ``diverged_at`` (the iteration) and an infinite FD (IS ``nan``) at the evaluations
    it did not reach. ``zero_grad_from`` is the first iteration of the final stretch over
    which the generator's gradient was exactly 0 at every iteration (None when it was not
    0 at the last one): a saturated discriminator, under which the generator stops
    learning and its FD freezes.
    """
    from flowkit.critics.dcgan import DCGANCritic
    from flowkit.experiments.digits import samples
    from flowkit.games import TwoPlayerOptimizer, lr_schedule
    from flowkit.generators.dcgan import DCGANGenerator

    cpu_start = time.process_time()  # the whole run: networks, training, evaluations
    # the same seed gives every method the same networks, batches and evaluation latents
    g = torch.Generator().manual_seed(seed)
    G = DCGANGenerator(args.latent_dim, args.width, seed=seed)
    D = DCGANCritic(args.width, seed=seed + 1)
    z_eval = torch.randn(args.n_eval, args.latent_dim, generator=g)
    opt_g, opt_d = make_optimizer(list(G.parameters()), lr, spec), make_optimizer(
        list(D.parameters()), lr, spec)
    schedules = [lr_schedule(o, args.lr_rule) for o in (opt_g, opt_d)]
    opt = TwoPlayerOptimizer(opt_g, opt_d, mode="alternating", first="max")
    softplus = nn.functional.softplus  # BCE with logits: -log sigmoid(t) = softplus(-t)

    def losses(player: str = "both") -> tuple[torch.Tensor, torch.Tensor]:
        # The G step ("min", told by the optimizer) reads loss_g only: D(real) is skipped
        # there (D has no batch norm, so nothing else changes); the real batch is still
        # drawn, so that the random stream, hence every number, is that of computing both.
        real = data[torch.randint(len(data), (args.batch,), generator=g)]
        fake = G(torch.randn(args.batch, args.latent_dim, generator=g))
        d_fake = D(fake)
        loss_g = softplus(-d_fake).mean()
        if player == "min":
            return loss_g, loss_g.new_zeros(())
        return loss_g, softplus(-D(real)).mean() + softplus(d_fake).mean()

    def evaluate() -> dict[str, float]:
        x = samples(G, z_eval)
        if not bool(torch.isfinite(x).all()):
            return {"IS": float("nan"), "FD": float("inf")}
        return metrics(x, w2=False)

    iters, fd, is_ = [0], [], []
    m = evaluate()
    fd.append(m["FD"])
    is_.append(m["IS"])
    params = [*G.parameters(), *D.parameters()]
    diverged_at = zero_grad_from = None
    start = time.perf_counter()
    for it in range(1, args.iters + 1):
        opt.step(losses)
        for s in schedules:
            s.step()
        # one synchronisation per check, not one per parameter
        if not bool(torch.stack([torch.isfinite(p).all() for p in params]).all()):
            diverged_at = it
            break
        grads = [p.grad.any() for p in G.parameters() if p.grad is not None]
        if grads and bool(torch.stack(grads).any()):
            zero_grad_from = None
        elif zero_grad_from is None:
            zero_grad_from = it
        if it % args.eval_every == 0 or it == args.iters:
            m = evaluate()
            iters.append(it)
            fd.append(m["FD"])
            is_.append(m["IS"])
    if diverged_at is not None:  # the evaluations it did not reach, so that curves align
        iters += [it for it in range(diverged_at, args.iters + 1)
                  if it % args.eval_every == 0 or it == args.iters]
        fd += [float("inf")] * (len(iters) - len(fd))
        is_ += [float("nan")] * (len(iters) - len(is_))
        zero_grad_from = None
    finite = [v for v in fd if v == v and v != float("inf")]
    return {"iters": iters, "FD": fd, "IS": is_, "best_FD": min(finite, default=float("inf")),
            "seed": seed, "diverged_at": diverged_at, "zero_grad_from": zero_grad_from,
            "wall_time": time.perf_counter() - start, "cpu_time": time.process_time() - cpu_start}


def _mean_std(values: list[float]) -> tuple[float, float]:
    t = torch.tensor(values, dtype=torch.float64)
    return float(t.mean()), float(t.std()) if len(t) > 1 else 0.0


def summarize(results: dict[str, dict[str, list[dict]]]) -> dict[str, dict[str, Any]]:
    """Per method: best FD over lrs and seeds, and seed mean +- std at the best lr."""
    out = {}
    for name, by_lr in results.items():
        means = {lr: _mean_std([r["best_FD"] for r in runs]) for lr, runs in by_lr.items()}
        best_lr = min(means, key=lambda lr: means[lr][0])
        out[name] = {"best": min(r["best_FD"] for runs in by_lr.values() for r in runs),
                     "best_lr": best_lr, "mean": means[best_lr][0], "std": means[best_lr][1],
                     "mean_by_lr": {str(lr): v for lr, v in means.items()}}
    return out


def verdicts(summary: dict[str, dict[str, Any]]) -> list[str]:
    """The two claims of [NI23] at this scale, with the numbers."""
    cg = {k: v for k, v in summary.items() if k.startswith("CG-")}
    if not cg:
        return ["no CG method was run"]
    best_cg = min(cg, key=lambda k: cg[k]["best"])
    rivals = [k for k in summary if k == "SGD" or k.startswith("momentum")]

    def margin(k: str) -> float:
        # below 1% or the seed spread, a difference is a tie
        return max(TIE * summary[k]["best"], summary[k]["std"], cg[best_cg]["std"])

    beat = all(cg[best_cg]["best"] < summary[k]["best"] - margin(k) for k in rivals)
    lines = [f"Claim 1 (CG beats SGD and momentum in best FD): "
             f"{'SUPPORTED' if beat else 'NOT SUPPORTED'} at this scale: best CG "
             f"({best_cg}) {cg[best_cg]['best']:.2f} vs "
             + ", ".join(f"{k} {summary[k]['best']:.2f}" for k in rivals)
             + " (a win needs a margin of 1% and of the seed spread)"]
    if "Adam" in summary:
        adam = summary["Adam"]
        better = [k for k in cg if cg[k]["mean"] + cg[k]["std"] < adam["mean"] - adam["std"]]
        lines.append(
            f"Claim 2 (CG beats Adam on average): {'SUPPORTED' if better else 'NOT SUPPORTED'}"
            f" at this scale: Adam {adam['mean']:.2f} +- {adam['std']:.2f}; CG variants whose "
            f"mean +- std lies entirely below it: {', '.join(better) or 'none'} (best CG mean "
            f"{min(v['mean'] for v in cg.values()):.2f})")
    return lines


def format_table(summary: dict[str, dict[str, Any]], real_fd: float) -> str:
    lines = ["| method | best FD (top-1 over lrs, seeds) | mean +- std over seeds (best lr) "
             "| best lr |", "|---|---:|---:|---:|"]
    for name, s in sorted(summary.items(), key=lambda kv: kv[1]["mean"]):
        lines.append(f"| {name} | {s['best']:.2f} | {s['mean']:.2f} +- {s['std']:.2f} | "
                     f"{s['best_lr']:g} |")
    lines.append(f"| real vs real (1000 train vs 797 held-out) | {real_fd:.2f} | | |")
    return "\n".join(lines)


def figure(results: dict[str, dict[str, list[dict]]], summary: dict, real_fd: float):
    """FD against iterations at each method's best lr, min-max band over seeds."""
    from flowkit import plotting

    fig, (ax,) = plotting.figure(width=5.2, height=4.6)
    plotting.log_axis(ax)
    curves = {}
    for name, by_lr in results.items():
        runs = by_lr[summary[name]["best_lr"]]
        # a diverged run's FD is inf: clipped so that the curve stays on the axes
        fd = [[min(v, 1e4) if v == v else 1e4 for v in r["FD"]] for r in runs]
        curves[f"{name} (lr {summary[name]['best_lr']:g})"] = (runs[0]["iters"], fd)
    plotting.plot_curves(ax, curves, band="range")
    plotting.reference_line(ax, real_fd, "real vs real")
    ax.set_xlabel("iteration (one D step + one G step)")
    ax.set_ylabel("FD to held-out digits")
    ax.set_title("DCGAN on 8x8 digits: best lr per method, min-max band over seeds")
    # below the axes: on the right, ten labels ran over the long title
    plotting.place_legend(fig, loc="outside lower center", ncols=2)
    return fig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--iters", type=integer(1), default=1000, help="GAN iterations per run")
    parser.add_argument("--seeds", type=integer(1), default=3, help="seeds: seed, seed+1, ...")
    parser.add_argument("--eval-every", type=integer(1), default=200,
                        help="iterations between FDs")
    parser.add_argument("--lr-rule", choices=["constant", "sqrt"], default="constant",
                        help="learning-rate rule of [NI23]: a, or a / sqrt(n)")
    parser.add_argument("--batch", type=integer(1), default=64, help="minibatch size")
    parser.add_argument("--latent-dim", type=integer(1), default=32, help="latent dimension")
    parser.add_argument("--width", type=integer(1), default=32,
                        help="DCGAN width (both networks)")
    parser.add_argument("--n-eval", type=integer(2), default=1000, help="samples per FD")
    parser.add_argument("--workers", type=integer(1), default=None,
                        help="processes running the independent runs in parallel, each with "
                             "--threads torch threads (default: the usable cores, 1 with "
                             "--quick); the results do not depend on it")


def configure(args: argparse.Namespace) -> dict[str, Any]:
    """``--quick``: 30 iterations, one seed, one lr, SGD/momentum/Adam/CG-FR/CG-PRP, one
    process; ``--workers`` defaults to the usable cores over ``--threads``."""
    if torch.device(args.device).type != "cpu":
        raise ValueError(f"--device {args.device}: cg-digits runs on the CPU only (8x8 "
                         "images, small networks); use --device cpu")
    if args.quick:
        args.iters, args.seeds, args.eval_every = min(args.iters, 30), 1, 15
        args.n_eval, args.width = min(args.n_eval, 200), min(args.width, 16)
    if args.threads is None:
        args.threads = 1  # small convolutions: one thread is the fastest
    if args.workers is None:
        # One process per core: the runs are independent. Not for --quick, whose five
        # runs take less CPU time (about 3 s) than starting a process that imports torch.
        args.workers = 1 if args.quick else max(1, usable_cores() // args.threads)
    return {k: v for k, v in vars(args).items() if not k.startswith("_")}


def main(args: argparse.Namespace):
    """Run the experiment with parsed arguments (what the command line does)."""
    return launch(sys.modules[__name__], args)


Job = tuple[str, dict, float, int]  # (method, optimiser spec, lr, seed)


def sweep_jobs(args: argparse.Namespace) -> list[Job]:
    """Every run of the sweep, in the order of the table: method, lr, seed."""
    jobs = []
    for name, spec in methods(args.quick).items():
        lrs = LRS["adam" if spec["kind"] == "adam" else "sgd"]
        for lr in lrs[1:2] if args.quick else lrs:
            jobs += [(name, spec, lr, args.seed + i) for i in range(args.seeds)]
    return jobs


def describe(job: Job) -> str:
    """``"CG-DY, lr 0.01, seed 1"``: how messages name a run."""
    name, _, lr, seed = job
    return f"{name}, lr {lr:g}, seed {seed}"


_TRAIN_OPTIONS = ("iters", "eval_every", "lr_rule", "batch", "latent_dim", "width", "n_eval")
_SHARED: dict[str, Any] = {}  # what every run of a process reads: options, data, metrics


def _share(args: argparse.Namespace, data: torch.Tensor, metrics) -> None:
    _SHARED.update(args=args, data=data, metrics=metrics)


def run_job(job: Job) -> dict[str, Any]:
    """One run of the sweep with the inputs :func:`_share` set in this process; an error
    names the run."""
    name, spec, lr, seed = job
    try:
        return train(spec, lr, seed, _SHARED["args"], _SHARED["data"], _SHARED["metrics"])
    except Exception as err:
        raise RuntimeError(f"cg-digits run ({describe(job)}) failed: "
                           f"{type(err).__name__}: {err}") from err


def status(result: dict[str, Any]) -> str:
    """How a run ended, in words: its best FD, and whether it diverged or froze."""
    text = f"best FD {result['best_FD']:.2f}"
    if result["diverged_at"] is not None:
        text += f"; diverged (non-finite parameters) at iteration {result['diverged_at']}, " \
                "stopped there"
    elif result["zero_grad_from"] is not None:
        text += f"; generator gradient exactly 0 from iteration {result['zero_grad_from']}"
    return text


def sweep(args: argparse.Namespace, data: torch.Tensor, metrics, workers: int = 1,
          progress: bool = False) -> dict[str, dict[float, list[dict]]]:
    """Every run of :func:`sweep_jobs`, over ``workers`` processes; method -> lr -> runs
    (one per seed). Each run seeds all its random streams, so the results do not depend on
    ``workers`` (bit for bit: every process has ``args.threads`` torch threads)."""
    from tqdm.auto import tqdm

    from flowkit.experiments._common import map_in_processes

    jobs = sweep_jobs(args)
    bar = tqdm(total=len(jobs), disable=not progress, desc=NAME, file=sys.stderr)

    def tick(job: Job, result: dict[str, Any]) -> None:
        bar.set_postfix_str(f"{describe(job)}: {status(result)}", refresh=False)
        bar.update(1)

    # what train() reads, alone: the parsed options also hold the command-line handler
    settings = argparse.Namespace(**{k: getattr(args, k) for k in _TRAIN_OPTIONS})
    try:
        runs = map_in_processes(run_job, jobs, workers, threads=args.threads,
                                initializer=_share, initargs=(settings, data, metrics),
                                on_result=tick)
    finally:
        bar.close()
    results: dict[str, dict[float, list[dict]]] = {}
    for (name, _, lr, _), result in zip(jobs, runs, strict=True):
        results.setdefault(name, {}).setdefault(lr, []).append(result)
    return results


def notes(results: dict[str, dict[float, list[dict]]]) -> list[str]:
    """One line per run that diverged or whose generator stopped receiving gradient."""
    return [f"{name}, lr {lr:g}, seed {r['seed']}: {status(r)}"
            for name, by_lr in results.items() for lr, runs in by_lr.items() for r in runs
            if r["diverged_at"] is not None or r["zero_grad_from"] is not None]


def run(args: argparse.Namespace, folder) -> None:
    from flowkit.metrics import DigitsMetrics
    from flowkit.plotting import save_figure

    t_start = time.perf_counter()
    metrics = DigitsMetrics()
    data = metrics.split.train_images
    real_fd = metrics.real_vs_real()["FD"]
    results = sweep(args, data, metrics, args.workers, progress=not args.no_progress)
    summary = summarize(results)
    lines = verdicts(summary)
    wall = time.perf_counter() - t_start
    cpu = sum(r["cpu_time"] for by_lr in results.values() for runs in by_lr.values()
              for r in runs)
    odd = notes(results)
    text = "\n".join([format_table(summary, real_fd), "", *lines, "",
                      *(["Runs that diverged or froze:", *odd, ""]
                        if odd else []),
                      f"{len(results)} methods x {len(next(iter(results.values())))} lrs x "
                      f"{args.seeds} seeds x {args.iters} iterations ({args.lr_rule} lr); "
                      f"wall time {wall:.1f} s with {args.workers} worker process(es); "
                      f"CPU time of the runs {cpu:.1f} s"])
    print(text)
    folder.file("table.md").write_text(text + "\n", encoding="utf-8")
    folder.write_json("results.json", {"summary": summary, "verdicts": lines,
                                       "real_FD": real_fd, "notes": odd,
                                       "runs": {k: {str(lr): v for lr, v in by.items()}
                                                for k, by in results.items()},
                                       "total_wall_time": wall, "total_cpu_time": cpu})
    save_figure(figure(results, summary, real_fd), folder, "fd")
