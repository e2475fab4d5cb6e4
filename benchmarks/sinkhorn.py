"""Benchmark: the Sinkhorn-divergence gradient, flowkit's two policies against GeomLoss.

Data: ``y`` 8 gaussians mapped into the unit square, ``x`` uniform in it, N = M, d = 2,
float32 on CPU (one thread for every method: on a shared machine a second OpenMP thread
made every method up to 10x slower, measured), cost ``|x - y|^2 / 2`` and ``eps = blur^2``
(GeomLoss' conventions for ``p = 2``). Methods, each row in its own subprocess (so its
peak memory is its own):

* flowkit ``policy="converge"`` (the defaults, ``tol=1e-6``, ``max_iter=1000``), dense and
  ``scheme="multiscale"``;
* flowkit ``policy="geomloss"`` at each ``--scalings`` (one iteration per eps level),
  dense and ``scheme="multiscale"``;
* GeomLoss ``SamplesLoss("sinkhorn", p=2, blur, scaling)`` with ``backend="tensorized"``
  and, where pykeops is importable, ``"online"`` and ``"multiscale"``, at each scaling;
  gradient by autograd times N.

``seconds`` is the best of ``--repeats`` calls (``cpu_seconds`` its process time, all
threads; ``OMP_NUM_THREADS`` is set to ``--threads`` in each row's process, since KeOps'
CPU reductions otherwise take every core) (one call from N = 5000 on) after a warm-up
on 200 points (KeOps compiles its formulas then); ``peak_mb`` is the rise of the
subprocess' peak resident memory (``getrusage``) over its level after the warm-up.
``grad_rel_error`` is ``|g - g_ref| / |g_ref|`` against a converged reference: flowkit in
float64 (``tol=1e-10``, torch backend) where N is at most ``--ref-float64-max``, else
flowkit native float32 (``tol=1e-7``, ``max_iter=3000``) up to ``--ref-max``, else flowkit
native float32 multiscale (``tol=1e-7``, ``truncate=20``) up to ``--ref-multiscale-max``;
each reference's cost is in the JSON, and so is each cheaper reference's own error against
the more accurate one where both run. The dense converge policy runs up to
``--converge-max``, GeomLoss tensorized and online up to ``--dense-geomloss-max``;
``--methods`` keeps the methods whose name contains one of its words.
``--part accuracy`` measures the solver settings at N = 500 against float64 solves.

    python benchmarks/sinkhorn.py --sizes 1000 2000 5000 20000 --blurs 0.1
    nice -n 19 python benchmarks/sinkhorn.py --part accuracy
    # N = 20000 against GeomLoss multiscale and online, a few minutes (online: 6 of them)
    nice -n 19 python benchmarks/sinkhorn.py --sizes 20000 --blurs 0.1 --scalings 0.5 0.9 \
        --large-scalings 0.5 0.9 --ref-float64-max 0 --ref-max 0 \
        --ref-multiscale-max 20000 --methods multiscale "online (scaling=0.5)" \
        "flowkit geomloss policy (scaling=0.5)" --out sinkhorn-multiscale-20k.json

Writes ``benchmarks/results/sinkhorn-<part>.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
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


#: the converged references: float64 dense, float32 dense (native), and float32
#: multiscale with a near-exact truncation (e^-20 per row), for the sizes the dense ones
#: cannot reach in a session
REFERENCES = {
    "f64": ("float64 torch tol=1e-10", torch.float64,
            {"tol": 1e-10, "max_iter": 200_000, "backend": "torch"}),
    "f32": ("float32 native tol=1e-7", torch.float32,
            {"tol": 1e-7, "max_iter": 3000, "backend": "native"}),
    "ms": ("float32 native multiscale tol=1e-7 truncate=20", torch.float32,
           {"tol": 1e-7, "max_iter": 3000, "scheme": "multiscale", "truncate": 20.0}),
}


def _reference(n: int, blur: float, kind: str) -> tuple[torch.Tensor, dict]:
    name, dtype, kw = REFERENCES[kind]
    x, y = _data(n, dtype)
    obj = SinkhornDivergence(y, blur=blur, warm_start=False, **kw)
    t0 = time.perf_counter()
    g = obj.functional_gradient(x).double()
    ab, aa = obj.last_results
    return g, {"kind": name, "seconds": time.perf_counter() - t0,
               "iterations": [ab.iterations, aa.iterations],
               "converged": [ab.converged, aa.converged]}


def _cached_reference(cache: Path, n: int, blur: float, kind: str
                      ) -> tuple[torch.Tensor, dict]:
    path = cache / f"ref-{n}-{blur}-{kind}.pt"
    if not path.exists():
        torch.save(_reference(n, blur, kind), path)
    return torch.load(path)


def _references(args, cache: Path, n: int, blur: float) -> tuple[torch.Tensor | None, dict]:
    """The most accurate reference this N allows, and the cheaper ones' errors against it
    where they run too (so each kind of reference is itself measured)."""
    kinds = [k for k, top in (("f64", args.ref_float64_max), ("f32", args.ref_max),
                              ("ms", args.ref_multiscale_max)) if n <= top]
    if not kinds:
        return None, {}
    ref, info = _cached_reference(cache, n, blur, kinds[0])
    for kind in kinds[1:]:
        g, i = _cached_reference(cache, n, blur, kind)
        info = {**info, f"{kind}_reference": i,
                f"{kind}_reference_error": float((g - ref).norm() / ref.norm())}
    return ref, info


def _flowkit(x, y, blur, **kw):
    obj = SinkhornDivergence(y, blur=blur, warm_start=False, **kw)
    t0, c0 = time.perf_counter(), time.process_time()
    g = obj.functional_gradient(x)
    dt = time.perf_counter() - t0
    res = obj.last_results[0]
    info = {"iterations": res.iterations, "marginal_error": res.marginal_error,
            "cpu_seconds": time.process_time() - c0}
    if res.multiscale is not None:
        # checked "x": marginal_error is the particles' side only (functional_gradient)
        info.update(kept_fraction=res.multiscale.kept_fraction,
                    coarse_iterations=res.multiscale.coarse_iterations,
                    clusters=list(res.multiscale.clusters), checked=res.multiscale.checked)
    return g, dt, info


def _geomloss(x, y, blur, backend, scaling):
    from geomloss import SamplesLoss

    loss = SamplesLoss("sinkhorn", p=2, blur=blur, scaling=scaling, debias=True,
                       backend=backend)
    z = x.clone().requires_grad_(True)
    t0, c0 = time.perf_counter(), time.process_time()
    (dz,) = torch.autograd.grad(loss(z, y), z)
    return len(x) * dz, time.perf_counter() - t0, {"cpu_seconds": time.process_time() - c0}


def _run(spec: dict):
    x, y = _data(spec["n"], torch.float32)
    if spec["lib"] == "flowkit":
        return _flowkit(x, y, spec["blur"], **spec["kw"])
    return _geomloss(x, y, spec["blur"], spec["backend"], spec["scaling"])


def _cell(spec: dict) -> None:
    """One row, in this (sub)process: warm-up, timed calls, peak memory, gradient saved."""
    torch.set_num_threads(spec["threads"])
    _run({**spec, "n": 200})
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    best, out = float("inf"), None
    for _ in range(spec["repeats"]):
        g, dt, info = _run(spec)
        if dt < best:
            best, out = dt, (g, info)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    torch.save(out[0].detach().double(), spec["grad_path"])
    print(json.dumps({"seconds": best, "peak_mb": (peak - base) / 1024, **out[1]}))


def _keops() -> str | None:
    """None if pykeops imports here, else why not."""
    try:
        import pykeops  # noqa: F401
    except Exception as err:  # an import error or a failed compiler check
        return f"{type(err).__name__}: {err}"
    return None


def _methods(args) -> list[dict]:
    out = [{"method": "flowkit converge (tol=1e-6)", "lib": "flowkit", "kw": {}},
           {"method": "flowkit multiscale converge (tol=1e-6)", "lib": "flowkit",
            "kw": {"scheme": "multiscale"}}]
    out += [{"method": f"flowkit {scheme}geomloss policy (scaling={s})", "lib": "flowkit",
             "kw": {"policy": "geomloss", "scaling": s, **kw}, "scaling": s}
            for s in args.scalings
            for scheme, kw in (("", {}), ("multiscale ", {"scheme": "multiscale"}))]
    out += [{"method": f"GeomLoss {b} (scaling={s})", "lib": "geomloss", "backend": b,
             "scaling": s} for b in ("tensorized", "online", "multiscale")
            for s in args.scalings]
    return out


def speed(args) -> list[dict]:
    load = os.getloadavg()
    keops_missing = _keops()
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    rows = []
    for blur in args.blurs:
        for n in args.sizes:
            ref, ref_info = _references(args, cache, n, blur)
            if ref is not None:
                print(f"N={n} blur={blur} reference: {ref_info}", flush=True)
            group = []
            for m in _methods(args):
                row = {"n": n, "blur": blur, "method": m["method"]}
                if args.methods and not any(k in m["method"] for k in args.methods):
                    continue
                if m.get("backend") in ("online", "multiscale") and keops_missing:
                    group.append({**row, "skipped": f"pykeops not importable: {keops_missing}"})
                    continue
                if m["lib"] == "flowkit" and m["kw"].get("policy") is None \
                        and m["kw"].get("scheme") is None and n > args.converge_max:
                    group.append({**row, "skipped": f"not run above N = {args.converge_max}"})
                    continue
                if m.get("backend") in ("tensorized", "online") and n > args.dense_geomloss_max:
                    group.append({**row, "skipped": f"not run above N = "
                                                    f"{args.dense_geomloss_max}"})
                    continue
                if m.get("scaling") is not None and n >= args.large \
                        and m["scaling"] not in args.large_scalings:
                    continue
                spec = {**m, "n": n, "blur": blur, "threads": args.threads,
                        "repeats": 1 if n >= 5000 else args.repeats,
                        "grad_path": str(cache / "grad.pt")}
                # KeOps' CPU reductions run on OpenMP threads: pinned like torch's, so that
                # every method runs on --threads threads
                proc = subprocess.run([sys.executable, __file__, "--cell", json.dumps(spec)],
                                      capture_output=True, text=True,
                                      env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
                if proc.returncode != 0:
                    group.append({**row, "skipped": f"failed: {proc.stderr.strip()[-300:]}"})
                    print(group[-1], flush=True)
                    continue
                res = json.loads(proc.stdout.strip().splitlines()[-1])
                if ref is not None:
                    g = torch.load(spec["grad_path"])
                    res["grad_rel_error"] = float((g - ref).norm() / ref.norm())
                group.append({**row, **res, "scaling": m.get("scaling"),
                              "reference": ref_info})
                print(group[-1]["method"], {k: v for k, v in res.items()}, flush=True)
            for base in ("tensorized", "multiscale"):
                ref_s = {r["scaling"]: r["seconds"] for r in group
                         if r["method"].startswith(f"GeomLoss {base}") and "seconds" in r}
                for r in group:
                    if "seconds" not in r:
                        continue
                    # against GeomLoss at the same scaling (the same iterations); the
                    # converge policy against the most accurate GeomLoss run (largest
                    # scaling)
                    s = r["scaling"] if r.get("scaling") is not None \
                        else max(ref_s, default=None)
                    if s in ref_s:
                        r[f"ratio_to_{base}"] = r["seconds"] / ref_s[s]
            rows += group
            _write(args, rows, load)  # what is measured so far survives an interruption
    return rows


def accuracy(args) -> list[dict]:
    x, y = _data(500, torch.float64)
    rows = []
    for blur in (0.1, 0.05):
        ref, _ = _reference(500, blur, "f64")
        for kw in ({"tol": 1e-5, "max_iter": 100}, {}, {"tol": 1e-7, "max_iter": 10_000},
                   {"policy": "geomloss", "scaling": 0.5},
                   {"policy": "geomloss", "scaling": 0.9}):
            g, dt, info = _flowkit(x, y, blur, **kw)
            rows.append({"n": 500, "blur": blur, "settings": kw or "defaults", "seconds": dt,
                         "grad_rel_error": float((g.double() - ref).norm() / ref.norm()),
                         **info})
    return rows


def _table(rows: list[dict], keys: list[str]) -> None:
    print("| " + " | ".join(keys) + " |")
    print("| --- " * len(keys) + "|")
    for r in rows:
        cells = []
        for k in keys:
            v = r.get(k, r.get("skipped", "") if k == "seconds" else "")
            cells.append(f"{v:.3g}" if isinstance(v, float) else str(v))
        print("| " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("speed", "accuracy"), default="speed")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000, 5000, 20000])
    parser.add_argument("--blurs", type=float, nargs="+", default=[0.1])
    parser.add_argument("--scalings", type=float, nargs="+", default=[0.5, 0.9])
    parser.add_argument("--large", type=int, default=20000,
                        help="from this N on, only --large-scalings (and one call per row)")
    parser.add_argument("--large-scalings", type=float, nargs="+", default=[0.5])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--ref-float64-max", type=int, default=2000)
    parser.add_argument("--ref-max", type=int, default=5000)
    parser.add_argument("--converge-max", type=int, default=5000,
                        help="the dense converge policy runs up to this N")
    parser.add_argument("--ref-multiscale-max", type=int, default=0,
                        help="the multiscale float32 reference up to this N (above "
                        "--ref-max it is the reference)")
    parser.add_argument("--dense-geomloss-max", type=int, default=10**9,
                        help="GeomLoss tensorized and online run up to this N (tensorized "
                        "holds 12 GB at N = 20000)")
    parser.add_argument("--methods", nargs="+",
                        help="run only the methods whose name contains one of these")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache", default=os.path.join(os.environ.get("TMPDIR", "/tmp"),
                                                        "flowkit-sinkhorn-bench"),
                        help="where references and gradients are kept between rows")
    parser.add_argument("--out", help="JSON file name in benchmarks/results/ (default "
                        "sinkhorn-<part>.json)")
    parser.add_argument("--cell", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cell:
        _cell(json.loads(args.cell))
        return
    torch.set_num_threads(args.threads)
    load = os.getloadavg()
    rows = {"speed": speed, "accuracy": accuracy}[args.part](args)
    if args.part == "speed":
        _table(rows, ["n", "blur", "method", "seconds", "cpu_seconds", "ratio_to_tensorized",
                      "ratio_to_multiscale", "grad_rel_error", "peak_mb", "iterations",
                      "kept_fraction"])
    else:
        _table(rows, [k for k in rows[0] if not isinstance(rows[0][k], dict)])
    print(f"wrote {_write(args, rows, load)}")


def _write(args, rows: list[dict], load: tuple[float, ...]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / (args.out or f"sinkhorn-{args.part}.json")
    out.write_text(json.dumps({"threads": args.threads, "load_average_start": load,
                               "load_average_end": os.getloadavg(),
                               "argv": sys.argv[1:], "rows": rows}, indent=1, default=str))
    return out


if __name__ == "__main__":
    main()
