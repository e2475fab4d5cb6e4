"""Distilling Algorithm 1's layer stack into one compact generator: fidelity, time, memory.

On 8 x 8 digits: the plateaued DCGAN of ``flowkit reproduce digits`` (``--checkpoint``, or
a short pretraining here), Algorithm 1 with layers below its tanh, then
:func:`flowkit.distill.distill` of ``tanh o stack o body`` into a copy of the generator
(warm start, same size as ``g``), for prefixes of the stack of growing length. On a toy set
(8 gaussians, ``g = id``): Algorithm 1 as in ``flowkit reproduce toy``, distilled into an
MLP with a tanh output. Reports IS / FD / W2 (digits; W2 only on the toy) of the original
generator, the stack and the distilled net, generation time per 1000 samples and the
parameter memory of each, and the student's fidelity (MSE to the teacher, and its metrics
against the teacher's) for each prefix length.

    python benchmarks/distill.py --checkpoint runs/digits-.../pretrained.pt
    python benchmarks/distill.py --quick

Prints tables and writes ``benchmarks/results/distill-<parts>.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

import flowkit as fk
from flowkit.distill import distill, teacher_map
from flowkit.experiments import digits as dg
from flowkit.experiments import toy
from flowkit.metrics import DigitsMetrics

RESULTS = Path(__file__).resolve().parent / "results"


def param_bytes(*modules: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for m in modules for p in m.parameters())


def per_1000(fn, z: torch.Tensor, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn(z)
        best = min(best, time.perf_counter() - start)
    return best / (len(z) / 1000)


def digits_part(args, metrics: DigitsMetrics) -> dict:
    cfg = dg.DigitsConfig(outer_steps=args.steps)
    if args.quick:
        cfg = replace(cfg, **{**dg.QUICK, "outer_steps": args.steps})
    data = metrics.split.train_images
    if args.checkpoint:
        ckpt = dg.load_checkpoint(cfg, args.checkpoint)
    else:
        ckpt, _ = dg.pretrain(cfg, data, metrics)
    res = dg.run_algorithm1(cfg, data, ckpt, metrics, seed=1)
    gen, layers = res["_generator"], res["_layers"]
    base = dg.LatentBase(gen, cfg.latent_dim)
    z = dg.eval_latents(cfg, 7)
    latents = fk.objectives.adversarial.gaussian_base(1.0, (cfg.latent_dim,))

    def with_stack(k: int):
        return teacher_map(layers[:k], gen.body, torch.tanh)

    def sample(fn, zz):
        with torch.no_grad():
            return fn(zz)

    rows, prefixes = [], sorted({max(1, len(layers) * i // 4) for i in (1, 2, 3, 4)})
    out = {"outer_steps": len(layers), "original": {
        **metrics(sample(gen, z)), "ms_per_1000": 1e3 * per_1000(lambda x: sample(gen, x), z),
        "param_bytes": param_bytes(gen)}}
    for k in prefixes:
        teacher = with_stack(k)
        target = sample(teacher, z)
        student = copy.deepcopy(gen)
        start = time.perf_counter()
        d = distill(layers[:k], student, latents, generator=gen.body, output_map=torch.tanh,
                    steps=args.distill_steps, batch_size=256, lr=args.lr, eval_latents=z,
                    seed=3)
        train_time = time.perf_counter() - start
        student.eval()
        got = sample(student, z)
        rows.append({"layers": k,
                     "stack": {**metrics(target), "ms_per_1000": 1e3 * per_1000(
                         lambda x, t=teacher: sample(t, x), z),
                         "param_bytes": param_bytes(gen, layers[:k])},
                     "distilled": {**metrics(got), "ms_per_1000": 1e3 * per_1000(
                         lambda x, s=student: sample(s, x), z),
                         "param_bytes": param_bytes(student)},
                     "mse_to_teacher": d.mse,
                     "mse_start_to_teacher": float(
                         (sample(gen, z) - target).flatten(1).square().sum(1).mean()),
                     "distill_seconds": train_time})
    del base
    out["prefixes"] = rows
    return out


def toy_part(args) -> dict:
    from flowkit.monitors import wasserstein

    cfg = toy.toy_config("8gaussians", quick=args.quick, baseline=False)
    hist = Path("/tmp") / f"flowkit-distill-toy-{time.time_ns()}"
    out = toy.run_toy(cfg, history_dir=str(hist))
    layers = fk.objectives.adversarial.LayerHistory.open(hist).load_stack()
    data = out["_data"]
    reference = fk.datasets.eight_gaussians(cfg.size, seed=cfg.seed + 5) * (
        toy.DATA_MAX / fk.datasets.eight_gaussians(cfg.size, seed=cfg.seed).abs().max())
    base = fk.objectives.adversarial.gaussian_base(cfg.base_std, (2,))
    z = base(cfg.size, torch.Generator().manual_seed(11))

    def w2(x):
        return {"W2_data": wasserstein(x, data, 2).value,
                "W2_heldout": wasserstein(x, reference, 2).value}

    rows = []
    for k in sorted({max(1, len(layers) * i // 4) for i in (1, 2, 3, 4)}):
        teacher = teacher_map(layers[:k], None, torch.tanh)
        with torch.no_grad():
            target = teacher(z)
        torch.manual_seed(0)
        student = nn.Sequential(nn.Linear(2, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
                                nn.Linear(128, 2), nn.Tanh())
        start = time.perf_counter()
        d = distill(layers[:k], student, base, output_map=torch.tanh,
                    steps=args.distill_steps, batch_size=256, lr=args.lr, eval_latents=z,
                    seed=3)
        with torch.no_grad():
            got = student(z)
        rows.append({"layers": k, "stack": {**w2(target), "ms_per_1000": 1e3 * per_1000(
                         lambda x, t=teacher: t(x), z), "param_bytes": param_bytes(layers[:k])},
                     "distilled": {**w2(got), "ms_per_1000": 1e3 * per_1000(
                         lambda x, s=student: s(x).detach(), z),
                         "param_bytes": param_bytes(student)},
                     "mse_to_teacher": d.mse, "distill_seconds": time.perf_counter() - start})
    return {"outer_steps": len(layers), "original": w2(torch.tanh(z)),
            "reference_W2": w2(reference)["W2_data"], "prefixes": rows}


def table(part: dict, keys: tuple[str, ...]) -> str:
    head = " | ".join(keys)
    lines = [f"| layers | what | {head} | ms / 1000 samples | params [KiB] | MSE to teacher |",
             "|---:|---|" + "---:|" * (len(keys) + 3)]
    o = part["original"]
    lines.append("| 0 | original g | " + " | ".join(f"{o[k]:.3f}" for k in keys)
                 + f" | {o.get('ms_per_1000', float('nan')):.2f} | "
                 f"{o.get('param_bytes', 0) / 1024:.0f} | - |")
    for r in part["prefixes"]:
        for what in ("stack", "distilled"):
            m = r[what]
            mse = f"{r['mse_to_teacher']:.4f}" if what == "distilled" else "-"
            lines.append(f"| {r['layers']} | {what} | " + " | ".join(f"{m[k]:.3f}" for k in keys)
                         + f" | {m['ms_per_1000']:.2f} | {m['param_bytes'] / 1024:.0f} | {mse} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=None, help="pretrained.pt of a digits run")
    p.add_argument("--steps", type=int, default=30, help="Algorithm 1 outer steps on digits")
    p.add_argument("--distill-steps", type=int, default=1000)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--parts", nargs="+", choices=["digits", "toy"], default=["digits", "toy"])
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.steps, args.distill_steps = min(args.steps, 4), min(args.distill_steps, 20)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    metrics = DigitsMetrics() if "digits" in args.parts else None
    result = {"args": vars(args), "versions": fk.runs.library_versions()}
    if "digits" in args.parts:
        result["digits"] = digits_part(args, metrics)
        result["real_vs_real"] = metrics.real_vs_real()
        print("digits (IS, FD, W2 against the 797 held-out digits; real vs real "
              + ", ".join(f"{k} {result['real_vs_real'][k]:.3f}" for k in ("IS", "FD", "W2"))
              + ")")
        print(table(result["digits"], ("IS", "FD", "W2")))
    if "toy" in args.parts:
        result["toy"] = toy_part(args)
        print(f"\n8 gaussians (W2 to the training data and to a held-out draw; held-out vs "
              f"data {result['toy']['reference_W2']:.4f})")
        print(table(result["toy"], ("W2_data", "W2_heldout")))
    result["wall_time"] = time.perf_counter() - start
    print(f"\nwall time {result['wall_time']:.1f} s")
    RESULTS.mkdir(exist_ok=True)
    name = "-".join(["distill", *args.parts] + (["quick"] if args.quick else [])) + ".json"
    (RESULTS / name).write_text(json.dumps(result, indent=1, default=float))


if __name__ == "__main__":
    main()
