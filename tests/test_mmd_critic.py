"""The gradient-regularised MMD critic, alone and inside Algorithm 1."""

import pytest
import torch

import flowkit as fk
from flowkit.critics import MMDCritic
from flowkit.objectives import AdversarialObjective


def test_fit_raises_the_mmd_and_returns_a_frozen_witness(gen):
    data = torch.randn(200, 2, generator=gen) + 2.0
    fake = torch.randn(200, 2, generator=gen)
    critic = MMDCritic(dim=2, steps=30, seed=0, penalty_weight=0.1)
    psi = critic.fit(fake, data)
    losses = critic.last_losses
    assert losses.shape == (30,) and float(losses[-5:].mean()) < float(losses[:5].mean())
    # psi = -f: lower on the data than on the fakes; frozen
    assert float(psi(data).mean()) < float(psi(fake).mean())
    assert not any(p.requires_grad for p in psi.parameters())
    before = psi(fake[:5]).clone()
    critic.fit(fake, data, steps=3)
    assert torch.equal(psi(fake[:5]), before)


def test_witness_gradient_is_autograd_of_the_snapshot(gen):
    data = torch.randn(50, 2, generator=gen, dtype=torch.float64) + 1.0
    fake = torch.randn(40, 2, generator=gen, dtype=torch.float64)
    net = fk.nn.MLP(2, 4, hidden=8, depth=2).double()
    critic = MMDCritic(net, fk.kernels.Gaussian(1.0), penalty_weight=1.0, steps=2, seed=0)
    psi = critic.fit(fake, data)
    z = torch.randn(6, 2, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        fz, fx, fy = psi.features(z), psi.features(fake), psi.features(data)
    k = fk.kernels.Gaussian(1.0)
    want = k(fz, fx).mean(1) - k(fz, fy).mean(1)
    torch.testing.assert_close(psi(z), want)
    assert psi.grad(z).shape == z.shape


def test_algorithm_1_runs_with_the_mmd_critic(gen):
    data = fk.datasets.eight_gaussians(200, seed=0)
    critic = MMDCritic(dim=2, steps=10, seed=0, penalty_weight=1.0)
    obj = AdversarialObjective(critic, data)
    x0 = 0.3 * torch.randn(200, 2, generator=gen)
    mon = fk.monitors.MMD(data, fk.kernels.Gaussian(0.5))
    res = fk.FunctionalGradientDescent(obj, 0.5, progress=False, monitors=[mon],
                                       monitor_every=15).run(x0, 15)
    assert res.history["MMD"][-1] < 0.8 * res.history["MMD"][0]


def test_state_dict_round_trip_resumes_identically(gen):
    data = torch.randn(60, 2, generator=gen)
    fake = torch.randn(60, 2, generator=gen)
    a = MMDCritic(dim=2, steps=3, seed=1)
    a.fit(fake, data)
    b = MMDCritic(dim=2, steps=3, seed=99)
    b.load_state_dict(a.state_dict())
    pa, pb = a.fit(fake, data), b.fit(fake, data)
    torch.testing.assert_close(pa(fake), pb(fake))


def test_bad_arguments():
    with pytest.raises(ValueError, match="penalty_weight"):
        MMDCritic(penalty_weight=-1.0)
    with pytest.raises(TypeError, match="features"):
        MMDCritic(features="mlp")
    with pytest.raises(TypeError, match="kernel"):
        MMDCritic(kernel=1.0)
    with pytest.raises(ValueError, match="penalty must be one of"):
        MMDCritic(penalty="none")
