"""Wall time of the whole ``flowkit reproduce toy`` command: sequential vs two processes.

Runs the command as a user would (a fresh ``python -m flowkit`` each time, so imports,
monitors, Algorithm 2, the exact OT and the figures all count) with ``--sequential`` (the
old path: the WGAN-GP baseline after Algorithm 1, in one process, torch's default threads)
and without it (the default: the baseline and the reference distances in a second process
beside Algorithm 1, the cores shared out between the two). Both paths run in the same
invocation of this script, alternating, so they see the same machine. For each run it
records the wall time, the CPU time of the command and its children, the load average
before and after, and the command's own timings of the two methods; it checks that both
paths wrote the same ``results.json`` (all numbers bit for bit, wall times aside).

Prints a table and writes ``benchmarks/results/toy_wall.json``::

    python benchmarks/toy_wall.py                      # 25 gaussians, paper settings, 1 repeat
    python benchmarks/toy_wall.py --repeats 3          # medians over 3 runs of each path
    python benchmarks/toy_wall.py --steps 5 --critic-steps 10   # a smoke run

On a machine shared with other jobs the wall times measure the machine as much as the
command: read them next to the load average (a quiet 2-core machine has a load below 1).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]
# timings inside results.json; everything else must agree between the two paths
TIMING = {"wall_time", "elapsed", "generation_seconds", "seconds_per_1000_samples_per_layer",
          "ot_seconds"}
PATHS = {"sequential": ["--sequential"], "two processes": []}


def _numbers(x: object) -> object:
    """``results.json`` without its timings and its configuration."""
    if isinstance(x, dict):
        return {k: _numbers(v) for k, v in x.items() if k not in TIMING and k != "config"}
    if isinstance(x, list):
        return [_numbers(v) for v in x]
    return x


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_once(args: list[str], out: Path) -> dict:
    """One command: wall and CPU seconds, load averages, the command's own timings."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    command = [sys.executable, "-m", "flowkit", "reproduce", "toy", *args, "--no-progress",
               "--out", str(out)]
    load_before, cpu_before = os.getloadavg()[0], _children_cpu()
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    cpu = _children_cpu() - cpu_before
    (folder,) = out.iterdir()
    results = json.loads((folder / "results.json").read_text())
    config = json.loads((folder / "config.json").read_text())["config"]
    return {"wall_seconds": wall, "cpu_seconds": cpu, "load_before": load_before,
            "load_after": os.getloadavg()[0],
            "algorithm1_seconds": results["algorithm1"]["wall_time"],
            "wgan_gp_seconds": results.get("wgan_gp", {}).get("wall_time"),
            "threads": config["threads"], "processes": config.get("processes", 1),
            "_numbers": _numbers(results)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="25gaussians")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--steps", type=int, default=None, help="outer steps T (default 100)")
    parser.add_argument("--critic-steps", type=int, default=None, help="T_0 (default the paper's)")
    parser.add_argument("--out", default=str(RESULTS / "toy_wall.json"))
    args = parser.parse_args()
    common = ["--dataset", args.dataset]
    if args.steps is not None:
        common += ["--steps", str(args.steps)]
    if args.critic_steps is not None:
        common += ["--critic-steps", str(args.critic_steps)]

    runs: dict[str, list[dict]] = {name: [] for name in PATHS}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            for name, extra in PATHS.items():
                out = Path(tmp) / f"{i}-{extra[0][2:] if extra else 'parallel'}"
                out.mkdir()
                runs[name].append(run_once(common + extra, out))
                r = runs[name][-1]
                print(f"  {name}, run {i + 1}: {r['wall_seconds']:.1f} s wall, "
                      f"{r['cpu_seconds']:.1f} s CPU, load {r['load_before']:.1f} -> "
                      f"{r['load_after']:.1f}", flush=True)
    reference = runs["sequential"][0]["_numbers"]
    same = all(r.pop("_numbers") == reference for rs in runs.values() for r in rs)

    def median(name: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[name])

    print(f"\nflowkit reproduce toy {' '.join(common)}: {args.repeats} run(s) of each path, "
          f"{os.cpu_count()} CPUs, torch threads per process as the command chose")
    print("| path | processes x threads | wall (median) | CPU | Alg. 1 | WGAN-GP | load avg "
          "(before -> after, per run) |")
    print("|---|---|---:|---:|---:|---:|---|")
    for name, rs in runs.items():
        loads = ", ".join(f"{r['load_before']:.1f} -> {r['load_after']:.1f}" for r in rs)
        print(f"| {name} | {rs[0]['processes']} x {rs[0]['threads']} | "
              f"{median(name, 'wall_seconds'):.1f} s | {median(name, 'cpu_seconds'):.1f} s | "
              f"{median(name, 'algorithm1_seconds'):.1f} s | "
              f"{median(name, 'wgan_gp_seconds'):.1f} s | {loads} |")
    ratio = median("sequential", "wall_seconds") / median("two processes", "wall_seconds")
    print(f"\nspeed-up of the whole command: {ratio:.2f}x; results.json identical "
          f"(wall times aside): {same}")

    record = {
        "command": "python benchmarks/toy_wall.py " + " ".join(sys.argv[1:]),
        "flowkit_command": "flowkit reproduce toy " + " ".join(common) + " [--sequential]",
        "python": platform.python_version(), "cpu_count": os.cpu_count(),
        "machine": platform.machine(), "runs": runs,
        "median_wall_seconds": {name: median(name, "wall_seconds") for name in runs},
        "speedup": ratio, "results_identical": same,
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"written to {out}")
    if not same:
        sys.exit("the two paths disagree: results.json differs beyond its wall times")


if __name__ == "__main__":
    main()
