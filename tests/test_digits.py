"""``flowkit reproduce digits`` and its DCGAN networks."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from torch import nn

pytest.importorskip("sklearn")

from flowkit import cli  # noqa: E402
from flowkit.critics.dcgan import DCGANCritic  # noqa: E402
from flowkit.experiments import digits  # noqa: E402
from flowkit.generators.dcgan import DCGANGenerator  # noqa: E402


def test_dcgan_shapes_and_batch_norm_in_the_generator_only():
    gen, critic = DCGANGenerator(8, 4, seed=0), DCGANCritic(4, seed=0)
    z = torch.randn(5, 8)
    x = gen(z).detach()
    assert x.shape == (5, 1, 8, 8) and float(x.abs().max()) < 1
    torch.testing.assert_close(x, torch.tanh(gen.body(z)))
    assert critic(x).shape == (5,)
    assert DCGANCritic(4, 3, seed=0)(x).shape == (5, 3)
    assert any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in gen.modules())
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in critic.modules())
    # seeded initial weights
    assert torch.equal(DCGANGenerator(8, 4, seed=0)(z), DCGANGenerator(8, 4, seed=0)(z))
    with pytest.raises(ValueError, match="width"):
        DCGANCritic(0)


def test_paper_settings():
    cfg = digits.DigitsConfig()
    assert (cfg.lam, cfg.lr, cfg.betas, cfg.batch_size, cfg.n_critic) == (
        10.0, 1e-4, (0.5, 0.9), 64, 5)
    assert (cfg.alg1_lr, cfg.step_size, cfg.critic_steps) == (5e-5, 0.5, 16)  # T_0 = 1000 / 64
    assert cfg.seeds >= 3 and cfg.n_eval >= 1000


def test_quick_run_and_checkpoint(tmp_path, capsys):
    assert cli.main(["reproduce", "digits", "--quick", "--out", str(tmp_path),
                     "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "real vs real" in printed and "SUPPORTED at this scale" in printed
    assert "start (pretrained WGAN-GP)" in printed
    (run,) = tmp_path.iterdir()
    names = {p.name for p in run.iterdir()}
    assert {"config.json", "results.json", "table.md", "pretrained.pt", "figure3.png",
            "samples_start.png", "samples_algorithm_1.png", "samples_wgan-gp_continued.png",
            "samples_algorithm_1_mmd.png"} <= names
    res = json.loads((run / "results.json").read_text())
    a1, wg = res["arms"]["Algorithm 1 (WGAN-GP critic)"][0], res["arms"]["WGAN-GP continued"][0]
    assert a1["critic_steps"] == wg["critic_steps"]  # equal critic budgets
    assert a1["IS"][0] == wg["IS"][0]  # the same start
    assert 1 <= res["real_vs_real"]["IS"] <= 10
    # the checkpoint is tensors only and matches the configuration it was trained with
    cfg = replace(digits.DigitsConfig(), **digits.QUICK)
    ckpt = digits.load_checkpoint(cfg, str(run / "pretrained.pt"))
    assert ckpt["generator_steps"] >= cfg.pretrain_min
    with pytest.raises(ValueError, match="architecture"):
        digits.load_checkpoint(digits.DigitsConfig(), str(run / "pretrained.pt"))
    # 30 generator steps are no plateau: said loudly, in results.json and in the checkpoint
    assert "PLATEAU NOT REACHED" in printed
    assert "PLATEAU NOT REACHED" in (run / "table.md").read_text()
    assert res["plateau_reached"] is False and res["pretrain"]["plateau_reached"] is False
    assert res["pretrain_steps"] == res["pretrain"]["stopped_at"] == cfg.pretrain_max
    assert ckpt["plateau_reached"] is False and ckpt["generator_steps"] == cfg.pretrain_max
    # the rule is stated in config.json, in words and in its settings
    config = json.loads((run / "config.json").read_text())["config"]
    assert "least-squares line through the last 3 evaluations" in config["plateau_rule"]
    assert (config["plateau_window"], config["patience"]) == (3, cfg.patience)
    # the rule's decision can be re-checked from the curve in results.json
    curve = res["pretrain"]
    decision = digits.plateau_rule(curve["generator_steps"], curve["IS"], cfg)
    assert decision["stop"] == len(curve["IS"]) - 1 and decision["plateau_reached"] is False
    # --checkpoint reuse carries the checkpoint's record; an older checkpoint without one is
    # flagged as unknown
    del ckpt["plateau_reached"]
    torch.save(ckpt, tmp_path / "old.pt")
    out = tmp_path / "reuse"
    assert cli.main(["reproduce", "digits", "--quick", "--out", str(out), "--no-progress",
                     "--checkpoint", str(tmp_path / "old.pt"), "--arms", "continued"]) == 0
    assert "does not record whether its pretraining reached the plateau" in \
        capsys.readouterr().out
    (run2,) = out.iterdir()
    res2 = json.loads((run2 / "results.json").read_text())
    assert res2["plateau_reached"] is None and res2["pretrain"] is None


def test_dcgan_critic_input_gradients_match_autograd():
    critic = DCGANCritic(4, seed=1).double()
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    p = torch.randn(5, 1, 8, 8, dtype=torch.float64, requires_grad=True)
    values, grad = critic.values_and_input_gradients(x, p)
    torch.testing.assert_close(values, critic(x))
    (expected,) = torch.autograd.grad(critic(p).sum(), p, create_graph=True)
    torch.testing.assert_close(grad, expected)
    # and the penalty's parameter gradients agree (second derivatives through it)
    w = critic.body[0].weight
    (a,) = torch.autograd.grad(grad.square().sum(), w)
    (b,) = torch.autograd.grad(expected.square().sum(), w)
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="scalar"):
        DCGANCritic(4, 3).values_and_input_gradients(x, p)


def test_arms_option_selects_the_arms_in_table_order():
    parser = cli.build_parser()

    def arms(*extra):
        args = parser.parse_args(["reproduce", "digits", *extra])
        return digits.run_arms(digits.config_from_args(args))

    assert arms() == list(digits.ARMS.values())
    assert arms("--no-mmd") == ["Algorithm 1 (WGAN-GP critic)", "WGAN-GP continued"]
    assert arms("--arms", "mmd", "wgan-gp") == ["Algorithm 1 (WGAN-GP critic)",
                                                "Algorithm 1 (MMD critic)"]
    assert digits.config_from_args(parser.parse_args(
        ["reproduce", "digits", "--arms", "mmd"])).arms == ("mmd",)


# --------------------------------------------------------------------------- the plateau rule

RULE = replace(digits.DigitsConfig(), pretrain_min=1500, pretrain_max=5000)


def _steps(n):
    return [RULE.eval_every * k for k in range(n)]


def test_plateau_rule_flags_a_rising_score_at_the_cap():
    steps = _steps(21)  # 0 .. 5000
    scores = [2.0 + 0.0004 * s for s in steps]  # +0.1 per evaluation: 10% per window at 5
    out = digits.plateau_rule(steps, scores, RULE)
    assert out["stop"] == 20 and steps[out["stop"]] == RULE.pretrain_max
    assert out["plateau_reached"] is False
    assert not any(c["flat"] for c in out["checks"] if c is not None)
    assert digits.plateau_rule(steps[:10], scores[:10], RULE)["stop"] is None  # keep going


def test_plateau_rule_stops_on_a_flat_score_after_the_minimum():
    steps = _steps(21)
    out = digits.plateau_rule(steps, [5.0] * 21, RULE)
    # flat from the first full window (index 5), twice in a row by index 6, but not
    # before pretrain_min = 1500 steps (index 6)
    assert out["plateau_reached"] is True and steps[out["stop"]] == 1500
    assert out["checks"][:5] == [None] * 5


def test_plateau_rule_noisy_flat_stops_and_the_threshold_covers_the_noise():
    g = torch.Generator().manual_seed(0)
    steps = _steps(41)
    scores = (5.0 + 0.3 * torch.randn(41, generator=g, dtype=torch.float64)).tolist()
    out = digits.plateau_rule(steps, scores, RULE)
    assert out["plateau_reached"] is True and steps[out["stop"]] < 5000
    for c in out["checks"][5:out["stop"] + 1]:
        assert c["threshold"] >= RULE.noise_factor * c["noise"] > 0
    # the noise estimate (residual std of the window's line) measures the jitter of 0.3
    noise = torch.tensor([c["noise"] for c in out["checks"] if c is not None])
    assert 0.15 < float(noise.mean()) < 0.45
    # and a 2% tolerance alone (0.1 at IS 5) is below that jitter
    assert RULE.plateau_tol * 5.0 < float(noise.mean())


def test_plateau_rule_waits_for_the_rise_to_end():
    steps = _steps(41)
    knee = 3000
    scores = [1.0 + 4.0 * min(s, knee) / knee for s in steps]  # rises, then flat at 5
    out = digits.plateau_rule(steps, scores, replace(RULE, pretrain_max=10000))
    assert out["plateau_reached"] is True
    # the first flat window starts at the knee: 5 evaluations later, and one more for patience
    assert steps[out["stop"]] == knee + 250 * (RULE.plateau_window - 1 + RULE.patience - 1)


def test_the_2000_step_capped_run_of_the_old_rule_is_no_plateau():
    # IS every 250 steps of the run documented before this rule (docs/digits.md)
    scores = [1.060, 3.490, 4.855, 4.883, 4.937, 5.115, 5.489, 5.529, 5.663]
    out = digits.plateau_rule(_steps(9), scores, replace(RULE, pretrain_max=10000))
    assert out["stop"] is None and not out["checks"][-1]["flat"]


def test_plateau_rule_rejects_bad_input_and_never_calls_a_diverged_run_flat():
    with pytest.raises(ValueError, match="plateau_window"):
        digits.plateau_rule(_steps(5), [1.0] * 5, replace(RULE, plateau_window=2))
    with pytest.raises(ValueError, match="steps and scores"):
        digits.plateau_rule(_steps(5), [1.0] * 4, RULE)
    scores = [5.0] * 8 + [float("nan")] * 13
    out = digits.plateau_rule(_steps(21), scores, RULE)
    assert out["plateau_reached"] is True  # the flat stretch before the NaNs stops it
    nan_run = digits.plateau_rule(_steps(21), [float("nan")] * 21, RULE)
    assert nan_run["plateau_reached"] is False and nan_run["stop"] == 20


@pytest.mark.parametrize("flat", [True, False])
def test_pretrain_figure_says_where_and_why_it_stopped(flat):
    pytest.importorskip("matplotlib")
    from flowkit import plotting

    steps = _steps(12)
    scores = [5.0] * 12 if flat else [2.0 + 0.001 * s for s in steps]
    curve = {"generator_steps": steps, "IS": scores, "FD": [30.0 - s / 500 for s in steps],
             "plateau_reached": flat, "stopped_at": steps[-1]}
    fig = digits.pretrain_figure(curve, {"IS": 9.0, "FD": 2.4}, RULE)
    labels = [line.get_label() for line in fig.axes[0].lines]
    assert ("plateau reached at 2750 steps" if flat else "cap of 2750 steps: NO plateau") \
        in labels
    assert plotting.figure_problems(fig) == []
    import matplotlib.pyplot as plt

    plt.close(fig)
