"""Weighted particles through the engine: the contract of FunctionalObjective with weights."""

import pytest
import torch

import flowkit as fk


class _Field(fk.Potential):
    """psi(z) = 1/2 |z|^2 + sum_j w_j exp(-|z - x_j|^2 / 2)."""

    def __init__(self, x, w):
        super().__init__()
        self.register_buffer("x", x.detach())
        self.register_buffer("w", w)

    def forward(self, z):
        k = torch.exp(-0.5 * torch.cdist(z, self.x) ** 2)
        return 0.5 * (z ** 2).sum(1) + k @ self.w


class WeightedEnergy(fk.FunctionalObjective):
    """L(mu) = int 1/2 |x|^2 dmu + 1/2 iint exp(-|x - y|^2 / 2) dmu dmu, mu = sum w_i delta."""

    def first_variation(self, x, weights=None):
        w = _uniform(x) if weights is None else weights
        return _Field(x, w)

    def value(self, x, weights=None):
        w = _uniform(x) if weights is None else weights
        k = torch.exp(-0.5 * torch.cdist(x, x) ** 2)
        return w @ (0.5 * (x ** 2).sum(1)) + 0.5 * w @ k @ w


class UnweightedEnergy(fk.FunctionalObjective):
    """The same objective written before weights existed (no weights argument)."""

    def first_variation(self, x):
        return _Field(x, _uniform(x))


def _uniform(x):
    return torch.full((x.shape[0],), 1.0 / x.shape[0], dtype=x.dtype)


def _x0(n=9, seed=0):
    return torch.randn(n, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def test_functional_gradient_is_the_weighted_l2_gradient():
    x = _x0()
    w = torch.rand(9, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    w = w / w.sum()
    obj = WeightedEnergy()
    z = x.clone().requires_grad_(True)
    (dl,) = torch.autograd.grad(obj.value(z, w), z)
    torch.testing.assert_close(obj.functional_gradient(x, w), dl / w[:, None])


def test_a_doubled_weight_is_two_copies():
    x = _x0()
    copies = torch.cat([x[:1], x])  # particle 0 twice, 10 particles, uniform
    w = torch.full((9,), 1.0 / 10, dtype=torch.float64)
    w[0] = 2.0 / 10
    kw = dict(progress=False, record_value=True, monitors=[fk.monitors.GradNorm()])
    weighted = fk.FunctionalGradientDescent(WeightedEnergy(), 0.3, **kw).run(x, 15, weights=w)
    dup = fk.FunctionalGradientDescent(WeightedEnergy(), 0.3, **kw).run(copies, 15)
    torch.testing.assert_close(weighted.particles, dup.particles[1:])
    torch.testing.assert_close(dup.particles[0], dup.particles[1])
    assert weighted.trace["grad_norm2"] == pytest.approx(dup.trace["grad_norm2"], rel=1e-12)
    assert weighted.trace["value"] == pytest.approx(dup.trace["value"], rel=1e-12)
    assert torch.equal(weighted.weights, w) and dup.weights is None
    # Algorithm 2: the layers are per-sample maps and replay the weighted run
    torch.testing.assert_close(weighted.layers(x), weighted.particles)


def test_objectives_without_weights_keep_working_for_uniform_ones():
    x = _x0()
    uniform = torch.full((9,), 1.0 / 9, dtype=torch.float64)
    old = fk.FunctionalGradientDescent(UnweightedEnergy(), 0.3, progress=False)
    new = fk.FunctionalGradientDescent(WeightedEnergy(), 0.3, progress=False)
    torch.testing.assert_close(old.run(x, 5, weights=uniform).particles,
                               new.run(x, 5).particles)
    skewed = uniform.clone()
    skewed[0], skewed[1] = 2.0 / 9, 0.0
    with pytest.raises(TypeError, match="UnweightedEnergy.first_variation.*takes no weights"):
        old.run(x, 5, weights=skewed)
    with pytest.raises(ValueError, match="weights must sum to 1"):
        new.run(x, 5, weights=2 * uniform)
    with pytest.raises(ValueError, match=r"weights must have shape \(9,\)"):
        new.run(x, 5, weights=uniform[:3])


class FisherRao(WeightedEnergy):
    """Adds the Fisher-Rao part of a WFR step: w_i <- w_i exp(-eta (psi_i - <psi>_w))."""

    def update_weights(self, x, weights, potential, step_size):
        psi = potential(x)
        w = weights * torch.exp(-step_size * (psi - weights @ psi))
        return w / w.sum()


def test_weights_updated_by_the_flow_are_checkpointed(tmp_path):
    x = _x0()
    full = fk.FunctionalGradientDescent(FisherRao(), 0.2, progress=False).run(x, 8)
    assert full.weights is not None and not torch.allclose(full.weights, full.weights[0])
    assert float(full.weights.sum()) == pytest.approx(1.0)
    ck = tmp_path / "wfr.ckpt"
    fk.FunctionalGradientDescent(FisherRao(), 0.2, progress=False).run(x, 5, checkpoint=ck)
    res = fk.FunctionalGradientDescent(FisherRao(), 0.2, progress=False).resume(
        ck, 8, trusted_classes=[_Field])
    assert torch.equal(res.particles, full.particles)
    assert torch.equal(res.weights, full.weights)
