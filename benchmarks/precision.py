"""float32 against float64: the MMD functional gradient with the particles far from the target.

For each shift ``s`` the particles are ``x + s`` (rounded to float32 once: both runs see the
same inputs), the target ``y``; the relative error of the float32 gradient
``MMD(y).functional_gradient(x + s)`` against the float64 one, for the torch and the auto
(native where it applies) backends. Also the float64 ``mmd2`` of two samples moved together
to ``1e9``.

    nice -n 19 python benchmarks/precision.py        # prints a table, writes JSON

Output: ``benchmarks/results/precision.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

import flowkit as fk


def main() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 2, generator=g)
    y = torch.randn(400, 2, generator=g) + 0.5
    rows = []
    for kernel in (fk.kernels.Gaussian(1.0), fk.kernels.InverseMultiquadric(1.0)):
        for shift in (1e0, 1e1, 1e2, 1e3, 3e3, 1e4):
            xs = x + shift
            want = fk.objectives.MMD(y.double(), kernel).functional_gradient(xs.double())
            row = {"kernel": repr(kernel), "shift": shift}
            for backend in ("torch", "auto"):
                got = fk.objectives.MMD(y, kernel, backend=backend).functional_gradient(xs)
                row[backend] = float((got.double() - want).norm() / want.norm())
            rows.append(row)
    xd, yd = x.double(), y.double()
    k = fk.kernels.Gaussian(1.0)
    ref = float(fk.kernels.mmd2(xd, yd, k))
    far = float(fk.kernels.mmd2(xd + 1e9, yd + 1e9, k))
    print(f"{'kernel':44} {'shift':>7} {'torch':>9} {'auto':>9}")
    for r in rows:
        print(f"{r['kernel']:44} {r['shift']:7.0e} {r['torch']:9.1e} {r['auto']:9.1e}")
    print(f"float64 mmd2 at 1e9: relative error {abs(far - ref) / ref:.1e}")
    out = Path(__file__).parent / "results" / "precision.json"
    out.write_text(json.dumps({"gradient_rel_error": rows,
                               "mmd2_float64_1e9_rel_error": abs(far - ref) / ref}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
