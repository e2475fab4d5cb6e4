"""Velocity-field layers, noisy (Langevin-type) layers, their replay and their checkpoints."""

import pytest
import torch

import flowkit as fk
from flowkit.layers import VelocityField, VelocityLayer

A = torch.tensor([[1.0, -2.0], [2.0, 1.0]], dtype=torch.float64)  # not symmetric: no potential


class Linear(VelocityField):
    def __init__(self, a):
        super().__init__()
        self.register_buffer("a", a)

    def forward(self, x):
        return x @ self.a.T


class Spiral(fk.FunctionalObjective):
    """dx/dt = -A x: a velocity that is not the gradient of any potential."""

    def velocity(self, x, weights=None):
        return Linear(A.to(x.dtype))


class Half(fk.Potential):
    def forward(self, x):
        return 0.5 * (x ** 2).sum(1)


class Langevin(fk.FunctionalObjective):
    """KL(mu | N(0, I / beta)): drift grad V, V = |x|^2 / 2, plus sqrt(2 eta / beta) noise."""

    def __init__(self, beta=1.0):
        self.temperature = beta

    def first_variation(self, x, weights=None):
        return Half()


class NoisySpiral(Spiral):
    temperature = 4.0

    def update_weights(self, x, weights, potential, step_size):  # a weight flow, with noise
        w = weights * torch.exp(-step_size * (x ** 2).sum(1))
        return w / w.sum()


def _x0(n=50, seed=0):
    return torch.randn(n, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def test_a_velocity_field_flow_stacks_velocity_layers():
    x0 = _x0()
    res = fk.FunctionalGradientDescent(Spiral(), 0.1, progress=False).run(x0, 5)
    expected = x0
    for _ in range(5):
        expected = expected - 0.1 * expected @ A.T
    torch.testing.assert_close(res.particles, expected)
    assert all(type(layer) is VelocityLayer for layer in res.layers)
    torch.testing.assert_close(res.layers(x0), res.particles)
    with pytest.raises(TypeError, match="first_variation.*or velocity"):
        fk.FunctionalGradientDescent(type("Empty", (fk.FunctionalObjective,), {})(), 0.1)


def test_gradient_layers_are_velocity_layers():
    layer = fk.GradientLayer(Half(), 0.5)
    x = _x0(4)
    assert isinstance(layer, VelocityLayer) and layer.noise(x) is None
    torch.testing.assert_close(layer(x), 0.5 * x)


def test_noisy_layers_replay_under_algorithm_2():
    x0 = _x0(400)
    res = fk.FunctionalGradientDescent(Langevin(), 0.05, progress=False, noise_seed=3).run(x0, 20)
    # the stack replays the run exactly: every layer draws its noise from its own seed
    assert torch.equal(res.layers(x0), res.particles)
    z = _x0(300, seed=7)
    assert torch.equal(res.layers(z), res.layers(z))
    # fresh noise from a generator: the same seed gives the same output, another does not
    a = res.layers(z, generator=torch.Generator().manual_seed(1))
    b = res.layers(z, generator=torch.Generator().manual_seed(1))
    c = res.layers(z, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError, match="generator="):
        res.layers(z, batch_size=100)
    again = fk.FunctionalGradientDescent(Langevin(), 0.05, progress=False,
                                         noise_seed=3).run(x0, 20)
    assert torch.equal(again.particles, res.particles)


def test_langevin_layers_sample_the_gibbs_measure():
    # unadjusted Langevin on V = |x|^2 / 2, beta = 2: stationary variance
    # 1 / (beta (1 - eta / 2)) per coordinate, i.e. 0.5 up to the step's bias
    x0 = 3.0 + _x0(4000)
    res = fk.FunctionalGradientDescent(Langevin(beta=2.0), 0.1, progress=False).run(x0, 80)
    var = res.particles.var(0)
    torch.testing.assert_close(var, torch.full_like(var, 1 / (2 * 0.95)), rtol=0.08, atol=0)
    assert float(res.particles.mean(0).abs().max()) < 0.06


def test_checkpoint_resume_is_bit_identical_with_weights_and_noise(tmp_path):
    x0 = _x0()
    full = fk.FunctionalGradientDescent(NoisySpiral(), 0.05, progress=False).run(x0, 9)
    ck = tmp_path / "noisy.ckpt"
    fk.FunctionalGradientDescent(NoisySpiral(), 0.05, progress=False).run(
        x0, 4, checkpoint=ck, checkpoint_every=3)
    res = fk.FunctionalGradientDescent(NoisySpiral(), 0.05, progress=False).resume(
        ck, 9, trusted_classes=[Linear])
    assert torch.equal(res.particles, full.particles)
    assert torch.equal(res.weights, full.weights)
    assert torch.equal(res.layers(x0), full.layers(x0))
    assert [layer.seed for layer in res.layers] == [layer.seed for layer in full.layers]
