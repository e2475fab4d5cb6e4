"""``flowkit reproduce toy``: the paper's settings and a quick end-to-end run."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from flowkit import cli
from flowkit.experiments import toy


@pytest.mark.parametrize("dataset, size, hidden, t0", [("8gaussians", 500, 128, 50),
                                                        ("25gaussians", 1000, 512, 100),
                                                        ("swissroll", 500, 128, 50)])
def test_paper_settings(dataset, size, hidden, t0):
    cfg = toy.toy_config(dataset)
    assert (cfg.size, cfg.hidden, cfg.critic_steps) == (size, hidden, t0)  # T_0 = 5 size / b
    assert (cfg.outer_steps, cfg.step_size, cfg.batch_size, cfg.depth) == (100, 0.1, 50, 4)
    assert (cfg.penalty, cfg.lam, cfg.lr, cfg.betas) == ("one-sided", 10.0, 1e-4, (0.5, 0.9))
    assert cfg.snapshots == (0, 25, 50, 100) and cfg.base_std == 0.5


def test_quick_run_through_the_cli(tmp_path, capsys):
    assert cli.main(["reproduce", "toy", "--quick", "--out", str(tmp_path), "--no-progress",
                     "--dataset", "8gaussians"]) == 0
    printed = capsys.readouterr().out
    assert "| critic steps |" in printed and "Algorithm 2 on" in printed
    (run,) = tmp_path.iterdir()
    names = {p.name for p in run.iterdir()}
    assert {"config.json", "results.json", "table.md", "figure2.png", "wgangp.png",
            "w2.png"} <= names
    results = json.loads((run / "results.json").read_text())
    cfg = results["config"]
    total = cfg["outer_steps"] * cfg["critic_steps"]
    assert results["algorithm1"]["critic_steps"] == total
    assert results["wgan_gp"]["history"]["critic_steps"][-1] == total  # equal critic budgets
    rows = results["table"]
    every = cfg["monitor_every"] * cfg["critic_steps"]
    assert cfg["monitor_every"] == 10 and cfg["explicit_backward"]  # the defaults
    assert [r["critic_steps"] for r in rows] == list(range(0, total + 1, every))
    assert all("wgan_W2" in r for r in rows)
    assert all(math.isfinite(r["alg1_W2"]) and math.isfinite(r["wgan_W2"]) for r in rows)
    assert rows[-1]["alg1_W2"] < rows[0]["alg1_W2"]
    fresh = results["algorithm2_fresh"]
    assert fresh["n_fresh"] == cfg["fresh_factor"] * cfg["size"]
    assert fresh["W2_all"] > 0 and fresh["seconds_per_1000_samples_per_layer"] > 0
    held = results["held_out_W2"]
    assert (held["n"], held["chunks"]) == (cfg["size"], cfg["fresh_factor"])
    for who in ("training_particles", "fresh", "data"):
        assert held[who]["mean"] > 0 and held[who]["std"] >= 0
    assert "Held out" in printed
    config = json.loads((run / "config.json").read_text())["config"]
    assert config["threads"] == 1 and config["processes"] == 2  # the baseline ran beside


def _numbers(out: dict) -> dict:
    """Everything ``run_toy`` measured except wall times, with the baseline's history."""
    timing = {"wall_time", "cpu_time", "generation_seconds", "seconds_per_1000_samples_per_layer",
              "ot_seconds"}

    def strip(x):
        return {k: strip(v) for k, v in x.items() if k not in timing} if isinstance(x, dict) \
            else x

    kept = {k: v for k, v in out.items() if not k.startswith("_") and k != "wgan_gp"}
    history = out["wgan_gp"]["history"]
    return {**strip(kept), "baseline": (history.critic_steps, history.metrics)}


@pytest.mark.slow  # starts a second Python process (imports torch: seconds)
def test_baseline_in_a_second_process_gives_the_same_numbers():
    cfg = toy.toy_config("8gaussians", quick=True, outer_steps=2, critic_steps=5, hidden=16,
                         fresh_factor=2)
    one, two = toy.run_toy(cfg), toy.run_toy(cfg, parallel=True)
    assert _numbers(two) == _numbers(one)  # bit for bit: every stream is seeded
    assert list(two) == list(one)  # results.json keeps its layout
    for key in ("_snapshots", "_baseline_snapshots"):
        assert all(torch.equal(one[key][s], two[key][s]) for s in one[key])
    assert two["wgan_gp"]["history"].critic_steps[-1] == 10


def test_quick_paper_mode_without_baseline(tmp_path):
    cfg = toy.toy_config("swissroll", quick=True, mode="paper", baseline=False,
                         outer_steps=4, critic_steps=5)
    out = toy.run_toy(cfg)
    assert "wgan_gp" not in out
    assert out["algorithm1"]["critic_steps"] == 20
    assert [r["critic_steps"] for r in out["table"]] == [0, 20]


def test_toy_bad_settings():
    with pytest.raises(ValueError, match="dataset"):
        toy.toy_config("moons")
    with pytest.raises(ValueError, match="n_critic"):
        toy.toy_config("8gaussians", critic_steps=3, monitor_every=1)
    with pytest.raises(ValueError, match="setting"):
        toy.toy_config("8gaussians", width=3)


@pytest.mark.slow  # a fresh interpreter: the leak is reported only when it exits
def test_the_second_process_leaves_nothing_behind():
    import subprocess
    import sys

    code = ("from flowkit.experiments import toy\n"
            "cfg = toy.toy_config('8gaussians', quick=True, outer_steps=1, critic_steps=2,"
            " hidden=8, fresh_factor=1)\n"
            "toy.run_toy(cfg, parallel=True)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONWARNINGS": "default"})
    assert done.returncode == 0, done.stderr
    assert "leaked" not in done.stderr, done.stderr


@pytest.mark.parametrize("flags, explicit", [([], True), (["--explicit-backward"], True),
                                             (["--autograd-backward"], False)])
def test_the_critic_backward_flags(flags, explicit):
    args = cli.build_parser().parse_args(["reproduce", "toy", "--quick", *flags])
    assert toy.configure(args)["explicit_backward"] is explicit
    with pytest.raises(SystemExit):  # one or the other
        cli.build_parser().parse_args(["reproduce", "toy", "--explicit-backward",
                                       "--autograd-backward"])
