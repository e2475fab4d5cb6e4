"""Timing of Algorithm 1 on the toy problem, pool vs paper sampling, and of Algorithm 2.

Measures, on 8 gaussians with the paper's critic (4 layers, batch 50, T_0 = 50):

1. the wall time of one WGAN-GP critic step (width 128 and 512, on one thread and on all
   cores), with the default MLP's explicit input gradients and, side by side, with the
   same network behind autograd's double backward (``create_graph=True``) and with the
   whole step's gradient written out (``explicit_backward=True``, what ``flowkit reproduce
   toy`` uses); the three alternate in the same run, best of the repeats;
2. Algorithm 1 for ``T`` outer steps in ``mode="pool"`` and ``mode="paper"``: time per outer
   step (first and last few, since paper mode grows linearly with the number of layers)
   and per critic step;
3. Algorithm 2: seconds to push 1000 samples through one gradient layer (width 128, 512).

Prints a table and writes ``benchmarks/results/toy_alg1.json``::

    python benchmarks/toy_alg1.py              # T = 30 outer steps, one thread
    python benchmarks/toy_alg1.py --quick      # a smoke run
    python benchmarks/toy_alg1.py --critic-step-only   # item 1 only (a minute)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

import flowkit as fk
from flowkit.objectives.adversarial import gaussian_base

RESULTS = Path(__file__).resolve().parent / "results"


def _data(n: int = 500) -> torch.Tensor:
    data = fk.datasets.eight_gaussians(n, seed=0)
    return data * (0.8 / data.abs().max())


class _PlainModule(torch.nn.Module):
    """The same MLP without ``values_and_input_gradients``: the penalty takes autograd."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def critic_step_times(hidden: int, steps: int, threads: int = 1, repeats: int = 3
                      ) -> dict[str, float]:
    """Seconds per critic step (pool sampling, 8-gaussians data) of each path.

    ``explicit``: the MLP's explicit input gradient, autograd for the rest; ``autograd``: the
    same network behind autograd's double backward; ``explicit_backward``: the whole step's
    gradient by hand. Best of ``repeats`` after a warm-up, the paths alternating; also the
    CPU time per step of each (``*_cpu``), less sensitive to other jobs than the wall time.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        data = _data()
        pool = 0.5 * torch.randn(500, 2, generator=torch.Generator().manual_seed(1))
        critics = {}
        for name in ("explicit", "autograd", "explicit_backward"):
            net = fk.nn.MLP(2, None, hidden, 4, generator=torch.Generator().manual_seed(0))
            critics[name] = fk.critics.WGANGPCritic(
                net=_PlainModule(net) if name == "autograd" else net, steps=steps, seed=0,
                explicit_backward=name == "explicit_backward")
            critics[name].train(pool, data, 10)
        best = {name: float("inf") for name in critics}
        best_cpu = dict(best)
        for _ in range(repeats):
            for name, critic in critics.items():
                start, cpu = time.perf_counter(), time.process_time()
                critic.train(pool, data)
                best[name] = min(best[name], (time.perf_counter() - start) / steps)
                best_cpu[name] = min(best_cpu[name], (time.process_time() - cpu) / steps)
        return {**best, **{f"{name}_cpu": t for name, t in best_cpu.items()}}
    finally:
        torch.set_num_threads(previous)


def algorithm1_times(mode: str, outer: int, t0: int, hidden: int) -> dict:
    """Per-outer-step wall times of Algorithm 1 (no monitors)."""
    data = _data()
    critic = fk.critics.WGANGPCritic(dim=2, hidden=hidden, steps=t0, seed=0)
    base = gaussian_base(0.5)
    objective = fk.objectives.AdversarialObjective(
        critic, data, mode, base if mode == "paper" else None, output_map=torch.tanh)
    stamps = [time.perf_counter()]
    flow = fk.FunctionalGradientDescent(objective, 0.1, progress=False,
                                        callbacks=[lambda s: stamps.append(time.perf_counter())])
    flow.run(base(500, torch.Generator().manual_seed(1)), outer)
    per_step = [b - a for a, b in zip(stamps[:-1], stamps[1:])]
    k = max(1, min(5, outer // 4))
    return {
        "mode": mode, "outer_steps": outer, "critic_steps_per_layer": t0, "hidden": hidden,
        "total_seconds": stamps[-1] - stamps[0],
        "per_outer_step_mean": statistics.fmean(per_step),
        "per_outer_step_first": statistics.fmean(per_step[:k]),
        "per_outer_step_last": statistics.fmean(per_step[-k:]),
        "per_critic_step_mean": (stamps[-1] - stamps[0]) / (outer * t0),
        "per_outer_step": per_step,
    }


def algorithm2_cost(hidden: int, layers: int, n: int, repeats: int) -> float:
    """Seconds per 1000 samples per layer of ``stack(z)`` (critic snapshots, width ``hidden``)."""
    critic = fk.critics.WGANGPCritic(dim=2, hidden=hidden, seed=0)
    stack = fk.GradientLayerStack(
        fk.GradientLayer(fk.insertion.PulledBackPotential(critic.snapshot(), torch.tanh), 0.1)
        for _ in range(layers))
    z = 0.5 * torch.randn(n, 2, generator=torch.Generator().manual_seed(2))
    stack(z[:100])  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        stack(z, batch_size=4096)
        best = min(best, time.perf_counter() - start)
    return best / (n / 1000) / layers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--outer-steps", type=int, default=30)
    parser.add_argument("--critic-steps", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--critic-step-only", action="store_true",
                        help="measure the critic step only (item 1)")
    parser.add_argument("--out", default=str(RESULTS / "toy_alg1.json"))
    args = parser.parse_args()
    cores = torch.get_num_threads()  # torch's default: all cores
    torch.set_num_threads(args.threads)
    outer = 4 if args.quick else args.outer_steps
    t0 = 10 if args.quick else args.critic_steps
    steps = 20 if args.quick else 100

    load_before = os.getloadavg()[0]
    step_rows = [{"hidden": h, "threads": th, **critic_step_times(h, steps, th)}
                 for h in (128, 512) for th in sorted({1, cores})]
    load_after = os.getloadavg()[0]
    only = args.critic_step_only
    runs = [] if only else [algorithm1_times(mode, outer, t0, 128) for mode in ("pool", "paper")]
    gen = {} if only else {h: algorithm2_cost(h, 4 if args.quick else 20, 10_000,
                                              1 if args.quick else 3) for h in (128, 512)}

    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
          f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}")
    print(f"\ncritic step (batch 50, one-sided penalty, 4 layers), ms wall (CPU), best of 3, "
          f"load average {load_before:.1f} -> {load_after:.1f}:")
    print("| width | threads | explicit input gradient | autograd double backward | ratio "
          "| explicit backward (whole step) | ratio to explicit input gradient |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in step_rows:
        print(f"| {r['hidden']} | {r['threads']} | {1e3 * r['explicit']:.2f} "
              f"({1e3 * r['explicit_cpu']:.2f}) | {1e3 * r['autograd']:.2f} "
              f"({1e3 * r['autograd_cpu']:.2f}) | {r['autograd'] / r['explicit']:.2f} | "
              f"{1e3 * r['explicit_backward']:.2f} ({1e3 * r['explicit_backward_cpu']:.2f}) | "
              f"{r['explicit'] / r['explicit_backward']:.2f} |")
    if only:
        _write(args, step_rows, runs, gen, (load_before, load_after))
        return
    print(f"\nAlgorithm 1, 8 gaussians, width 128, T = {outer}, T_0 = {t0}:")
    print("| mode | s / outer step (mean) | first steps | last steps | ms / critic step "
          "| total s |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in runs:
        print(f"| {r['mode']} | {r['per_outer_step_mean']:.3f} | {r['per_outer_step_first']:.3f} "
              f"| {r['per_outer_step_last']:.3f} | {1e3 * r['per_critic_step_mean']:.2f} "
              f"| {r['total_seconds']:.1f} |")
    print("\nAlgorithm 2 (stack(z), batches of 4096):")
    for h, t in gen.items():
        print(f"  width {h:>3}: {1e3 * t:7.3f} ms per 1000 samples per layer")

    _write(args, step_rows, runs, gen, (load_before, load_after))


def _write(args: argparse.Namespace, step_rows: list, runs: list, gen: dict,
           load: tuple[float, float]) -> None:
    flags = [f for f, on in (("--quick", args.quick), ("--critic-step-only",
                                                      args.critic_step_only)) if on]
    record = {
        "command": " ".join(["python benchmarks/toy_alg1.py", *flags]),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "machine": platform.machine(),
        "load_average_during_critic_steps": load,
        "critic_step_seconds": step_rows,
        "algorithm1": runs,
        "algorithm2_seconds_per_1000_samples_per_layer": {str(h): t for h, t in gen.items()},
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
