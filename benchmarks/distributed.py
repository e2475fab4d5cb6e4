r"""Benchmark: strong and weak scaling of the sharded MMD gradient over 1 and 2 processes.

One run measures, on this machine, the seconds per MMD functional gradient
(:class:`flowkit.distributed.ShardedMMD`, Gaussian kernel, bandwidth ``sqrt(d)``, float32,
``backend="auto"``) for

* strong scaling: ``N = M`` fixed, ``P = 1`` and ``P = 2`` processes (gloo, one torch
  thread each), plus one process with ``P`` threads for comparison;
* weak scaling: ``n`` particles and ``n`` target points per rank. The work of an
  all-pairs reduction per rank is ``n x (P n)``, so perfect weak scaling of this
  quadratic problem is ``T_P = P T_1`` (efficiency ``P T_1 / T_P``), not ``T_P = T_1``;

the same arithmetic without the ring ("compute only": the local rows against ``P`` blocks
of the local size, no messages; the gap to it is what communication costs),
and the bytes each rank sends per gradient (counted by the ring), against the model
``(P - 1) (n_r + m_r) (d + 1) * 4`` bytes per rank (every block travels once round the ring).
Times are the minimum over repeats of the slowest rank's time (each repeat starts after a
barrier): the machine is shared, and the minimum is the least disturbed by other jobs.

Usage::

    nice -n 19 python benchmarks/distributed.py            # about a minute here
    python benchmarks/distributed.py --model               # the GPU model table only
    python benchmarks/distributed.py --n 4096 --d 2 --reps 3

Writes ``benchmarks/results/distributed-<timestamp>.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def _time_gradient(n_total: int, d: int, reps: int) -> dict:
    """On every rank: seconds per sharded MMD gradient and bytes sent per gradient."""
    import torch.distributed as dist

    import flowkit as fk
    from flowkit import distributed as fkd

    rank, size = fkd.world()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n_total, d, generator=g)
    y = torch.randn(n_total, d, generator=g) + 0.5
    xs = fkd.shard(x).clone()
    obj = fkd.ShardedMMD(fkd.shard(y).clone(), fk.kernels.Gaussian(d**0.5))
    obj.validate(xs)
    obj.functional_gradient(xs)  # warm-up: native library, thread pools, sockets
    fkd.comm_stats().reset()
    times = []
    for _ in range(reps):
        if size > 1:
            dist.barrier()
        t0 = time.perf_counter()
        obj.functional_gradient(xs)
        times.append(time.perf_counter() - t0)
    stats = fkd.comm_stats()
    # the same arithmetic without the ring: P local blocks of the same size, no messages
    psi = obj.first_variation(xs)
    compute = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(size):
            fk.kernels.kernel_grad_sum(xs, psi.points, obj.kernel, psi.weights)
        compute.append(time.perf_counter() - t0)
    return {"times": times, "compute": compute, "bytes": stats.bytes_sent / reps,
            "messages": stats.messages / reps, "rows": xs.shape[0]}


def measure(n_total: int, d: int, nprocs: int, threads: int, reps: int) -> dict:
    from flowkit import distributed as fkd

    per_rank = fkd.launch(_time_gradient, nprocs, n_total, d, reps, threads=threads,
                          timeout=600)
    slowest = [max(r["times"][i] for r in per_rank) for i in range(reps)]
    rows = [r["rows"] for r in per_rank]
    model = [(nprocs - 1) * 2 * n * (d + 1) * 4 for n in rows]  # n_r = m_r here
    compute = [max(r["compute"][i] for r in per_rank) for i in range(reps)]
    return {"N": n_total, "d": d, "processes": nprocs, "threads": threads,
            "seconds": min(slowest), "compute_only_seconds": min(compute),
            "bytes_per_rank": [r["bytes"] for r in per_rank],
            "bytes_model": model, "messages_per_rank": [r["messages"] for r in per_rank]}


# ----------------------------------------------------------------------------- the model
# Stated, not measured here (no GPU was available): single-GPU rates of the fused MMD
# gradient in kernel terms (pairs x_i, p_j) per second, and link bandwidths / latencies.
GPU_RATE = {2: 1.0e12, 64: 1.0e11}  # pairs/s on one H100/H200, d = 2 and d = 64 (float32)
LINKS = {
    "8 GPUs, NVLink 4 (one node)": (8, 300e9, 10e-6),  # P, bytes/s per direction, seconds
    "64 GPUs, InfiniBand NDR 400 Gb/s (8 nodes)": (64, 40e9, 20e-6),
}


def step_model(n: float, d: int, p: int, rate: float, beta: float, alpha: float) -> dict:
    """Seconds per MMD gradient (M = N) with the ring over ``p`` ranks.

    Rank ``r`` holds ``N/P`` particles and ``N/P`` target points; the block ``[x; y]`` of
    ``2N/P`` rows of ``d + 1`` float32 travels ``P - 1`` stages. A stage computes
    ``(N/P)(2N/P)`` pairs while one block is in flight, so it lasts
    ``max(t_comp, t_msg)``; the last stage computes only.
    """
    t_comp = (n / p) * (2 * n / p) / rate
    t_msg = alpha + (2 * n / p) * (d + 1) * 4 / beta if p > 1 else 0.0
    total = t_comp + (p - 1) * max(t_comp, t_msg)
    # the N from which t_msg <= t_comp: a N^2 - b N - alpha >= 0
    a, b = 2.0 / (p * p * rate), 8.0 * (d + 1) / (p * beta)
    n_star = (b + (b * b + 4 * a * alpha) ** 0.5) / (2 * a) if p > 1 else 0.0
    return {"seconds": total, "t_comp_stage": t_comp, "t_msg_stage": t_msg,
            "hidden": t_msg <= t_comp, "n_hidden_from": n_star,
            "bytes_per_rank": (p - 1) * (2 * n / p) * (d + 1) * 4}


def print_model() -> dict:
    rows = {}
    print("| d | link | P | N* (comm. hidden from) | N | step s | 1 GPU s | efficiency "
          "| GB sent / rank |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for d, rate in GPU_RATE.items():
        for name, (p, beta, alpha) in LINKS.items():
            for n in (1e5, 1e6, 1e7):
                m = step_model(n, d, p, rate, beta, alpha)
                one = step_model(n, d, 1, rate, beta, alpha)["seconds"]
                eff = one / (p * m["seconds"])
                rows[f"d={d}, {name}, N={n:.0e}"] = {**m, "single_gpu_seconds": one,
                                                    "efficiency": eff}
                print(f"| {d} | {name} | {p} | {m['n_hidden_from']:.3g} | {n:.0e} | "
                      f"{m['seconds']:.3g} | {one:.3g} | {eff:.2f} | "
                      f"{m['bytes_per_rank'] / 1e9:.3g} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=8192, help="N = M for strong scaling")
    parser.add_argument("--n-per-rank", type=int, default=4096, help="weak scaling")
    parser.add_argument("--d", type=int, default=16)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--model", action="store_true",
                        help="print the GPU step-time model only (no measurement)")
    args = parser.parse_args()
    if args.model:
        print_model()
        return

    runs = {
        "strong, 1 process x 1 thread": measure(args.n, args.d, 1, 1, args.reps),
        "strong, 2 processes x 1 thread": measure(args.n, args.d, 2, 1, args.reps),
        "strong, 1 process x 2 threads": measure(args.n, args.d, 1, 2, args.reps),
        "weak, 1 process x 1 thread": measure(args.n_per_rank, args.d, 1, 1, args.reps),
        "weak, 2 processes x 1 thread": measure(2 * args.n_per_rank, args.d, 2, 1, args.reps),
    }
    t1s = runs["strong, 1 process x 1 thread"]["seconds"]
    t1w = runs["weak, 1 process x 1 thread"]["seconds"]
    for name, r in runs.items():
        if name.startswith("strong"):
            r["speedup"] = t1s / r["seconds"]
            r["efficiency"] = r["speedup"] / (r["processes"] * r["threads"])
        else:  # quadratic work: ideal T_P = P * T_1
            r["speedup"] = r["processes"] * t1w / r["seconds"]
            r["efficiency"] = r["speedup"] / r["processes"]

    print(f"MMD gradient, d = {args.d}, float32, Gaussian, backend auto, gloo; "
          f"{os.cpu_count()} CPUs (shared with other jobs)\n")
    print("| run | N = M | seconds | compute only | speedup | efficiency "
          "| MB sent / rank / gradient | model MB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, r in runs.items():
        sent = max(r["bytes_per_rank"]) / 2**20
        model = max(r["bytes_model"]) / 2**20
        print(f"| {name} | {r['N']} | {r['seconds']:.3f} | {r['compute_only_seconds']:.3f} | "
              f"{r['speedup']:.2f} | "
              f"{r['efficiency']:.2f} | {sent:.3f} | {model:.3f} |")

    print("\nModel of the GPU step time (stated rates and links, see GPU_RATE and LINKS):\n")
    model = print_model()
    RESULTS.mkdir(exist_ok=True)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    path = RESULTS / f"distributed-{stamp}.json"
    result = {"args": vars(args), "machine": {"cpus": os.cpu_count(),
                                              "processor": platform.processor(),
                                              "torch": torch.__version__,
                                              "nice": os.nice(0)},
              "runs": runs, "model": {"gpu_rate_pairs_per_s": GPU_RATE,
                                      "links": LINKS, "rows": model}}
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
