"""Cost of the objectives' input validation relative to one step of the MMD flow.

Times, at ``N = M = 1000`` particles and target points in 2-D (Gaussian kernel, CPU
float32 unless ``--device``/``--dtype`` say otherwise):

* ``validate(x)``: the full check (type, shape, event shape, dtype, device, finiteness);
* ``first_variation(x).grad(x)``: the engine's per-step work (validate without the
  finiteness reduction, plus the witness gradient);
* the same witness gradient with no validation at all.

Prints a table and writes ``benchmarks/results/validation_objectives.json``::

    python benchmarks/validation_objectives.py
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

import flowkit as fk

RESULTS = Path(__file__).resolve().parent / "results"


def _interleaved_medians(fns: dict, repeats: int, inner: int) -> dict[str, float]:
    """Median seconds per call of each function, timed round-robin so that the load of a
    shared machine drifts over all of them alike."""
    for fn in fns.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            times[name].append((time.perf_counter() - t0) / inner)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--inner", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    y = torch.randn(args.n, 2, generator=g).to(args.device)
    x = (torch.randn(args.n, 2, generator=g) + 1.0).to(args.device)
    obj = fk.objectives.MMD(y, fk.kernels.Gaussian(1.0))
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)

    def unchecked():
        obj._witness(x).grad(x)
        sync()

    def engine_step():
        obj.first_variation(x).grad(x)
        sync()

    def full():
        obj.functional_gradient(x)
        sync()

    rows = _interleaved_medians({
        "validate (full)": lambda: obj.validate(x),
        "witness gradient, unchecked": unchecked,
        "first_variation(x).grad(x)": engine_step,
        "functional_gradient(x)": full,
    }, args.repeats, args.inner)
    base = rows["witness gradient, unchecked"]
    print(f"MMD, N = M = {args.n}, d = 2, {x.device} {x.dtype}, "
          f"{torch.get_num_threads()} threads")
    print(f"{'':32s} {'seconds':>10s} {'vs unchecked':>14s}")
    for name, sec in rows.items():
        print(f"{name:32s} {sec:10.2e} {100 * (sec - base) / base:+13.2f}%")
    print(f"validate (full) / unchecked step: {100 * rows['validate (full)'] / base:.2f}%")
    RESULTS.mkdir(exist_ok=True)
    out = {"n": args.n, "device": str(x.device), "threads": torch.get_num_threads(),
           "torch": torch.__version__, "machine": platform.machine(), "seconds": rows,
           "validate_fraction": rows["validate (full)"] / base}
    (RESULTS / "validation_objectives.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
