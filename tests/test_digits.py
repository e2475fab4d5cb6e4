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
