"""Benchmark: the Sinkhorn-divergence gradient, flowkit's two policies against GeomLoss.

Data: ``y`` 8 gaussians mapped into the unit square, ``x`` uniform in it, N = M, d = 2,
float32 on CPU, ``blur`` 0.1 (``eps = blur^2``, cost ``|x - y|^2 / 2``: GeomLoss'
conventions for ``p = 2``). Methods, in one run on the same threads:

* flowkit ``policy="converge"`` (the defaults, ``tol=1e-6``, ``max_iter=1000``);
* flowkit ``policy="geomloss"`` (``scaling=0.5``, GeomLoss' default);
* GeomLoss ``SamplesLoss("sinkhorn", p=2, blur, scaling=0.5, backend="tensorized")``,
  gradient by autograd times N;
* GeomLoss ``multiscale`` and ``online`` need pykeops (not installable here): reported as
  such, not run.

The gradient's relative error is against a converged float64 flowkit solve
(``tol=1e-10``) where N is at most ``--ref-max`` (the reference costs hundreds of
iterations). ``--part accuracy`` instead measures the solver settings at N = 500 for
blurs 0.1 and 0.05 against converged float64 solves (minutes).

    nice -n 19 python benchmarks/sinkhorn.py --sizes 1000 5000
    nice -n 19 python benchmarks/sinkhorn.py --part accuracy

Writes ``benchmarks/results/sinkhorn-<part>.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import flowkit as fk
from flowkit.objectives import SinkhornDivergence

RESULTS = Path(__file__).resolve().parent / "results"


def _data(n: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    y = fk.datasets.eight_gaussians(n, seed=0, dtype=torch.float64)
    y = (y - y.amin(0)) / (y.amax(0) - y.amin(0))
    x = torch.rand(n, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return x.to(dtype), y.to(dtype)


def _reference(x: torch.Tensor, y: torch.Tensor, blur: float) -> torch.Tensor:
    obj = SinkhornDivergence(y.double(), blur=blur, tol=1e-10, max_iter=200_000,
                             warm_start=False)
    return obj.functional_gradient(x.double())


def _flowkit(x, y, blur, **kw):
    obj = SinkhornDivergence(y, blur=blur, warm_start=False, **kw)
    t0 = time.perf_counter()
    g = obj.functional_gradient(x)
    dt = time.perf_counter() - t0
    res = obj.last_results[0]
    return g, dt, {"iterations": res.iterations, "marginal_error": res.marginal_error}


def _geomloss(x, y, blur, backend):
    from geomloss import SamplesLoss

    loss = SamplesLoss("sinkhorn", p=2, blur=blur, scaling=0.5, debias=True, backend=backend)
    z = x.clone().requires_grad_(True)
    t0 = time.perf_counter()
    (dz,) = torch.autograd.grad(loss(z, y), z)
    return len(x) * dz, time.perf_counter() - t0, {}


def _rel(g, ref):
    return None if ref is None else float((g.double() - ref).norm() / ref.norm())


def speed(args) -> list[dict]:
    rows = []
    for n in args.sizes:
        x, y = _data(n, torch.float32)
        ref = _reference(x, y, args.blur) if n <= args.ref_max else None
        cells = {
            "flowkit converge (tol=1e-6)": lambda x=x, y=y: _flowkit(x, y, args.blur),
            "flowkit geomloss policy (scaling=0.5)": lambda x=x, y=y: _flowkit(
                x, y, args.blur, policy="geomloss", scaling=0.5),
            "GeomLoss tensorized (scaling=0.5)": lambda x=x, y=y: _geomloss(
                x, y, args.blur, "tensorized"),
        }
        times = {}
        for name, fn in cells.items():
            best, out = float("inf"), None
            for _ in range(args.repeats):
                g, dt, info = fn()
                if dt < best:
                    best, out = dt, (g, info)
            times[name] = best
            rows.append({"n": n, "method": name, "seconds": best,
                         "grad_rel_error": _rel(out[0], ref), **out[1]})
        for r in rows:
            if r["n"] == n:
                r["ratio_to_geomloss"] = r["seconds"] / times["GeomLoss tensorized (scaling=0.5)"]
        for backend in ("multiscale", "online"):
            rows.append({"n": n, "method": f"GeomLoss {backend}",
                         "skipped": "needs pykeops, which is not installable here"})
    return rows


def accuracy(args) -> list[dict]:
    x, y = _data(500, torch.float64)
    rows = []
    for blur in (0.1, 0.05):
        ref = _reference(x, y, blur)
        for kw in ({"tol": 1e-5, "max_iter": 100}, {}, {"tol": 1e-7, "max_iter": 10_000},
                   {"policy": "geomloss", "scaling": 0.5},
                   {"policy": "geomloss", "scaling": 0.9}):
            g, dt, info = _flowkit(x, y, blur, **kw)
            rows.append({"n": 500, "blur": blur, "settings": kw or "defaults", "seconds": dt,
                         "grad_rel_error": _rel(g, ref), **info})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("speed", "accuracy"), default="speed")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--blur", type=float, default=0.1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--ref-max", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = speed(args) if args.part == "speed" else accuracy(args)
    keys = [k for k in rows[0] if k != "n"] if args.part == "accuracy" else \
        ["method", "seconds", "ratio_to_geomloss", "grad_rel_error", "iterations",
         "marginal_error"]
    print("| N | " + " | ".join(keys) + " |")
    print("| --- " * (len(keys) + 1) + "|")
    for r in rows:
        cells = []
        for k in keys:
            v = r.get(k, r.get("skipped", "") if k == "seconds" else "")
            cells.append(f"{v:.3g}" if isinstance(v, float) else str(v))
        print(f"| {r['n']} | " + " | ".join(cells) + " |")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"sinkhorn-{args.part}.json"
    out.write_text(json.dumps({"threads": args.threads, "blur": args.blur, "rows": rows},
                              indent=1, default=str))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
