"""Objectives: the L2(mu) gradient convention, closed forms against autograd, constants."""

import pytest
import torch

import flowkit as fk
from flowkit.objectives import MMD, InteractionEnergy, QuadraticObjective

KERNELS = [
    fk.kernels.Gaussian(0.7),
    fk.kernels.InverseMultiquadric(1.3, -0.5),
    fk.kernels.Laplacian(0.9),
    fk.kernels.EnergyKernel(),
    fk.kernels.Gaussian(0.3) + 0.5 * fk.kernels.InverseMultiquadric(2.0),
]


def _objectives(gen):
    y = torch.randn(13, 3, generator=gen, dtype=torch.float64)
    A = torch.randn(3, 3, generator=gen, dtype=torch.float64)
    yield from (MMD(y, k) for k in KERNELS)
    yield QuadraticObjective(A @ A.T, torch.randn(3, generator=gen, dtype=torch.float64))
    yield InteractionEnergy(0.7, 1.9, torch.ones(3, dtype=torch.float64))


@pytest.mark.parametrize("block_size", [None, 4])
def test_functional_gradient_is_N_times_value_gradient(gen, block_size, n_times_value_grad):
    x = torch.randn(9, 3, generator=gen, dtype=torch.float64)
    for obj in _objectives(gen):
        if isinstance(obj, MMD) and block_size is not None:
            obj = MMD(obj.target, obj.kernel, block_size=block_size)
        got = obj.functional_gradient(x)
        want = n_times_value_grad(obj, x)
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11, msg=repr(obj))


def test_step_size_does_not_depend_on_N(gen):
    # Duplicating every particle leaves the empirical measure, hence the gradient, unchanged.
    y = torch.randn(20, 2, generator=gen, dtype=torch.float64)
    x = torch.randn(7, 2, generator=gen, dtype=torch.float64)
    obj = MMD(y, fk.kernels.Gaussian(1.0))
    torch.testing.assert_close(obj.functional_gradient(torch.cat([x, x]))[:7],
                               obj.functional_gradient(x))


def test_mmd_value_matches_explicit_kernel_matrices(gen):
    x = torch.randn(11, 2, generator=gen, dtype=torch.float64)
    y = torch.randn(8, 2, generator=gen, dtype=torch.float64) + 1.0
    for k in KERNELS:
        want = k(x, x).mean() - 2 * k(x, y).mean() + k(y, y).mean()
        torch.testing.assert_close(MMD(y, k).value(x), want)
        torch.testing.assert_close(fk.kernels.mmd2(x, y, k, block_size=3), want)


def test_witness_potential_is_the_first_variation(gen):
    # d/dt L((1-t) mu + t delta_z) at t=0 equals psi(z) - E_mu psi for the MMD witness.
    x = torch.randn(10, 2, generator=gen, dtype=torch.float64)
    y = torch.randn(12, 2, generator=gen, dtype=torch.float64)
    z = torch.randn(1, 2, generator=gen, dtype=torch.float64)
    k = fk.kernels.Gaussian(0.8)
    obj = MMD(y, k)
    psi = obj.first_variation(x)

    def value_of_mixture(t):
        w = torch.cat([torch.full((10,), (1 - t) / 10, dtype=torch.float64),
                       torch.tensor([t], dtype=torch.float64)])
        pts = torch.cat([x, z])
        return w @ k(pts, pts) @ w - 2 * (w @ k(pts, y)).mean() + k(y, y).mean()

    t = 1e-6
    fd = (value_of_mixture(t) - value_of_mixture(-t)) / (2 * t)
    torch.testing.assert_close(fd, psi(z)[0] - psi(x).mean(), rtol=1e-6, atol=1e-9)


def test_witness_grad_matches_autograd_and_self_interaction_is_finite(gen):
    x = torch.randn(10, 2, generator=gen, dtype=torch.float64)
    y = torch.randn(12, 2, generator=gen, dtype=torch.float64)
    for k in KERNELS:
        psi = MMD(y, k).first_variation(x)
        g = psi.grad(x)  # x coincides with the snapshot: zero distances on the diagonal
        assert torch.isfinite(g).all(), repr(k)
        z = torch.randn(5, 2, generator=gen, dtype=torch.float64)
        torch.testing.assert_close(psi.grad(z), fk.Potential.grad(psi, z), msg=repr(k))


def test_quadratic_constants(gen):
    A = torch.diag(torch.tensor([0.5, 3.0], dtype=torch.float64))
    obj = QuadraticObjective(A)
    assert obj.smoothness == pytest.approx(3.0)
    assert obj.minimum == 0.0
    assert float(obj.value(torch.zeros(4, 2, dtype=torch.float64))) == 0.0


def test_interaction_energy_minimizer_is_the_center():
    c = torch.tensor([1.0, -2.0], dtype=torch.float64)
    obj = InteractionEnergy(0.5, 2.0, c)
    assert obj.smoothness == pytest.approx(2.5)
    at_min = c.repeat(6, 1)
    assert float(obj.value(at_min)) == pytest.approx(0.0, abs=1e-14)
    assert torch.allclose(obj.functional_gradient(at_min), torch.zeros_like(at_min))
    flow = fk.FunctionalGradientDescent(obj, step_size=0.3, progress=False)
    x = flow.run(torch.randn(6, 2, dtype=torch.float64), 200).particles
    torch.testing.assert_close(x, at_min, atol=1e-8, rtol=0)


def test_mmd_smoothness_from_kernel():
    y = torch.zeros(3, 2)
    assert MMD(y, fk.kernels.Gaussian(0.5)).smoothness == pytest.approx(6 / 0.25)
    assert MMD(y, fk.kernels.EnergyKernel()).smoothness == float("inf")
