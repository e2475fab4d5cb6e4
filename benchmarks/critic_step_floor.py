"""The floor of one WGAN-GP critic step on this machine, beside the step itself.

A critic step of ``flowkit reproduce toy --dataset 25gaussians`` (width 512, 4 layers, batch
``b = 50``, the explicit backward of :func:`flowkit.critics.wgan_gp.penalized_loss_gradients`)
cannot take less time than its matrix products and its Adam update. The *floor* runs those
and nothing else, with the shapes and memory layouts the step uses:

* the forward pass over the ``3 b`` rows ``[fake, real, penalty points]`` (``addmm``);
* the backward recursion over the same rows, ``delta @ W`` (critic values and the input
  gradient at the points share it);
* the penalty's chain back through the ``k`` active points, ``v @ W.T``;
* one weight-gradient product per layer over ``2 b + k`` rows, ``left.T @ right``;
* torch's fused Adam on the critic's parameters.

``k = 0`` by default (no active point: the least arithmetic any step has), so the floor is a
lower bound whatever the penalty does. Both the floor and the real step
(:meth:`flowkit.critics.WGANGPCritic.train` on the 25-gaussians data) are timed in one
process, then in two processes at once, one thread each: the layout of the toy command,
where Algorithm 1 and the WGAN-GP baseline each take a core. From the two-process floor it
prints the least time the command's ``2 x 10,000`` critic steps can take on this machine.

Prints a table and writes ``benchmarks/results/critic_step_floor.json``::

    python benchmarks/critic_step_floor.py            # 400 steps per measurement, best of 3
    python benchmarks/critic_step_floor.py --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
TOY_CRITIC_STEPS = 10_000  # T T_0 of 25 gaussians, per method


def _floor_step(hidden: int, batch: int, active: int, dim: int = 2, depth: int = 4):
    """``run(n)``: the step's products and Adam update ``n`` times, on random operands."""
    import flowkit as fk

    net = fk.nn.MLP(dim, None, hidden, depth, generator=torch.Generator().manual_seed(0))
    params = list(net.parameters())
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    opt = fk.critics.training.make_adam(params, 1e-4, (0.5, 0.9))
    linears = [m for m in net.body if isinstance(m, torch.nn.Linear)]
    g = torch.Generator().manual_seed(1)
    rows, k, n_x = 3 * batch, active, 2 * batch
    h = [torch.randn(rows, m.in_features, generator=g) for m in linears]
    d = [torch.randn(rows, m.out_features, generator=g) for m in linears]
    v = [torch.randn(k, m.in_features, generator=g) for m in linears]
    left = [torch.randn(n_x + k, m.out_features, generator=g) for m in linears]
    right = [torch.randn(n_x + k, m.in_features, generator=g) for m in linears]

    def run(n: int) -> None:
        for _ in range(n):
            with torch.no_grad():
                for m, x in zip(linears, h):
                    torch.addmm(m.bias, x, m.weight.T)
                for m, x in zip(linears[:-1], d[:-1]):
                    x @ m.weight
                if k:
                    for m, x in zip(linears[:-1], v[:-1]):
                        x @ m.weight.T
                for a, b in zip(left[:-1], right[:-1]):
                    a.T @ b
            opt.step()

    return run


def _real_step(hidden: int, batch: int):
    """``run(n)``: ``n`` real explicit-backward critic steps on the 25-gaussians data."""
    import flowkit as fk

    data = fk.datasets.DATASETS["25gaussians"](1000, seed=0)
    data = data * (0.8 / data.abs().max())
    pool = 0.5 * torch.randn(1000, 2, generator=torch.Generator().manual_seed(1))
    critic = fk.critics.WGANGPCritic(2, hidden, 4, "one-sided", 10.0, 1e-4, (0.5, 0.9), batch,
                                     seed=2, explicit_backward=True)
    return lambda n: critic.train(pool, data, n)


def _time(kind: str, hidden: int, batch: int, active: int, steps: int, repeats: int) -> float:
    """Best over ``repeats`` of the mean seconds per step of ``steps`` steps, one thread."""
    torch.set_num_threads(1)
    run = _floor_step(hidden, batch, active) if kind == "floor" else _real_step(hidden, batch)
    run(max(10, steps // 10))  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run(steps)
        best = min(best, (time.perf_counter() - start) / steps)
    return best


def _worker(barrier, queue, *args) -> None:
    torch.set_num_threads(1)
    barrier.wait()  # both processes time the same stretch of the machine
    queue.put(_time(*args))


def in_two_processes(*args) -> list[float]:
    """:func:`_time` in two spawned processes at once; each one's seconds per step."""
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(barrier, queue, *args)) for _ in range(2)]
    for p in procs:
        p.start()
    out = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    return sorted(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--active", type=int, default=0,
                        help="active penalty points in the floor (default 0: the least work)")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(RESULTS / "critic_step_floor.json"))
    args = parser.parse_args()
    steps, repeats = (20, 1) if args.quick else (args.steps, args.repeats)
    common = (args.hidden, args.batch, args.active, steps, repeats)
    load_before = os.getloadavg()[0]
    rows = {}
    for kind in ("floor", "step"):
        one = _time(kind, *common)
        two = in_two_processes(kind, *common)
        rows[kind] = {"one_process": one, "two_processes": two}
    load_after = os.getloadavg()[0]
    bound = TOY_CRITIC_STEPS * rows["floor"]["two_processes"][-1]

    print(f"torch {torch.__version__}, one thread per process, {os.cpu_count()} CPUs, width "
          f"{args.hidden}, batch {args.batch}, {args.active} active points in the floor; best "
          f"of {repeats} x {steps} steps; load average {load_before:.1f} -> {load_after:.1f}")
    print("| what | one process | two processes at once (each) | step / floor, two processes |")
    print("|---|---:|---:|---:|")
    for kind, label in (("floor", "products + Adam only (the floor)"),
                        ("step", "the explicit critic step")):
        r = rows[kind]
        ratio = r["two_processes"][-1] / rows["floor"]["two_processes"][-1]
        print(f"| {label} | {1e3 * r['one_process']:.2f} ms | "
              f"{' / '.join(f'{1e3 * t:.2f}' for t in r['two_processes'])} ms | {ratio:.2f} |")
    print(f"\nleast time of the toy command's {TOY_CRITIC_STEPS} critic steps per method, the "
          f"two methods on the two cores: {bound:.0f} s (the two-process floor)")
    record = {
        "command": "python benchmarks/critic_step_floor.py" + (" --quick" if args.quick else ""),
        "torch": torch.__version__, "python": platform.python_version(),
        "cpu_count": os.cpu_count(), "machine": platform.machine(),
        "hidden": args.hidden, "batch": args.batch, "active": args.active, "steps": steps,
        "repeats": repeats, "load_average": [load_before, load_after],
        "seconds_per_step": rows, "toy_critic_steps_floor_seconds": bound,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
