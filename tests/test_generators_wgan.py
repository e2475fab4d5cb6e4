"""The WGAN-GP baseline trainer (parameter space), counting critic steps."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import flowkit as fk
from flowkit.generators import WGANGP


def _data(n=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    return 0.1 * torch.randn(n, 2, generator=g) + torch.tensor([0.5, -0.4])


def test_counts_critic_and_generator_steps():
    gan = WGANGP(_data(), hidden=16, n_critic=5, seed=0)
    history = gan.train(7, monitors=[fk.monitors.W2(_data())], monitor_every=3)
    assert gan.generator_steps == 7 and gan.critic_steps == 35
    assert history.generator_steps == [0, 3, 6, 7]
    assert history.critic_steps == [0, 15, 30, 35]
    assert len(history.metrics["W2"]) == 4 and history.metrics["W2_method"][0] == "exact"
    assert len(history.elapsed) == 4 and history.elapsed == sorted(history.elapsed)
    with pytest.warns(DeprecationWarning, match="attributes"):
        assert history["W2"] == history.metrics["W2"]
    assert dict(history.items())["critic_steps"] == [0, 15, 30, 35]  # serialisers: no warning


def test_generator_learns_a_shifted_blob():
    data = _data()
    gan = WGANGP(data, hidden=32, depth=3, lr=1e-3, seed=0)
    critic_lr = gan.critic.optimizer.param_groups[0]["lr"]
    assert critic_lr == 1e-3  # the default critic shares the trainer's optimizer settings
    history = gan.train(150, monitors=[fk.monitors.W2(data)], monitor_every=150)
    w2 = history.metrics["W2"]
    assert w2[-1] < 0.5 * w2[0], w2
    samples = gan.sample(100)
    assert samples.shape == (100, 2) and float(samples.abs().max()) < 1.0  # tanh output


def test_generator_step_leaves_critic_gradients_alone():
    gan = WGANGP(_data(), hidden=8, seed=0)
    train, recorded = gan.critic.train, []

    def spy(*args, **kwargs):
        out = train(*args, **kwargs)
        recorded.append([p.grad.clone() for p in gan.critic.net.parameters()])
        return out

    gan.critic.train = spy
    before = [p.detach().clone() for p in gan.generator.parameters()]
    gan.step()
    # the generator's backward pass fills only the generator's gradients
    for p, g in zip(gan.critic.net.parameters(), recorded[-1]):
        assert torch.equal(p.grad, g)
    assert any(not torch.equal(p, q) for p, q in zip(gan.generator.parameters(), before))


def test_same_seed_same_samples_and_custom_parts():
    a, b = WGANGP(_data(), hidden=8, seed=3), WGANGP(_data(), hidden=8, seed=3)
    a.train(3)
    b.train(3)
    z = a.latents(5, torch.Generator().manual_seed(0))
    assert torch.equal(a.sample(z), b.sample(z))
    critic = fk.critics.WGANGPCritic(dim=2, hidden=8, steps=2, seed=0)
    gen = nn.Sequential(nn.Linear(3, 2), nn.Tanh())
    c = WGANGP(_data(), critic=critic, generator=gen, latent_dim=3, n_critic=2, seed=0)
    c.train(2)
    assert c.critic is critic and critic.total_steps == 4


def test_wgangp_bad_inputs():
    data = _data()
    with pytest.raises(ValueError, match="n_critic"):
        WGANGP(data, n_critic=0)
    with pytest.raises(TypeError, match="data"):
        WGANGP(data.numpy())
    with pytest.raises(TypeError, match="critic"):
        WGANGP(data, critic=nn.Linear(2, 1))
    with pytest.raises(TypeError, match="generator"):
        WGANGP(data, generator=lambda z: z)
    with pytest.raises(ValueError, match="noise_std"):
        WGANGP(data, noise_std=0.0)
    with pytest.raises(ValueError, match="latent_dim"):
        WGANGP(data, latent_dim=0)
    with pytest.raises(ValueError, match="generator_steps"):
        WGANGP(data, hidden=4).train(-1)
