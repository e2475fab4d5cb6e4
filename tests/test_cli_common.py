"""The common options of every command, and what a bad invocation does: exit code 2, one
line on stderr, no traceback, and no folder created."""

from __future__ import annotations

import json

import pytest

from flowkit import cli
from flowkit.experiments import _common

COMMANDS = [["demo"], ["reproduce", "toy"], ["reproduce", "cg"], ["reproduce", "games"],
            ["reproduce", "noisy-mmd"], ["reproduce", "kernelized-flow"],
            ["reproduce", "divergences"], ["reproduce", "digits"], ["reproduce", "cg-digits"]]

# (command, extra arguments, what the message names)
BAD = [
    *[(c, ["--device", "cuda:99"], "--device") for c in COMMANDS],
    *[(c, ["--device", "banana"], "--device") for c in COMMANDS[:2]],
    *[(c, ["--seed", "-1"], "--seed") for c in COMMANDS],
    *[(c, ["--threads", "-1"], "--threads") for c in COMMANDS],
    *[(c, ["--threads", "0"], "--threads") for c in COMMANDS[:2]],
    (["demo"], ["--n", "-1"], "--n"),
    (["demo"], ["--n", "0"], "--n"),
    (["demo"], ["--steps", "0"], "--steps"),
    (["demo"], ["--step-size", "nan"], "--step-size"),
    (["demo"], ["--bandwidth", "-0.5"], "--bandwidth"),
    (["demo"], ["--every", "0"], "--every"),
    (["reproduce", "noisy-mmd"], ["--dim", "0"], "--dim"),
    (["reproduce", "noisy-mmd"], ["--gamma", "inf"], "--gamma"),
    (["reproduce", "kernelized-flow"], ["--batch", "0"], "--batch"),
    (["reproduce", "cg"], ["--batch", "0"], "--batch"),
    (["reproduce", "cg"], ["--momentum", "2"], "--momentum"),
    (["reproduce", "divergences"], ["--n", "1"], "--n"),
    (["reproduce", "games"], ["--etas", "0.1", "-0.3"], "--etas"),
    (["reproduce", "toy"], ["--critic-steps", "0"], "--critic-steps"),
    (["reproduce", "toy"], ["--dataset", "moons"], "--dataset"),
    (["reproduce", "digits"], ["--seeds", "0"], "--seeds"),
    (["reproduce", "digits"], ["--step-size", "-0.5"], "--step-size"),
    (["reproduce", "digits"], ["--checkpoint", "no/such/pretrained.pt"], "--checkpoint"),
    (["reproduce", "digits"], ["--no-mmd", "--arms", "mmd"], "--arms"),
    (["reproduce", "digits"], ["--arms", "gan"], "--arms"),
    (["reproduce", "cg-digits"], ["--n-eval", "1"], "--n-eval"),
    (["reproduce", "cg-digits"], ["--lr-rule", "cosine"], "--lr-rule"),
]


@pytest.mark.parametrize("command, extra, named", BAD,
                         ids=[" ".join(c[-1:] + e) for c, e, _ in BAD])
def test_bad_invocation_exits_2_with_one_line_and_no_folder(tmp_path, capsys, command, extra,
                                                           named):
    out = tmp_path / "runs"
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*command, *extra, "--out", str(out), "--quick", "--no-progress"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error:" in err and named in err, err
    assert "Traceback" not in err
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("blocker", ["file", "file/below"])
def test_unwritable_out_is_refused_before_anything_is_created(tmp_path, capsys, blocker):
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["demo", "--out", str(tmp_path / blocker), "--quick", "--no-progress"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--out" in err and "not a folder" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_every_command_has_the_common_options():
    parser = cli.build_parser()
    for command in COMMANDS:
        args = parser.parse_args([*command, "--seed", "3", "--threads", "2", "--quick",
                                  "--device", "cpu", "--out", "x"])
        assert (args.seed, args.threads, args.quick, args.device, args.out) == (
            3, 2, True, "cpu", "x"), command


class _Refusing:
    """An experiment whose options conflict: refused in ``configure``, before the folder."""

    NAME = "refusing"

    @staticmethod
    def configure(args):
        raise ValueError("--a and --b conflict")

    @staticmethod
    def run(args, folder):  # pragma: no cover - never reached
        raise AssertionError("ran")


def test_a_configure_error_is_refused_before_the_folder(tmp_path, capsys):
    args = cli.build_parser().parse_args(["demo", "--out", str(tmp_path / "r")])
    with pytest.raises(ValueError, match="conflict"):
        _common.launch(_Refusing, args)
    parser = cli.build_parser()
    with pytest.raises(SystemExit) as exit_info:
        _common.launch(_Refusing, args, error=parser.error)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert not (tmp_path / "r").exists()


def test_config_records_command_line_versions_and_git(tmp_path):
    assert cli.main(["demo", "--quick", "--out", str(tmp_path), "--seed", "4",
                     "--threads", "1", "--no-progress"]) == 0
    (run,) = tmp_path.iterdir()
    config = json.loads((run / "config.json").read_text())
    assert config["config"]["seed"] == 4 and config["config"]["threads"] == 1
    assert config["config"]["quick"] is True and config["config"]["steps"] == 40
    assert config["versions"]["torch"] and config["argv"]
    # the configuration is data: no parser plumbing, no repr of a function
    assert "handler" not in config["config"]
    assert not any(isinstance(v, str) and v.startswith("<function")
                   for v in config["config"].values())
    git = config["config"]["git"]
    assert git == _common.git_state()
    if git is not None:
        assert len(git["commit"]) == 40 and isinstance(git["dirty"], bool)
    names = {p.name for p in run.iterdir()}
    assert {"config.json", "results.json", "snapshots.png", "snapshots.pdf"} <= names


def test_git_state_outside_a_checkout_is_none(tmp_path):
    assert _common.git_state(tmp_path) is None
