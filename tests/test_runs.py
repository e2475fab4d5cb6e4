"""Run folders: files stay inside the folder, JSON is strict."""

import json
import math

import pytest

import flowkit as fk


def test_filenames_cannot_leave_the_run_folder(tmp_path):
    run = fk.RunFolder(tmp_path / "runs", "t", {"a": 1})
    for bad in ["../x.json", "sub/../../x.json", str(tmp_path / "abs.json"), ""]:
        with pytest.raises(ValueError, match="filename"):
            run.write_json(bad, {})
        with pytest.raises(ValueError, match="filename"):
            run.savefig(None, bad)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]
    assert run.write_json("sub/ok.json", {}).parent == run.path / "sub"


def test_json_is_strict(tmp_path):
    import torch

    run = fk.RunFolder(tmp_path, "t", {})
    path = run.write_json("m.json", {"a": math.inf, "b": -math.inf, "c": math.nan,
                                     "t": torch.tensor([1.0, math.inf])})
    text = path.read_text()
    assert "Infinity" not in text and "NaN" not in text
    assert json.loads(text) == {"a": "inf", "b": "-inf", "c": None, "t": [1.0, "inf"]}
