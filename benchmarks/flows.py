"""Benchmarks of the flows of ``flowkit.flows`` (docs/flows.md).

Part ``wfr``: the Wasserstein-Fisher-Rao (birth-death) MMD flow against noise injection
(``flowkit.objectives.NoisyMMDFlow``, Arbel et al. 2019) and the plain MMD flow, on

* ``far``: the noisy-mmd experiment's setting (``flowkit reproduce noisy-mmd``): 1-D,
  N = M = 100, start N(10, 0.5^2), target N(0, 1), Gaussian kernel sigma = 2, flowkit step
  eta = 0.5 (Arbel's gamma = 1), noise beta until step 5000, 15000 steps;
* ``modes``: the same kernel and step, target 0.5 N(-3, 0.5^2) + 0.5 N(3, 0.5^2), start
  with the right two modes but 80% / 20% of the particles in them (the mass must cross).

Part ``targets``: each flow on a 2-D Gaussian mixture with a known score (N = 1000) and on
8 gaussians (sample-based flows only): wall time and steps until W2 (exact, POT) is within
10% of the data-vs-data level, flowkit against ksddescent (SVGD, KSD gradient, KSD
L-BFGS) and POT's sliced loop, in the same run.

Prints tables and writes ``benchmarks/results/flows.json``::

    nice -n 19 python benchmarks/flows.py                # everything
    nice -n 19 python benchmarks/flows.py --part wfr
    python benchmarks/flows.py --quick                    # a smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path

import torch

import flowkit as fk
import flowkit.flows as flows

RESULTS = Path(__file__).resolve().parent / "results"
DT = torch.float64


# --------------------------------------------------------------------------- part wfr
def _wfr_setting(name: str, seed: int, n: int):
    g = torch.Generator().manual_seed(seed)
    if name == "far":
        y = torch.randn(n, 1, generator=g, dtype=DT)
        x0 = 10.0 + 0.5 * torch.randn(n, 1, generator=g, dtype=DT)
    else:
        sign = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0).to(DT)[:, None]
        y = 3.0 * sign + 0.5 * torch.randn(n, 1, generator=g, dtype=DT)
        left = int(0.8 * n)
        centers = torch.cat([torch.full((left, 1), -3.0), torch.full((n - left, 1), 3.0)]).to(DT)
        x0 = centers + 0.5 * torch.randn(n, 1, generator=g, dtype=DT)
    return x0, y


def _noisy_run(x0, y, kernel, eta, beta, until, steps, seed, every):
    obj = fk.objectives.NoisyMMDFlow(y, kernel, noise_level=fk.objectives.arbel_schedule(
        beta, until), seed=seed)
    flow = fk.FunctionalGradientDescent(obj, eta, monitors=[fk.monitors.ObjectiveValue()],
                                        monitor_every=every, keep_layers=False, progress=False)
    t0 = time.perf_counter()
    res = flow.run(x0, steps)
    return res.history["objective"], res.particles, None, time.perf_counter() - t0


def _wfr_run(x0, y, kernel, eta, eta_w, steps, every):
    res = flows.wfr_mmd_flow(x0, y, kernel, eta, eta_w, steps, monitor_every=every)
    return res.history["mmd2"], res.particles, res.weights, res.wall_time


def part_wfr(args) -> list[dict]:
    kernel, eta, until = fk.kernels.Gaussian(2.0), 0.5, min(5000, args.steps // 3)
    rows = []
    for setting in ("far", "modes"):
        for seed in range(args.seeds):
            x0, y = _wfr_setting(setting, seed, 100)
            runs = [(f"noise beta={b:g}", "noise", b) for b in (0, 1, 10)]
            runs += [(f"WFR eta_w={ew:g}", "wfr", ew) for ew in (0.1, 1, 10)]
            for name, kind, level in runs:
                if kind == "noise":
                    curve, x, w, seconds = _noisy_run(x0, y, kernel, eta, level, until,
                                                      args.steps, seed, args.every)
                else:
                    curve, x, w, seconds = _wfr_run(x0, y, kernel, eta, level, args.steps,
                                                    args.every)
                far = (x.abs() > 3 * 2.0 + 3).squeeze(1)
                mass = w if w is not None else torch.full((100,), 0.01, dtype=DT)
                stranded, stranded_n = float((far.to(DT) * mass).sum()), int(far.sum())
                rows.append({"setting": setting, "seed": seed, "method": name,
                             "mmd2_start": curve[0], "mmd2_final": curve[-1],
                             "mmd2_min": min(curve), "stranded_mass": stranded,
                             "stranded_particles": stranded_n,
                             "seconds": seconds, "steps": args.steps})
    print(f"\nWFR vs noise injection ({args.steps} steps, eta = 0.5, sigma = 2, N = M = 100, "
          f"noise until step {until}; stranded: mass and particles farther than 9 from 0)")
    print(f"{'setting':>7} {'seed':>4} {'method':>16} {'MMD2 start':>10} {'MMD2 final':>10} "
          f"{'MMD2 min':>9} {'stranded':>8} {'(count)':>7} {'s':>6}")
    for r in rows:
        print(f"{r['setting']:>7} {r['seed']:>4} {r['method']:>16} {r['mmd2_start']:>10.3e} "
              f"{r['mmd2_final']:>10.3e} {r['mmd2_min']:>9.2e} {r['stranded_mass']:>8.2f} "
              f"{r['stranded_particles']:>7d} {r['seconds']:>6.1f}")
    return rows


# --------------------------------------------------------------------------- part targets
MEANS = torch.tensor([[1.5, 1.5], [1.5, -1.5], [-1.5, 1.5], [-1.5, -1.5]], dtype=DT)
STD = 0.6


def gmm_score(x: torch.Tensor) -> torch.Tensor:
    """Score of the equal-weight mixture of N(MEANS_k, STD^2 I), in closed form."""
    diff = MEANS.to(x.dtype)[None] - x[:, None]  # (N, K, d)
    resp = torch.softmax(-(diff**2).sum(-1) / (2 * STD**2), 1)
    return (resp[..., None] * diff).sum(1) / STD**2


def gmm_sample(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, 4, (n,), generator=g)
    return MEANS[idx] + STD * torch.randn(n, 2, generator=g, dtype=DT)


def _w2(x, y) -> float:
    return fk.monitors.wasserstein(x.to(DT), y.to(DT)).value


class _Trace:
    """W2 at checkpoints, with the flow's own seconds (W2 evaluation not counted)."""

    def __init__(self, y_eval, level):
        self.y, self.level, self.rows = y_eval, level, []

    def add(self, step, seconds, x):
        self.rows.append((step, seconds, _w2(x, self.y)))

    def summary(self, name, target):
        hit = next(((k, t, w) for k, t, w in self.rows if w <= 1.1 * self.level), None)
        return {"target": target, "method": name, "level": self.level,
                "steps_to_10pct": hit[0] if hit else None,
                "seconds_to_10pct": hit[1] if hit else None,
                "final_step": self.rows[-1][0], "final_w2": self.rows[-1][2],
                "final_seconds": self.rows[-1][1], "trace": self.rows}


def _chunked(trace, x0, steps, check, advance):
    """Run ``advance(x, k) -> x`` ``check`` steps at a time, timing only the flow."""
    x, spent = x0, 0.0
    trace.add(0, 0.0, x)
    for k in range(check, steps + 1, check):
        t0 = time.perf_counter()
        x = advance(x, check)
        spent += time.perf_counter() - t0
        trace.add(k, spent, x)
    return x


def _engine(obj, eta):
    flow = fk.FunctionalGradientDescent(obj, eta, progress=False, keep_layers=False)
    return lambda x, k: flow.run(x, k).particles


def _stored(trace, storage, timer, check):
    """ksddescent's stored iterates (store=True) at every ``check``-th iteration."""
    for k in range(0, len(storage), check):
        trace.add(k, timer[k], storage[k].to(DT))
    return trace


def _lbfgs_trace(trace, objective, x0, max_iter):
    every = max(1, max_iter // 10)
    kept, t0 = [(0, 0.0, x0)], time.perf_counter()

    def keep(k, x):  # cheap: W2 is computed after the run
        if k % every == 0:
            kept.append((k, time.perf_counter() - t0, x.clone()))

    flows.lbfgs(objective, x0, max_iter, callback=keep)
    for k, seconds, x in kept:
        trace.add(k, seconds, x)


def part_targets(args) -> list[dict]:
    import ksddescent as kd
    import ot

    n, steps, check = args.n, args.target_steps, args.check
    out = []
    if "gmm4" in args.targets:
        out += _gmm4(args, kd, ot)
    if "8gaussians" in args.targets:
        # ---- 8 gaussians: sample-based flows only (its score, std 0.014, is too stiff);
        # the MMD step of the mixture (2.0) overshoots here (std 0.014 vs bandwidth 0.5)
        x0 = 0.5 * torch.randn(n, 2, generator=torch.Generator().manual_seed(0), dtype=DT)
        y_eval = fk.datasets.eight_gaussians(n, seed=100, dtype=DT)
        y_flow = fk.datasets.eight_gaussians(n, seed=101, dtype=DT)
        level = _w2(fk.datasets.eight_gaussians(n, seed=102, dtype=DT), y_eval)
        for name, fn in _sample_runs(x0, y_flow, steps, check, ot, mmd_eta=0.5).items():
            trace = _Trace(y_eval, level)
            fn(trace)
            out.append(trace.summary(name, "8gaussians"))
            _print_row(out[-1])
    return out


def _gmm4(args, kd, ot) -> list[dict]:
    """The 2-D Gaussian mixture with a known score: every flow."""
    n, steps, check = args.n, args.target_steps, args.check
    out = []
    y_eval, y_flow = gmm_sample(n, 100), gmm_sample(n, 101)
    level = _w2(gmm_sample(n, 102), y_eval)
    x0 = 0.5 * torch.randn(n, 2, generator=torch.Generator().manual_seed(0), dtype=DT)
    h = flows.median_bandwidth(x0)  # one fixed bandwidth for both SVGD implementations
    kern = fk.kernels.Gaussian(h)
    svgd_step, ksd_eta, ksd_bw = 0.5, args.ksd_eta, 0.5
    runs = {}
    runs["flowkit SVGD"] = lambda t: _chunked(t, x0, steps, check, lambda x, k: flows.SVGD(
        score=gmm_score, kernel=kern).run(x, svgd_step, k).particles)
    runs["ksddescent svgd"] = lambda t: _stored(t, *kd.svgd(
        x0.clone(), gmm_score, svgd_step, max_iter=steps + 1, bw=h**2, tol=0.0,
        store=True)[1:], check)
    ksd = flows.KSD(score=gmm_score, kernel=fk.kernels.Gaussian(math.sqrt(ksd_bw)))
    runs["flowkit KSD (engine)"] = lambda t: _chunked(t, x0, steps, check,
                                                      _engine(ksd, ksd_eta))
    runs["ksddescent ksdd_gradient"] = lambda t: _stored(t, *kd.ksdd_gradient(
        x0.clone(), gmm_score, ksd_eta * n, max_iter=steps, bw=ksd_bw, store=True)[1:],
        check)
    runs["flowkit KSD L-BFGS"] = lambda t: _lbfgs_trace(t, ksd, x0, args.lbfgs_iter)
    runs["ksddescent ksdd_lbfgs"] = lambda t: _stored(t, *kd.ksdd_lbfgs(
        x0.float(), gmm_score, bw=ksd_bw, max_iter=args.lbfgs_iter, store=True)[1:],
        max(1, args.lbfgs_iter // 10))
    gen = torch.Generator().manual_seed(5)
    runs["flowkit Langevin"] = lambda t: _chunked(t, x0, steps, check, lambda x, k: flows.langevin(
        x, 0.05, k, score=gmm_score, seed=gen).particles)
    blob = flows.BlobKL(score=gmm_score, bandwidth=0.15)
    runs["flowkit blob KL"] = lambda t: _chunked(t, x0, steps, check, _engine(blob, 0.05))
    runs.update(_sample_runs(x0, y_flow, steps, check, ot))
    for name, fn in runs.items():
        trace = _Trace(y_eval, level)
        fn(trace)
        out.append(trace.summary(name, "gmm4"))
        _print_row(out[-1])
    return out


def _sample_runs(x0, y, steps, check, ot, mmd_eta=2.0):
    n = x0.shape[0]
    gen_f, gen_p = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    sw = flows.SlicedWasserstein(y, 50, resample=True, seed=gen_f)
    runs = {"flowkit sliced (engine)": lambda t: _chunked(t, x0, steps, check,
                                                          _engine(sw, 1.0))}

    def pot_loop(x, k):  # POT's gallery loop on SW_2^2 with the same step and directions
        x = x.clone().requires_grad_(True)
        for _ in range(k):
            P = flows.random_projections(2, 50, gen_p, dtype=DT)
            loss = ot.sliced_wasserstein_distance(x, y, projections=P) ** 2
            (g,) = torch.autograd.grad(loss, x)
            with torch.no_grad():
                x -= n * 1.0 * g
        return x.detach()

    runs["POT sliced loop"] = lambda t: _chunked(t, x0, steps, check, pot_loop)
    kern = fk.kernels.Gaussian(0.5)
    runs["flowkit MMD (engine)"] = lambda t: _chunked(
        t, x0, steps, check, _engine(fk.objectives.MMD(y, kern), mmd_eta))
    state = {"w": None}

    def wfr(x, k):
        res = flows.wfr_mmd_flow(x, y, kern, mmd_eta, 1.0, k, weights0=state["w"],
                                 monitor_every=k)
        state["w"] = res.weights
        return res.particles

    runs["flowkit WFR MMD (W2 unweighted)"] = lambda t: _chunked(t, x0, steps, check, wfr)
    return runs


def _print_row(r):
    hit = "not reached" if r["steps_to_10pct"] is None else \
        f"{r['steps_to_10pct']:>5d} steps {r['seconds_to_10pct']:>7.2f} s"
    print(f"{r['target']:>10} {r['method']:>32} | level {r['level']:.4f} | W2 <= 1.1 level: "
          f"{hit:>24} | final W2 {r['final_w2']:.4f} at {r['final_step']} "
          f"({r['final_seconds']:.1f} s)", flush=True)


# --------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=["all", "wfr", "targets"], default="all")
    parser.add_argument("--steps", type=int, default=15000, help="steps of part wfr")
    parser.add_argument("--every", type=int, default=100, help="steps between MMD^2 records")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--n", type=int, default=1000, help="particles of part targets")
    parser.add_argument("--target-steps", type=int, default=500)
    parser.add_argument("--check", type=int, default=25, help="steps between W2 checks")
    parser.add_argument("--ksd-eta", type=float, default=0.05)
    parser.add_argument("--lbfgs-iter", type=int, default=200)
    parser.add_argument("--targets", nargs="+", default=["gmm4", "8gaussians"],
                        choices=["gmm4", "8gaussians"])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.seeds, args.every = 300, 1, 50
        args.n, args.target_steps, args.check, args.lbfgs_iter = 200, 50, 25, 20
    torch.set_num_threads(1)
    out = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                       "torch_threads": torch.get_num_threads(),
                       "note": "shared machine, other jobs running (loaded)"}}
    for part in ("wfr", "targets"):  # each part keeps the arguments it ran with
        if args.part in ("all", part):
            out[f"args_{part}"] = vars(args)
    if args.part in ("all", "wfr"):
        out["wfr"] = part_wfr(args)
    if args.part in ("all", "targets"):
        out["targets"] = part_targets(args)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / ("flows-quick.json" if args.quick else "flows.json")
    if path.exists() and args.part != "all":
        previous = json.loads(path.read_text())
        if "targets" in out and "targets" in previous:  # keep the targets not rerun
            out["targets"] = [r for r in previous["targets"] if r["target"] not in
                              args.targets] + out["targets"]
        previous.update(out)
        out = previous
    path.write_text(json.dumps(out, indent=1))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
