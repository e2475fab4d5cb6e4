"""What the input validation of the kernel reductions costs next to the reductions.

``kernel_sum``, ``kernel_grad_sum`` and ``mmd2`` validate their inputs once, when they build
their :class:`flowkit.geometry.PointCloud` (types, shapes, dtype, device, emptiness,
finiteness of ``x``, ``y`` and the weights: O((N + M) d) work and one device sync per
tensor). This times that construction alone against the whole call, at N = M = 1000.

    nice -n 19 python benchmarks/validation_reductions.py     # prints a table, writes JSON

Output: ``benchmarks/results/validation_reductions.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

import flowkit as fk
from flowkit.geometry import PointCloud


def _best(fn, repeats: int, inner: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        best = min(best, (time.perf_counter() - t0) / inner)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    rows = []
    for dtype, d, backend in [(torch.float32, 2, "auto"), (torch.float32, 2, "torch"),
                              (torch.float64, 2, "torch"), (torch.float32, 64, "auto")]:
        x = torch.randn(args.n, d, generator=g).to(dtype)
        y = torch.randn(args.n, d, generator=g).to(dtype)
        w = torch.full((args.n,), 1.0 / args.n, dtype=dtype)
        k = fk.kernels.Gaussian(1.0)
        kw = {"x": x, "y": y, "k": k, "w": w, "backend": backend}

        def call(x, y, k, w, backend):
            return fk.kernels.kernel_grad_sum(x, y, k, w, backend=backend)

        def checks_only(x, y, k, w, backend):
            return PointCloud(x, y, b=w, kernel=k, backend=backend)

        full = _best(lambda kw=kw: call(**kw), args.repeats, 3)
        checks = _best(lambda kw=kw: checks_only(**kw), args.repeats, 50)
        rows.append({"dtype": str(dtype).replace("torch.", ""), "d": d, "backend": backend,
                     "n": args.n, "call_ms": 1e3 * full, "validation_ms": 1e3 * checks,
                     "overhead_pct": 100 * checks / full})
    print(f"{'dtype':8} {'d':>3} {'backend':8} {'call ms':>9} {'checks ms':>10} {'share':>7}")
    for r in rows:
        print(f"{r['dtype']:8} {r['d']:3d} {r['backend']:8} {r['call_ms']:9.3f} "
              f"{r['validation_ms']:10.4f} {r['overhead_pct']:6.2f}%")
    out = Path(__file__).parent / "results" / "validation_reductions.json"
    out.write_text(json.dumps({"machine": platform.processor() or platform.machine(),
                               "threads": args.threads, "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
