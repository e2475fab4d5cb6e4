"""Sobolev descent with finite features: Mroueh, Sercu & Raj 2019 [MrouehEtAl19], the
critic ``a* = (D_q + lam I)^-1 (E_p Phi - E_q Phi)`` and the particle step along its
gradient (docs/mmd.md, sec. 6)."""

import pytest
import torch

import flowkit as fk
from flowkit.objectives import RandomFourierFeatures, SobolevDescent


def test_critic_solves_the_regularised_problem(gen):
    y = torch.randn(80, 2, generator=gen, dtype=torch.float64) + 1.0
    x = torch.randn(60, 2, generator=gen, dtype=torch.float64)
    obj = SobolevDescent(y, n_features=32, bandwidth=1.0, lam=1e-2, seed=0)
    a = obj.critic(x)
    # a* maximises E_p u - E_q u - 1/2 (E_q |grad u|^2 + lam |a|^2): its gradient vanishes
    feats = obj.features
    delta = feats(y).mean(0) - feats(x).mean(0)
    z = x.clone().requires_grad_(True)
    jac = torch.func.vmap(torch.func.jacrev(lambda v: feats(v[None])[0]))(z.detach())
    d_q = torch.einsum("nmd,nkd->mk", jac, jac) / len(x)
    torch.testing.assert_close(obj.gram(x), d_q)
    torch.testing.assert_close(d_q @ a + 1e-2 * a, delta)


def test_rff_closed_form_gradient_matches_autograd(gen):
    y = torch.randn(50, 3, generator=gen, dtype=torch.float64)
    x = torch.randn(40, 3, generator=gen, dtype=torch.float64)
    psi = SobolevDescent(y, n_features=16, seed=1).first_variation(x)
    z = torch.randn(7, 3, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(psi.grad(z), fk.Potential.grad(psi, z))


def test_general_features_through_autodiff(gen):
    y = torch.randn(50, 2, generator=gen, dtype=torch.float64)
    x = torch.randn(40, 2, generator=gen, dtype=torch.float64)
    rff = RandomFourierFeatures(2, 24, 0.8, seed=2, dtype=torch.float64)

    class Wrapped(torch.nn.Module):  # same features, not recognised as RFF: autodiff path
        def forward(self, v):
            return rff(v)

    a = SobolevDescent(y, rff, lam=1e-3).critic(x)
    b = SobolevDescent(y, Wrapped(), lam=1e-3, jacobian_block=7).critic(x)
    torch.testing.assert_close(a, b)


def test_sobolev_descent_decreases_the_mmd(gen):
    y = fk.datasets.eight_gaussians(200, seed=0, dtype=torch.float64)
    x0 = 0.3 * torch.randn(200, 2, generator=gen, dtype=torch.float64)
    obj = SobolevDescent(y, n_features=128, bandwidth=0.3, lam=1e-3)
    res = fk.FunctionalGradientDescent(obj, 0.1, progress=False).run(x0, 60)
    assert float(obj.feature_mmd2(res.particles)) < 0.05 * float(obj.feature_mmd2(x0))
    k = fk.kernels.Gaussian(0.3)
    assert float(fk.kernels.mmd2(res.particles, y, k)) < 0.2 * float(fk.kernels.mmd2(x0, y, k))


def test_bad_arguments(gen):
    y = torch.randn(10, 2, generator=gen)
    with pytest.raises(ValueError, match="lam"):
        SobolevDescent(y, lam=0.0)
    with pytest.raises(ValueError, match="bandwidth"):
        SobolevDescent(y, bandwidth=-1.0)
    with pytest.raises(TypeError, match="features"):
        SobolevDescent(y, features=3)
