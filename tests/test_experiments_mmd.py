"""The MMD-family experiments run end to end in --quick mode and write their outputs."""

import json

import pytest

from flowkit import cli


@pytest.mark.parametrize("name,files", [
    ("noisy-mmd", ["results.json", "mmd2.png"]),
    ("kernelized-flow", ["results.json", "curves.png"]),
    ("divergences", ["results.json", "w2_time.png", "particles.png"]),
])
def test_quick_run_writes_results(tmp_path, capsys, name, files):
    assert cli.main(["reproduce", name, "--quick", "--out", str(tmp_path), "--no-progress"]) == 0
    (run,) = list(tmp_path.iterdir())
    for f in files + ["config.json"]:
        assert (run / f).stat().st_size > 0
    results = json.loads((run / "results.json").read_text())
    assert results
    if name == "divergences":  # every flow of both families, each with its W2 curve
        from flowkit.experiments.divergences import SCORE_BASED, STEP_SIZES

        runs = {r["label"]: r for r in results["runs"]}
        assert list(runs) == list(STEP_SIZES)
        assert {lab for lab, r in runs.items() if r["family"] == "score"} == set(SCORE_BASED)
        assert all(len(r["w2"]) == len(r["steps"]) == len(r["seconds"]) >= 2
                   for r in runs.values())
    out = capsys.readouterr().out
    assert "results written to" in out


def test_divergences_cpu_clock_refuses_an_accelerator():
    import argparse

    from flowkit.experiments import divergences

    with pytest.raises(ValueError, match="--clock cpu"):
        divergences.configure(argparse.Namespace(clock="cpu", device="cuda"))
