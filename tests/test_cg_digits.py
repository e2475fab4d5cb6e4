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


def test_quick_run(tmp_path, capsys):
    assert cli.main(["reproduce", "cg-digits", "--quick", "--out", str(tmp_path),
                     "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "Claim 1" in printed and "Claim 2" in printed and "real vs real" in printed
    (run,) = tmp_path.iterdir()
    assert {"config.json", "results.json", "table.md", "fd.png"} <= {p.name for p in
                                                                     run.iterdir()}
    res = json.loads((run / "results.json").read_text())
    assert set(res["summary"]) == set(cg_digits.methods(quick=True))
