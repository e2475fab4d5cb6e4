"""``flowkit reproduce cg-digits``: the summary, the verdicts and a quick run."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("sklearn")

from flowkit import cli  # noqa: E402
from flowkit.experiments import cg_digits  # noqa: E402


def _runs(*best):
    return [{"best_FD": b} for b in best]


def test_summary_and_verdicts():
    results = {"SGD": {0.01: _runs(30.0, 34.0), 0.02: _runs(20.0, 50.0)},
               "momentum 0.5": {0.01: _runs(25.0, 27.0)},
               "Adam": {1e-4: _runs(22.0, 23.0)},
               "CG-FR": {0.01: _runs(10.0, 11.0), 0.02: _runs(12.0, 13.0)}}
    s = cg_digits.summarize(results)
    assert s["SGD"]["best"] == 20.0 and s["SGD"]["best_lr"] == 0.01  # lowest seed mean: 32
    assert s["CG-FR"]["best_lr"] == 0.01 and s["CG-FR"]["mean"] == 10.5
    one, two = cg_digits.verdicts(s)
    assert one.startswith("Claim 1") and "NOT" not in one
    assert two.startswith("Claim 2") and "NOT" not in two and "CG-FR" in two
    # a CG best within 1% of momentum's is a tie, not a win
    results["momentum 0.5"] = {0.01: _runs(10.05, 10.05)}
    assert "NOT SUPPORTED" in cg_digits.verdicts(cg_digits.summarize(results))[0]


def test_all_rules_in_the_full_sweep():
    names = cg_digits.methods()
    assert {f"CG-{r}" for r in ("FR", "PRP", "HS", "DY", "HZ", "HS_DY", "FR_PRP")} <= set(names)
    assert {"SGD", "Adam"} <= set(names)
    assert all(len(v) >= 3 for v in cg_digits.LRS.values())




def _tiny(**kw):
    """Settings of a run that takes well under a second."""
    import argparse

    base = dict(iters=6, eval_every=3, lr_rule="constant", batch=16, latent_dim=8, width=8,
                n_eval=50, seeds=1, seed=0, quick=True, threads=1)
    return argparse.Namespace(**{**base, **kw})


@pytest.fixture(scope="module")
def metrics():
    from flowkit.metrics import DigitsMetrics

    return DigitsMetrics()


def test_a_diverging_run_stops_and_says_so(metrics):
    # a step this large sends the parameters to inf / nan within a few iterations
    r = cg_digits.train({"kind": "sgd"}, 1e30, 0, _tiny(iters=30, eval_every=10),
                        metrics.split.train_images, metrics)
    assert r["diverged_at"] is not None and 1 <= r["diverged_at"] <= 30
    assert r["iters"] == [0, 10, 20, 30]  # the evaluations it did not reach, recorded as inf
    assert all(v == float("inf") for v, it in zip(r["FD"], r["iters"], strict=True)
               if it >= r["diverged_at"])
    assert f"diverged (non-finite parameters) at iteration {r['diverged_at']}" in \
        cg_digits.status(r)
    assert cg_digits.notes({"SGD": {1e30: [r]}}) == [
        f"SGD, lr 1e+30, seed 0: {cg_digits.status(r)}"]


def test_a_frozen_generator_is_reported(metrics, monkeypatch):
    from flowkit.critics import dcgan

    class Flat(dcgan.DCGANCritic):  # a constant critic: the generator gets exactly 0
        def forward(self, x):
            return super().forward(x) * 0

    monkeypatch.setattr(dcgan, "DCGANCritic", Flat)
    r = cg_digits.train({"kind": "sgd"}, 0.01, 0, _tiny(), metrics.split.train_images, metrics)
    assert r["diverged_at"] is None and r["zero_grad_from"] == 1
    assert "generator gradient exactly 0 from iteration 1" in cg_digits.status(r)
    monkeypatch.undo()  # the real critic: gradient, no report
    r = cg_digits.train({"kind": "sgd"}, 0.01, 0, _tiny(), metrics.split.train_images, metrics)
    assert r["diverged_at"] is None and r["zero_grad_from"] is None and cg_digits.notes(
        {"SGD": {0.01: [r]}}) == []


def test_the_generator_step_skips_d_real_without_changing_a_number(metrics, monkeypatch):
    # The closure learns from the optimizer which player a call serves; told nothing, it
    # computes both losses at every call. Both must give the same numbers, bit for bit,
    # the told one with one critic pass fewer per iteration (D(real) in the generator step).
    from flowkit import games
    from flowkit.critics import dcgan

    passes = []

    class Counted(dcgan.DCGANCritic):
        def forward(self, x):
            passes.append(len(x))
            return super().forward(x)

    class Untold(games.TwoPlayerOptimizer):
        def step(self, closure):
            return super().step(lambda: closure())

    monkeypatch.setattr(dcgan, "DCGANCritic", Counted)
    args = _tiny()
    runs = []
    for optimizer in (games.TwoPlayerOptimizer, Untold):
        monkeypatch.setattr(games, "TwoPlayerOptimizer", optimizer)
        passes.clear()
        r = cg_digits.train({"kind": "cg", "beta": "PRP"}, 0.02, 0, args,
                            metrics.split.train_images, metrics)
        del r["wall_time"], r["cpu_time"]
        runs.append((r, len(passes)))
    (told, told_passes), (untold, untold_passes) = runs
    assert told == untold
    assert len(set(told["FD"])) == len(told["FD"]) == 3  # it trained: FD moved at each eval
    assert told_passes == 3 * args.iters and untold_passes == 4 * args.iters


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """``--quick`` in this process: the run folder and what it printed."""
    import contextlib
    import io

    out, printed = tmp_path_factory.mktemp("quick"), io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert cli.main(["reproduce", "cg-digits", "--quick", "--workers", "1", "--out",
                         str(out), "--no-progress"]) == 0
    (run,) = out.iterdir()
    return run, printed.getvalue()


def _numbers(run) -> dict:
    """results.json without the timings."""
    res = json.loads((run / "results.json").read_text())
    del res["total_wall_time"], res["total_cpu_time"]
    for by_lr in res["runs"].values():
        for runs in by_lr.values():
            for r in runs:
                del r["wall_time"], r["cpu_time"]
    return res


def test_quick_run(quick_run):
    run, printed = quick_run
    assert "Claim 1" in printed and "Claim 2" in printed and "real vs real" in printed
    assert {"config.json", "results.json", "table.md", "fd.png"} <= {p.name for p in
                                                                     run.iterdir()}
    res = json.loads((run / "results.json").read_text())
    assert set(res["summary"]) == set(cg_digits.methods(quick=True))
    assert json.loads((run / "config.json").read_text())["config"]["workers"] == 1


@pytest.mark.slow  # a fresh interpreter: a leaked semaphore is reported only when it exits
def test_two_workers_give_the_same_numbers_and_leave_nothing_behind(quick_run, tmp_path):
    import os
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "flowkit", "reproduce", "cg-digits",
                           "--quick", "--workers", "2", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONWARNINGS": "default"})
    assert done.returncode == 0, done.stderr
    assert "leaked" not in done.stderr, done.stderr
    assert "5/5" in done.stderr  # the progress bar counted every run
    (run,) = tmp_path.iterdir()
    assert _numbers(run) == _numbers(quick_run[0])  # bit for bit


@pytest.mark.slow  # starts two processes
def test_an_error_in_a_worker_names_the_run(metrics):
    from flowkit.experiments._common import map_in_processes

    typo = {"kind": "sgd", "momentun": 0.5}
    with pytest.raises(RuntimeError, match=r"cg-digits run \(typo, lr 0\.02, seed [01]\) "
                                           r"failed: TypeError: .*momentun"):
        map_in_processes(cg_digits.run_job, [("typo", typo, 0.02, 0), ("typo", typo, 0.02, 1)],
                         2, threads=1, initializer=cg_digits._share,
                         initargs=(_tiny(), metrics.split.train_images, metrics))


def test_default_workers():
    import argparse

    from flowkit.experiments._common import usable_cores

    def workers(**kw):
        args = argparse.Namespace(**{**dict(device="cpu", quick=False, threads=None,
                                            workers=None, iters=1000, n_eval=1000,
                                            width=32), **kw})
        cg_digits.configure(args)
        return args.workers

    assert workers() == usable_cores()  # one process per core, one thread each
    assert workers(threads=2) == max(1, usable_cores() // 2)
    assert workers(quick=True) == 1 and workers(workers=3) == 3
