"""Wasserstein-Fisher-Rao MMD flow: weights stay a probability, eta_w = 0 is the MMD flow."""

import pytest
import torch

import flowkit as fk
from flowkit.flows import WeightedWitness, weighted_mmd2, wfr_mmd_flow, wfr_step
from flowkit.kernels import Gaussian

DT = torch.float64


def _data(gen, n=30, m=40):
    return (torch.randn(n, 2, generator=gen, dtype=DT) + 2.0,
            torch.randn(m, 2, generator=gen, dtype=DT))


def test_eta_w_zero_is_the_plain_mmd_flow_exactly(gen):
    x0, y = _data(gen)
    k = Gaussian(1.0)
    mine = wfr_mmd_flow(x0, y, k, eta=0.5, eta_w=0.0, n_steps=20)
    engine = fk.FunctionalGradientDescent(fk.objectives.MMD(y, k), 0.5, progress=False)
    ref = engine.run(x0, 20).particles
    assert torch.equal(mine.particles, ref)
    assert torch.equal(mine.weights, torch.full((30,), 1 / 30, dtype=DT))


def test_weights_stay_a_probability_and_mmd_decreases(gen):
    x0, y = _data(gen)
    res = wfr_mmd_flow(x0, y, Gaussian(1.0), eta=0.5, eta_w=5.0, n_steps=60)
    assert bool((res.weights >= 0).all())
    assert abs(float(res.weights.sum()) - 1) < 1e-12
    assert res.history["mmd2"][-1] < 0.5 * res.history["mmd2"][0]
    assert not torch.allclose(res.weights, torch.full_like(res.weights, 1 / 30))
    # huge weight steps underflow some weights to 0, never to NaN or a negative number
    big = wfr_mmd_flow(x0, y, Gaussian(1.0), eta=0.5, eta_w=1e6, n_steps=3)
    assert bool((big.weights >= 0).all()) and abs(float(big.weights.sum()) - 1) < 1e-12


def test_weight_step_is_the_multiplicative_update(gen):
    x, y = _data(gen)
    w = torch.rand(30, generator=gen, dtype=DT)
    w = w / w.sum()
    psi = WeightedWitness(x, w, y, Gaussian(0.8))
    v = psi(x)
    expect = w * torch.exp(-0.3 * (v - w @ v))
    _, w_new = wfr_step(x, w, y, Gaussian(0.8), 0.1, 0.3)
    torch.testing.assert_close(w_new, expect / expect.sum())


def test_weighted_witness_is_the_first_variation(gen):
    # (1/w_i) d MMD^2(mu_w, nu) / d x_i = grad psi(x_i), and psi = d MMD^2 / d w (+ const)
    x, y = _data(gen)
    w = torch.rand(30, generator=gen, dtype=DT)
    w = w / w.sum()
    psi = WeightedWitness(x, w, y, Gaussian(1.2))
    z = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(weighted_mmd2(z, w, y, Gaussian(1.2)), z)
    torch.testing.assert_close(psi.grad(x), g / w[:, None])
    torch.testing.assert_close(psi.grad(x), fk.Potential.grad(psi, x))
    mmd = fk.objectives.MMD(y, Gaussian(1.2))
    torch.testing.assert_close(weighted_mmd2(x, None, y, Gaussian(1.2)), mmd.value(x))


def test_bad_inputs_name_the_argument(gen):
    x, y = _data(gen)
    with pytest.raises(ValueError, match="eta_w"):
        wfr_mmd_flow(x, y, eta_w=-1.0)
    with pytest.raises(ValueError, match="weights0"):
        wfr_mmd_flow(x, y, weights0=torch.ones(30, dtype=DT))
    with pytest.raises(TypeError, match="kernel"):
        wfr_mmd_flow(x, y, kernel="gauss")
    with pytest.raises(ValueError, match="x has event shape"):
        wfr_mmd_flow(torch.randn(4, 3, dtype=DT), y)
