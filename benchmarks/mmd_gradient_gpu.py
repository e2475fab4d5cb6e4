r"""Benchmark (GPU): one MMD gradient step, flowkit Triton vs flowkit torch vs KeOps vs GeomLoss.

The quantity is the MMD functional gradient of ``N`` particles against ``M = N`` target
points (Gaussian kernel, bandwidth ``h``, float32): flowkit's closed form
:math:`2\sum_j w_j \nabla_1 k(x_i, p_j)` over the stacked points ``p = [x; y]`` with
weights ``2/N`` and ``-2/M``, computed by

* ``flowkit-triton``: :func:`flowkit.triton_kernels.triton_kernel_grad_sum` (fused);
* ``flowkit-torch``: :func:`flowkit.kernels.kernel_grad_sum` with ``backend="torch"``
  (blocked, writes every block to memory);
* ``flowkit-keops``: the same with ``backend="keops"`` (needs pykeops);
* ``geomloss-online``: autograd of GeomLoss ``SamplesLoss("gaussian", backend="online")``
  (needs geomloss + pykeops).

Times are the minimum over repeats after one warm-up (CUDA synchronised around each). The
first 2048 rows of each method's gradient are compared with the torch path in float64.
Target from the issue: ``N = M = 1M, d = 2`` in under one second on an H100/H200.

Usage::

    python benchmarks/mmd_gradient_gpu.py                       # CUDA, the full table
    python benchmarks/mmd_gradient_gpu.py --sizes 65536 --dims 2 64
    TRITON_INTERPRET=1 python benchmarks/mmd_gradient_gpu.py --device cpu --sizes 256 \
        --dims 2 --reps 1                                       # smoke test of the script

Writes ``benchmarks/results/mmd_gradient_gpu-<timestamp>.json`` and prints a markdown
table. Not yet run on a GPU: no device was available when it was written.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ["flowkit-triton", "flowkit-torch", "flowkit-keops", "geomloss-online"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _gradient_fn(method: str, x, y, h: float):
    """A zero-argument callable computing the gradient, or a string saying why not."""
    import flowkit as fk
    from flowkit import triton_kernels as tk

    kernel = fk.kernels.Gaussian(h)
    n, m = x.shape[0], y.shape[0]
    pts = torch.cat([x, y])
    w = torch.cat([x.new_full((n,), 2.0 / n), y.new_full((m,), -2.0 / m)])
    if method == "flowkit-triton":
        why = tk.triton_applicable(x, pts, kernel, w)
        return why or (lambda: tk.triton_kernel_grad_sum(x, pts, kernel, w))
    if method == "flowkit-torch":
        return lambda: fk.kernels.kernel_grad_sum(x, pts, kernel, w, backend="torch")
    if method == "flowkit-keops":
        try:
            import pykeops  # noqa: F401
        except ImportError:
            return "pykeops is not installed (pip install 'flowkit[keops]')"
        return lambda: fk.kernels.kernel_grad_sum(x, pts, kernel, w, backend="keops")
    try:
        import pykeops  # noqa: F401
        from geomloss import SamplesLoss
    except ImportError:
        return "geomloss or pykeops is not installed (pip install 'flowkit[bench,keops]')"
    loss = SamplesLoss("gaussian", blur=h, backend="online")

    def geomloss_grad():
        z = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(loss(z, y), z)
        return g

    return geomloss_grad


def run(method: str, n: int, d: int, reps: int, device: torch.device) -> dict:
    import flowkit as fk

    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(n, d, generator=g).to(device)
    y = (torch.randn(n, d, generator=g) + 0.5).to(device)
    h = float(d) ** 0.5
    fn = _gradient_fn(method, x, y, h)
    if isinstance(fn, str):
        return {"method": method, "N": n, "d": d, "skipped": fn}
    try:
        out = fn()  # warm-up (compilation)
        times = []
        for _ in range(reps):
            _sync(device)
            t0 = time.perf_counter()
            out = fn()
            _sync(device)
            times.append(time.perf_counter() - t0)
    except (RuntimeError, MemoryError) as err:  # e.g. out of memory at 1M: record it
        return {"method": method, "N": n, "d": d, "skipped": f"{type(err).__name__}: {err}"}
    k = min(n, 2048)
    ref = fk.kernels.kernel_grad_sum(x[:k].double(), torch.cat([x, y]).double(),
                                     fk.kernels.Gaussian(h),
                                     torch.cat([x.new_full((n,), 2.0 / n),
                                                y.new_full((n,), -2.0 / n)]).double(),
                                     backend="torch")
    scale = float(ref.abs().max())
    err = None
    if method != "geomloss-online":  # GeomLoss's loss is MMD^2 / 2 with its own scaling
        err = float((out[:k].double() - ref).abs().max()) / scale
    return {"method": method, "N": n, "d": d, "seconds": min(times),
            "max_rel_error_vs_float64": err}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--sizes", type=int, nargs="+", default=[65536, 262144, 1048576])
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 64])
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this benchmark needs a GPU (or --device cpu with "
                         "TRITON_INTERPRET=1 and tiny --sizes, as a smoke test)")
    rows = [run(m, n, d, args.reps, device)
            for d in args.dims for n in args.sizes for m in args.methods]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    print(f"MMD gradient, float32, Gaussian h = sqrt(d), on {name}\n")
    print("| d | N = M | method | seconds | max rel. error |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        if "skipped" in r:
            print(f"| {r['d']} | {r['N']} | {r['method']} | skipped: {r['skipped'][:80]} | |")
        else:
            e = r["max_rel_error_vs_float64"]
            print(f"| {r['d']} | {r['N']} | {r['method']} | {r['seconds']:.4f} | "
                  f"{'-' if e is None else f'{e:.1e}'} |")
    RESULTS.mkdir(exist_ok=True)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    path = RESULTS / f"mmd_gradient_gpu-{stamp}.json"
    path.write_text(json.dumps({"device": name, "torch": torch.__version__,
                                "args": vars(args), "rows": rows}, indent=2) + "\n")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
