r"""Benchmark: the MMD functional gradient of N particles against M = N data points.

Compares, in one run on the same machine, flowkit (default backend, i.e. the fused native
Gaussian path where available; the same with the large-d path as it was before the
fusion of the exponential into the tiles, ``flowkit-before``: augmented tiles, rows split
over the workers, the caller's per-block torch operations on all threads; and the plain-torch
backend), GeomLoss ``SamplesLoss("gaussian")`` with its tensorized and online (KeOps)
backends, and a naive torch implementation that materializes the kernel matrices, for d in
{2, 64}, N in {1k, 4k, 16k, 64k}, float32, CPU. The quantity is the gradient of the
Gaussian MMD^2 with respect to the particles (flowkit: the closed form; the peers: autograd
of their loss), bandwidth ``h = sqrt(d)``.

Besides seconds per gradient and peak extra memory, it measures the machine floor in the
same run: the float32 matmul rate (a 2048^3 product) and the best exponential throughput
among ``torch.exp``, ``numpy.exp`` and flowkit's native exponential (on a cache-resident
buffer, same threads), and reports each time as a ratio to

.. math:: T_{floor} = \frac{8 N M d}{\text{matmul rate}} + \frac{2 N M}{\text{exp rate}}

(the particle-particle and particle-data sums: two ``N x M`` distance products and two
weighted reductions, ``4 N M d`` FLOPs each pair, and one exponential per kernel entry).
"GFLOP/s" is ``8 N M d`` divided by the measured time, for every method alike. Every time
and rate is also taken in CPU seconds of the process (all its threads), and the table
gives both ratios: on a machine shared with other jobs a long product loses the CPU more
often than a short one, which distorts wall-clock ratios; the CPU-time ratio is the work
of a cell against the floor's work (on one thread, the ratio the cell would have alone).

``--threads 1 2`` runs the floor and the table once per thread count, in one invocation.

Every cell runs in a fresh subprocess, so its peak memory is its own (``VmHWM`` after a
reset through ``/proc/self/clear_refs``, minus the resident size before the gradient).
Cells whose predicted time (16x the cell at N/4) or memory exceeds the caps are skipped
with a reason instead of run. Times are the minimum over repeats: the machine is shared,
and the minimum is the least disturbed by other processes.

Usage::

    python benchmarks/mmd_gradient.py                 # full table, 5-15 minutes here
    python benchmarks/mmd_gradient.py --sizes 1000 4000 --dims 2
    # the large-d tiles before / after, 1 and 2 threads (about 2-4 minutes here)
    python benchmarks/mmd_gradient.py --sizes 4000 8000 --dims 2 64 \
        --methods flowkit flowkit-before --threads 1 2

Writes ``benchmarks/results/mmd_gradient-<timestamp>.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ["flowkit", "flowkit-before", "flowkit-torch", "geomloss-tensorized",
           "geomloss-online", "naive-torch"]
LABELS = {
    "flowkit": "flowkit (auto: native fused)",
    "flowkit-before": "flowkit (auto, previous large-d path)",
    "flowkit-torch": "flowkit (backend='torch')",
    "geomloss-tensorized": "GeomLoss tensorized",
    "geomloss-online": "GeomLoss online (KeOps)",
    "naive-torch": "naive torch (full matrices)",
}
# bytes of N x M float32 matrices each method holds at once (an estimate, to skip early)
MATRICES = {"geomloss-tensorized": 6, "naive-torch": 4}


# ----------------------------------------------------------------------------- one cell


def _gradient_fn(method: str, x, y, h: float):
    """A zero-argument callable computing the particles' MMD gradient with ``method``."""
    import torch

    if method in ("flowkit", "flowkit-before", "flowkit-torch"):
        import flowkit as fk
        from flowkit.backends import native

        if method == "flowkit-before":  # this cell's process only: the path before the fusion
            native.LARGE_D_TILES = "augmented"
            native.SERIAL_CALLER = False  # and the caller's ops on torch's threads, as before
        backend = "torch" if method == "flowkit-torch" else "auto"
        obj = fk.objectives.MMD(y, fk.kernels.Gaussian(h), backend=backend)
        return lambda: obj.functional_gradient(x)
    if method.startswith("geomloss"):
        from geomloss import SamplesLoss

        backend = "tensorized" if method == "geomloss-tensorized" else "online"
        loss = SamplesLoss("gaussian", blur=h, backend=backend)

        def run():
            z = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(loss(z, y), z)
            return g

        return run
    if method == "naive-torch":
        c = 1.0 / (2.0 * h * h)

        def run():
            # the textbook form: full kernel matrices, then the closed-form gradient
            kxx = torch.exp(-c * torch.cdist(x, x).pow(2))
            kxy = torch.exp(-c * torch.cdist(x, y).pow(2))
            n, m = x.shape[0], y.shape[0]
            gx = x * kxx.sum(1, keepdim=True) - kxx @ x
            gy = x * kxy.sum(1, keepdim=True) - kxy @ y
            return -4.0 * c * (gx / n - gy / m)

        return run
    raise ValueError(f"unknown method {method!r}")


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return -1


def run_cell(method: str, d: int, n: int, reps: int, warmup: bool) -> dict:
    """Time one cell in this process; returns seconds (min over reps) and peak extra MiB."""
    import torch

    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g)
    y = torch.randn(n, d, generator=g) + 0.5
    fn = _gradient_fn(method, x, y, float(d) ** 0.5)
    if warmup:
        fn()  # compiles KeOps formulas / the native library; not timed
    base = _status_kib("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark
        peak_ok = True
    except OSError:
        peak_ok = False
    times, cpu = [], []
    for _ in range(reps):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        del out
    peak = (_status_kib("VmHWM") - base) / 1024 if peak_ok else None
    return {"seconds": min(times), "all_seconds": times, "cpu_seconds": min(cpu),
            "peak_extra_mib": peak}


# ----------------------------------------------------------------------------- the floor


def measure_floor(reps: int = 7) -> dict:
    """float32 matmul rate (2048^3) and the best exp throughput on this machine (1 MiB,
    cache-resident): torch.exp, numpy.exp and flowkit's native exponential, all on the
    threads the run uses. The floor takes the best exp: an implementation that used it
    could reach that floor.

    Each rate is measured twice over, per wall-clock second and per CPU second of the
    process (all its threads): on a shared machine the CPU-time rates are what the code
    gets while it runs, and the CPU-time ratio of a cell is its work against the floor's.
    """
    import numpy as np
    import torch

    from flowkit.backends import native

    def best(f, r):
        """(min wall seconds, min CPU seconds) over ``r`` runs after one untimed run."""
        f()
        wall = cpu = float("inf")
        for _ in range(r):
            t0, c0 = time.perf_counter(), time.process_time()
            f()
            wall = min(wall, time.perf_counter() - t0)
            cpu = min(cpu, time.process_time() - c0)
        return wall, cpu

    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    t_mm = best(lambda: a @ b, reps)
    buf = -torch.rand(1 << 18)
    res = torch.empty_like(buf)
    nbuf, nres = buf.numpy(), res.numpy()
    exps = {}

    def run32(fn):
        def go():
            for _ in range(32):
                fn()
        return best(go, reps)

    exps["torch.exp"] = run32(lambda: torch.exp(buf, out=res))
    exps["numpy.exp"] = run32(lambda: np.exp(nbuf, out=nres))
    if native.available():
        work = buf.clone()
        size = work.numel()

        def passes(a: int, b: int) -> None:
            # exp(1e-3 * a) in place: the argument stays in (-1e-3, 0], as in a kernel block
            for _ in range(32):
                native.scaled_exp(work[a:b], 1e-3)

        # one C call is one thread: the run's threads each take a slice of the buffer
        exps["flowkit native exp"] = best(
            lambda: native.POOL.run(passes, size, -(-size // torch.get_num_threads())), reps)
    out = {}
    for clock, k in (("", 0), ("_cpu", 1)):
        rates = {name: 32 * buf.numel() / t[k] for name, t in exps.items()}
        best_name = max(rates, key=rates.get)
        out.update({f"matmul_gflops{clock}": 2 * 2048**3 / t_mm[k] / 1e9,
                    f"exp_rates{clock}": rates, f"exp_best{clock}": best_name,
                    f"exp_per_second{clock}": rates[best_name]})
    return out


def floor_seconds(floor: dict, n: int, m: int, d: int, clock: str = "") -> float:
    """``8 N M d / matmul rate + 2 N M / exp rate``, with the rates of ``clock``
    (``""``: wall clock, ``"_cpu"``: CPU time)."""
    return (8.0 * n * m * d / (floor[f"matmul_gflops{clock}"] * 1e9)
            + 2.0 * n * m / floor[f"exp_per_second{clock}"])


# ----------------------------------------------------------------------------- driver


def _installed(method: str) -> str | None:
    """None if the method can run here, else a 'not installed: ...' reason."""
    if method.startswith("geomloss"):
        try:
            import geomloss  # noqa: F401
        except ImportError:
            return "not installed (pip install geomloss)"
    if method == "geomloss-online":
        try:
            import pykeops  # noqa: F401
        except ImportError:
            return "not installed (pip install pykeops)"
    return None


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000, 16000, 64000])
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 64])
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument("--cell-seconds", type=float, default=75.0,
                        help="skip a cell whose predicted time for all its repeats exceeds this")
    parser.add_argument("--total-seconds", type=float, default=1100.0,
                        help="skip the remaining cells once the run has taken this long")
    parser.add_argument("--memory-mib", type=float, default=8192.0,
                        help="skip a cell whose estimated matrices exceed this")
    parser.add_argument("--threads", type=int, nargs="+", default=None,
                        help="torch threads for the floor and every cell; several values "
                             "run the table once per value (default: torch's)")
    parser.add_argument("--cell", nargs=5, metavar=("METHOD", "D", "N", "REPS", "WARMUP"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    import torch

    if os.environ.get("FLOWKIT_BENCH_THREADS"):
        torch.set_num_threads(int(os.environ["FLOWKIT_BENCH_THREADS"]))
    if args.cell:  # child process: one cell, JSON on stdout
        m, d, n, reps, warm = args.cell
        print(json.dumps(run_cell(m, int(d), int(n), int(reps), warm == "1")))
        return {}

    start = time.perf_counter()
    floors: list[dict] = []
    rows: list[dict] = []
    for threads in args.threads or [torch.get_num_threads()]:
        torch.set_num_threads(threads)
        os.environ["FLOWKIT_BENCH_THREADS"] = str(threads)  # the cells' processes inherit it
        floor = {"threads": threads, **measure_floor()}
        floors.append(floor)
        print(_floor_line(floor), flush=True)
        rows += _run_cells(args, floor, start)
    result = {
        "benchmark": "mmd_gradient",
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "torch": torch.__version__, "load_average_at_end": os.getloadavg()},
        "floors": floors,
        "rows": rows,
        "wall_seconds": time.perf_counter() - start,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    path = RESULTS / f"mmd_gradient-{stamp}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print()
    print(markdown_table(result))
    print(f"\nwritten to {path}")
    return result


def _run_cells(args: argparse.Namespace, floor: dict, start: float) -> list[dict]:
    """Every (d, N, method) cell on ``floor['threads']`` threads, each in its own process."""
    rows: list[dict] = []
    last: dict[tuple[str, int], float] = {}  # time at the largest N run so far
    prev_n: dict[tuple[str, int], int] = {}
    for d in args.dims:
        for n in sorted(args.sizes):
            flops = 8.0 * n * n * d
            t_floor = floor_seconds(floor, n, n, d)
            for method in args.methods:
                row = {"method": method, "threads": floor["threads"], "d": d, "N": n, "M": n,
                       "floor_seconds": t_floor,
                       "floor_cpu_seconds": floor_seconds(floor, n, n, d, "_cpu")}
                reason = _installed(method)
                prev = last.get((method, d))
                predicted = None if prev is None else prev * (n / prev_n[method, d]) ** 2
                mem = MATRICES.get(method, 0) * n * n * 4 / 2**20
                if reason is None and mem > args.memory_mib:
                    reason = f"over memory budget (~{mem / 1024:.0f} GiB of matrices)"
                if reason is None and time.perf_counter() - start > args.total_seconds:
                    reason = "over time budget (benchmark total)"
                reps = 3 if predicted is None or predicted < 5 else 1
                warm = predicted is None or predicted < 10 or method == "geomloss-online"
                if reason is None and predicted is not None and \
                        predicted * (reps + warm) > args.cell_seconds:
                    reason = f"over time budget (predicted {predicted:.0f} s per gradient)"
                if reason is None:
                    cmd = [sys.executable, __file__, "--cell", method, str(d), str(n),
                           str(reps), "1" if warm else "0"]
                    try:
                        proc = subprocess.run(cmd, capture_output=True, text=True,
                                              timeout=3 * args.cell_seconds + 120)
                        if proc.returncode != 0:
                            reason = "failed: " + proc.stderr.strip().splitlines()[-1][:120]
                        else:
                            row.update(json.loads(proc.stdout.strip().splitlines()[-1]))
                    except subprocess.TimeoutExpired:
                        reason = "over time budget (timed out)"
                if reason is None:
                    t = row["seconds"]
                    row["gflops"] = flops / t / 1e9
                    row["ratio_to_floor"] = t / t_floor
                    row["ratio_to_floor_cpu"] = row["cpu_seconds"] / row["floor_cpu_seconds"]
                    last[(method, d)] = t
                    prev_n[(method, d)] = n
                else:
                    row["skipped"] = reason
                rows.append(row)
                print(_row_markdown(row), flush=True)
    return rows


def _floor_line(f: dict) -> str:
    def rates(clock: str) -> str:
        return ", ".join(f"{k} {v / 1e9:.2f}" for k, v in f[f"exp_rates{clock}"].items())

    return (f"Machine floor on {f['threads']} thread(s) (same run): float32 matmul "
            f"{f['matmul_gflops']:.1f} GFLOP/s, best exp ({f['exp_best']}) "
            f"{f['exp_per_second'] / 1e9:.2f} G exp/s (all: {rates('')}); per CPU second: "
            f"matmul {f['matmul_gflops_cpu']:.1f} GFLOP/s, exp {rates('_cpu')}.")


def _row_markdown(row: dict) -> str:
    head = f"| {row['threads']} | {row['d']} | {row['N']} | {LABELS[row['method']]} |"
    if "skipped" in row:
        return head + f" {row['skipped']} | | | | |"
    peak = row.get("peak_extra_mib")
    peak_s = "n/a" if peak is None else f"{peak:.0f}"
    return head + (f" {row['seconds']:.3g} | {peak_s} | {row['gflops']:.1f} | "
                   f"{row['ratio_to_floor']:.2f} | {row['ratio_to_floor_cpu']:.2f} |")


def markdown_table(result: dict) -> str:
    """The measured table, markdown."""
    lines = [_floor_line(f) for f in result["floors"]]
    lines += [
        "",
        "| threads | d | N = M | method | s / gradient | peak extra MiB | GFLOP/s | x floor "
        "| x floor (CPU time) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    lines += [_row_markdown(r) for r in result["rows"]]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
