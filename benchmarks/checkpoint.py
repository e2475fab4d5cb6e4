"""Cost of checkpointing a long run, with and without its layers, before vs after.

Before the append-only layer store, every checkpoint of a run with ``keep_layers=True``
rewrote the whole stack, so checkpointing a T-step run cost O(T^2). Now each checkpoint
writes the small main file plus only the layers added since the previous one.

    python benchmarks/checkpoint.py                       # this checkout only
    python benchmarks/checkpoint.py --before SRC          # also a "before" checkout

``SRC`` is a directory holding an older ``flowkit`` package (e.g. made with
``git archive <commit> flowkit | tar -x -C SRC``); it runs in a subprocess. Output: a table
and ``benchmarks/results/checkpoint-<device>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

CASE = """
import json, sys, tempfile, time, warnings, torch
import flowkit as fk
n, steps, every, keep, ck = (int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]),
                             sys.argv[4] == "1", sys.argv[5] == "1")
torch.set_num_threads(1)
y = fk.datasets.eight_gaussians(n, seed=0)
x0 = 0.5 * torch.randn(n, 2, generator=torch.Generator().manual_seed(1))
flow = fk.FunctionalGradientDescent(fk.objectives.MMD(y, fk.kernels.Gaussian(0.5)), 0.5,
                                    progress=False, keep_layers=keep)
with tempfile.TemporaryDirectory() as d:
    kw = dict(checkpoint=d + "/run.ckpt", checkpoint_every=every) if ck else {}
    t0 = time.perf_counter()
    flow.run(x0, steps, **kw)
    wall = time.perf_counter() - t0
    size = sum(f.stat().st_size for f in __import__("pathlib").Path(d).rglob("*") if f.is_file())
print(json.dumps({"wall_s": wall, "bytes_on_disk": size}))
"""


def _case(src: str, n: int, steps: int, every: int, keep: bool, ck: bool) -> dict:
    env = {**os.environ, "PYTHONPATH": src}
    # run from the source dir: "python -c" puts the working directory first on sys.path
    out = subprocess.run([sys.executable, "-c", CASE, str(n), str(steps), str(every),
                          str(int(keep)), str(int(ck))], env=env, capture_output=True,
                         text=True, check=True, cwd=src)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--particles", type=int, default=200)
    parser.add_argument("--every", type=int, default=50, help="checkpoint_every (default 50)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--before", default=None, help="source dir of an older flowkit")
    args = parser.parse_args()
    here = str(Path(__file__).resolve().parents[1])
    sources = [("after", here)] + ([("before", args.before)] if args.before else [])
    rows = []
    for label, src in sources:
        for keep in (False, True):
            for ck in (False, True):
                runs = [_case(src, args.particles, args.steps, args.every, keep, ck)
                        for _ in range(args.repeats)]
                best = min(runs, key=lambda r: r["wall_s"])
                rows.append({"version": label, "keep_layers": keep, "checkpoint": ck,
                             **best})
    print(f"T = {args.steps} steps, N = {args.particles} particles, MMD (Gaussian 0.5), "
          f"checkpoint_every = {args.every}, best of {args.repeats}, 1 thread")
    print(f"{'version':8} {'keep_layers':>11} {'checkpoint':>10} {'wall (s)':>9} {'disk':>10}")
    for r in rows:
        print(f"{r['version']:8} {str(r['keep_layers']):>11} {str(r['checkpoint']):>10} "
              f"{r['wall_s']:9.2f} {r['bytes_on_disk'] / 2**20:8.2f} MiB")
    out = Path(__file__).parent / "results" / "checkpoint-cpu.json"
    out.write_text(json.dumps({"config": vars(args), "machine": platform.platform(),
                               "python": sys.version.split()[0],
                               "timestamp": time.strftime("%Y-%m-%d %H:%M:%S UTC",
                                                          time.gmtime()),
                               "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
