"""Wall and CPU time of the whole ``flowkit reproduce toy`` command, per path.

Runs the command as a user would (a fresh ``python -m flowkit`` each time, so imports,
monitors, Algorithm 2, the exact OT and the figures all count) on one or more paths:

* ``parallel``: the default (the baseline and the reference distances in a second process
  beside Algorithm 1, the cores shared out; the critic's gradient written out by hand);
* ``sequential``: ``--sequential`` (one process, the baseline after Algorithm 1);
* ``autograd``: ``--autograd-backward`` (two processes, the critic's gradient by
  autograd).

The paths of one invocation alternate, so they see the same machine. For each run it
records the wall time, the CPU time of the command and its children, the load average
before and after, the command's own wall and CPU times of the two methods (and the CPU
time per critic step), and the final W2 of both methods. Paths with the same critic
backward (``parallel`` and ``sequential``) must write the same ``results.json`` (all numbers
bit for bit, timings aside); the explicit and the autograd backward differ by rounding
only, so their final W2 are printed side by side.

Prints a table and writes ``benchmarks/results/toy_wall.json``::

    python benchmarks/toy_wall.py --paths parallel     # the default path only (the claim)
    python benchmarks/toy_wall.py                      # parallel and sequential, 1 repeat
    python benchmarks/toy_wall.py --paths parallel,autograd   # explicit vs autograd backward
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
TIMING = {"wall_time", "cpu_time", "elapsed", "generation_seconds",
          "seconds_per_1000_samples_per_layer", "ot_seconds"}
PATHS = {"parallel": [], "sequential": ["--sequential"], "autograd": ["--autograd-backward"]}
# paths whose results.json must agree bit for bit with the first of them run
SAME_NUMBERS = ("parallel", "sequential")


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
    alg1, wgan = results["algorithm1"], results.get("wgan_gp", {})
    steps = alg1["critic_steps"]
    return {"wall_seconds": wall, "cpu_seconds": cpu, "load_before": load_before,
            "load_after": os.getloadavg()[0],
            "algorithm1_seconds": alg1["wall_time"],
            "wgan_gp_seconds": wgan.get("wall_time"),
            "algorithm1_cpu_seconds": alg1.get("cpu_time"),
            "wgan_gp_cpu_seconds": wgan.get("cpu_time"),
            "algorithm1_cpu_ms_per_critic_step": 1e3 * alg1["cpu_time"] / steps
            if alg1.get("cpu_time") is not None else None,
            "final_W2": {"algorithm1": results["table"][-1]["alg1_W2"],
                         "wgan_gp": results["table"][-1].get("wgan_W2")},
            "threads": config["threads"], "processes": config.get("processes", 1),
            "_numbers": _numbers(results)}


def _cell(value: float | None, unit: str = " s") -> str:
    return "-" if value is None else f"{value:.1f}{unit}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--paths", default="parallel,sequential",
                        help=f"comma-separated, from {sorted(PATHS)} (default parallel,sequential)")
    parser.add_argument("--dataset", default="25gaussians")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--steps", type=int, default=None, help="outer steps T (default 100)")
    parser.add_argument("--critic-steps", type=int, default=None, help="T_0 (default the paper's)")
    parser.add_argument("--out", default=str(RESULTS / "toy_wall.json"))
    args = parser.parse_args()
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    unknown = sorted(set(paths) - set(PATHS))
    if unknown or not paths or len(set(paths)) != len(paths):
        parser.error(f"--paths must name distinct paths of {sorted(PATHS)}, got {args.paths!r}")
    common = ["--dataset", args.dataset]
    if args.steps is not None:
        common += ["--steps", str(args.steps)]
    if args.critic_steps is not None:
        common += ["--critic-steps", str(args.critic_steps)]

    runs: dict[str, list[dict]] = {name: [] for name in paths}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            for name in paths:
                out = Path(tmp) / f"{i}-{name}"
                out.mkdir()
                runs[name].append(run_once(common + PATHS[name], out))
                r = runs[name][-1]
                print(f"  {name}, run {i + 1}: {r['wall_seconds']:.1f} s wall, "
                      f"{r['cpu_seconds']:.1f} s CPU, load {r['load_before']:.1f} -> "
                      f"{r['load_after']:.1f}", flush=True)
    checked = [name for name in paths if name in SAME_NUMBERS]
    numbers = [r.pop("_numbers") for name in paths for r in runs[name] if name in checked]
    for name in paths:
        for r in runs[name]:
            r.pop("_numbers", None)
    same = all(x == numbers[0] for x in numbers) if len(numbers) > 1 else None

    def median(name: str, key: str) -> float | None:
        values = [r[key] for r in runs[name] if r[key] is not None]
        return statistics.median(values) if values else None

    print(f"\nflowkit reproduce toy {' '.join(common)}: {args.repeats} run(s) of each path, "
          f"{os.cpu_count()} CPUs, torch threads per process as the command chose")
    print("| path | processes x threads | wall (median) | CPU | Alg. 1 wall / CPU | WGAN-GP wall "
          "/ CPU | Alg. 1 CPU per critic step | final W2 Alg. 1 / WGAN-GP | load avg "
          "(before -> after, per run) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---|")
    for name, rs in runs.items():
        loads = ", ".join(f"{r['load_before']:.1f} -> {r['load_after']:.1f}" for r in rs)
        w2 = rs[0]["final_W2"]
        wgan_w2 = "-" if w2["wgan_gp"] is None else f"{w2['wgan_gp']:.4f}"
        print(f"| {name} | {rs[0]['processes']} x {rs[0]['threads']} | "
              f"{_cell(median(name, 'wall_seconds'))} | {_cell(median(name, 'cpu_seconds'))} | "
              f"{_cell(median(name, 'algorithm1_seconds'))} / "
              f"{_cell(median(name, 'algorithm1_cpu_seconds'))} | "
              f"{_cell(median(name, 'wgan_gp_seconds'))} / "
              f"{_cell(median(name, 'wgan_gp_cpu_seconds'))} | "
              f"{_cell(median(name, 'algorithm1_cpu_ms_per_critic_step'), ' ms')} | "
              f"{w2['algorithm1']:.4f} / {wgan_w2} | {loads} |")
    ratios = {f"{name} vs {paths[0]}": median(name, "wall_seconds") / median(paths[0],
                                                                            "wall_seconds")
              for name in paths[1:]}
    for label, ratio in ratios.items():
        print(f"wall time ratio {label}: {ratio:.2f}")
    if same is not None:
        print(f"results.json identical across {', '.join(checked)} (timings aside): {same}")

    record = {
        "command": "python benchmarks/toy_wall.py " + " ".join(sys.argv[1:]),
        "flowkit_command": "flowkit reproduce toy " + " ".join(common),
        "paths": {name: PATHS[name] for name in paths},
        "python": platform.python_version(), "cpu_count": os.cpu_count(),
        "machine": platform.machine(), "runs": runs,
        "median_wall_seconds": {name: median(name, "wall_seconds") for name in runs},
        "wall_ratios": ratios, "results_identical": same,
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"written to {out}")
    if same is False:
        sys.exit(f"the paths {checked} disagree: results.json differs beyond its timings")


if __name__ == "__main__":
    main()
