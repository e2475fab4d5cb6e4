"""``flowkit reproduce games --quick`` end to end (flowkit/experiments/games.py)."""

import json

import pytest

from flowkit.cli import build_parser


@pytest.mark.slow
def test_games_experiment_quick(tmp_path, capsys):
    args = build_parser().parse_args(
        ["reproduce", "games", "--quick", "--out", str(tmp_path), "--steps", "400"])
    run = args._module.main(args)
    results = json.loads((run.path / "results.json").read_text())
    assert (run.path / "interaction.png").stat().st_size > 10_000
    rows = results["table"]
    assert {r["dynamics"] for r in rows} == {"SGA", "AltGDA", "OMD", "CO", "PM", "IU", "EG"}
    for r in rows:
        assert r["predicted"] == pytest.approx(r["closed_form"], abs=1e-6), r
        assert r["measured"] == pytest.approx(r["predicted"], abs=1e-2), r
    assert all(r["predicted"] > 1 for r in rows if r["dynamics"] == "SGA")
    stable = results["interaction"]["stable"]["SGA, tuned eta"]["predicted"]
    assert stable == sorted(stable)  # more interaction, slower SGA
    assert "OMD on C = I" in capsys.readouterr().out
