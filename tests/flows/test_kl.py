"""KL flows: Langevin and the blob method against the Ornstein-Uhlenbeck closed form."""

import math

import pytest
import torch

import flowkit as fk
from flowkit.flows import BlobKL, langevin, langevin_step, ou_moments, ula_moments

DT = torch.float64
M = torch.tensor([0.5, -0.5], dtype=DT)
S = torch.tensor([[1.0, 0.3], [0.3, 0.5]], dtype=DT)
P = torch.linalg.inv(S)


def _score(x):
    return -(x - M) @ P


def _moments(x):
    return x.mean(0), torch.cov(x.T, correction=0)


def test_ou_moments_solve_the_moment_odes():
    m0, c0 = torch.tensor([2.0, 1.0], dtype=DT), torch.diag(torch.tensor([0.25, 0.1], dtype=DT))
    t, h = 0.7, 1e-6
    (ma, ca), (mb, cb) = ou_moments(m0, c0, M, S, t + h), ou_moments(m0, c0, M, S, t - h)
    m, c = ou_moments(m0, c0, M, S, t)
    torch.testing.assert_close((ma - mb) / (2 * h), -P @ (m - M))
    torch.testing.assert_close((ca - cb) / (2 * h), -P @ c - c @ P + 2 * torch.eye(2, dtype=DT))
    m_inf, c_inf = ou_moments(m0, c0, M, S, 60.0)
    torch.testing.assert_close((m_inf, c_inf), (M, S))


def test_langevin_moments_follow_ornstein_uhlenbeck(gen):
    # tolerance: 4 standard errors of the sample moments at time t (the noise is the only
    # randomness once the empirical start moments are plugged in), plus the scheme's O(eta)
    # bias, measured exactly as |ULA recursion - OU closed form|
    n, eta, steps = 4000, 0.01, 100
    x0 = 0.5 * torch.randn(n, 2, generator=gen, dtype=DT) + 2.0
    m0, c0 = _moments(x0)
    res = langevin(x0, eta, steps, score=_score, seed=7)
    m, c = _moments(res.particles)
    m_ou, c_ou = ou_moments(m0, c0, M, S, eta * steps)
    m_ula, c_ula = ula_moments(m0, c0, M, S, eta, steps)
    var = torch.diagonal(c_ou)
    se_m = (var / n).sqrt()
    se_c = ((var[:, None] * var[None, :] + c_ou**2) / n).sqrt()
    assert bool(((m - m_ula).abs() <= 4 * se_m).all())
    assert bool(((c - c_ula).abs() <= 4 * se_c).all())
    assert bool(((m - m_ou).abs() <= 4 * se_m + (m_ula - m_ou).abs()).all())
    assert bool(((c - c_ou).abs() <= 4 * se_c + (c_ula - c_ou).abs()).all())


def test_langevin_is_seeded_and_beta_scales_the_noise(gen):
    x0 = torch.randn(10, 2, generator=gen, dtype=DT)
    a = langevin(x0, 0.1, 3, score=_score, seed=1).particles
    b = langevin(x0, 0.1, 3, log_density=lambda z: -0.5 * ((z - M) @ P * (z - M)).sum(1),
                 seed=1).particles
    torch.testing.assert_close(a, b)
    s = _score(x0)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    one, four = langevin_step(x0, s, 0.1, g1), langevin_step(x0, s, 0.1, g2, beta=4.0)
    drift = x0 + 0.1 * s
    torch.testing.assert_close(four - drift, (one - drift) / 2)


def test_blob_gradient_convention_against_autograd(gen):
    x = torch.randn(15, 2, generator=gen, dtype=DT)
    obj = BlobKL(lambda z: -0.5 * (z**2).sum(1) - 0.1 * (z**4).sum(1), bandwidth=0.4)
    z = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(obj.value(z), z)
    torch.testing.assert_close(obj.functional_gradient(x), 15 * g)
    w = torch.rand(15, generator=gen, dtype=DT)
    w = w / w.sum()
    z = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(obj.value(z, w), z)
    torch.testing.assert_close(obj.first_variation(x, w).grad(x), g / w[:, None])
    psi = obj.first_variation(x)  # the closed-form gradient is the potential's, anywhere
    y = 2 * torch.randn(9, 2, generator=gen, dtype=DT)
    torch.testing.assert_close(psi.grad(y), fk.Potential.grad(psi, y))


def test_blob_descends_and_dtypes_agree(gen):
    x = 0.5 * torch.randn(60, 1, generator=gen, dtype=DT) + 2
    obj = BlobKL(lambda z: -0.5 * (z**2).sum(1), bandwidth=0.2)
    g = obj.functional_gradient(x)
    assert float(obj.value(x - 1e-3 * g)) < float(obj.value(x))
    torch.testing.assert_close(obj.value(x.float()).double(), obj.value(x), rtol=1e-5,
                               atol=1e-5)
    torch.testing.assert_close(obj.functional_gradient(x.float()).double(), g, rtol=1e-4,
                               atol=1e-4)


def test_blob_moments_follow_ornstein_uhlenbeck_approximately(gen):
    # Deterministic particles, N = 200 in 1-D, delta = 0.2, eta = 0.02 to t = 1.
    # Mean: the blob's entropy forces cancel in pairs (sum_i w_i grad psi_entropy(x_i) = 0),
    # so the mean follows the Euler (ULA) mean recursion exactly, and the OU mean up to that
    # recursion's O(eta) bias (0.007 here). Variance: approximate, measured 0.2% off the OU
    # closed form (0.05% of it the Euler bias); the errors are the blob's entropy bias
    # (order delta^2 = 0.04 relative at most) and its N-point quadrature, so the
    # tolerance is 2%. delta must exceed the particle spacing: at delta = 0.05 the variance
    # is 40% too large (the entropy then sees single particles).
    n, eta, steps = 200, 0.02, 50
    x0 = 0.5 * torch.randn(n, 1, generator=gen, dtype=DT) + 2.0
    m0, c0 = _moments(x0)
    zero, one = torch.zeros(1, dtype=DT), torch.ones(1, 1, dtype=DT)
    obj = BlobKL(score=lambda x: -x, bandwidth=0.2)
    flow = fk.FunctionalGradientDescent(obj, eta, progress=False, keep_layers=False)
    m, c = _moments(flow.run(x0, steps).particles)
    m_ou, c_ou = ou_moments(m0, c0.reshape(1, 1), zero, one, eta * steps)
    m_ula, _ = ula_moments(m0, c0.reshape(1, 1), zero, one, eta, steps)
    assert abs(float(m - m_ula)) < 1e-12
    assert abs(float(m - m_ou)) <= abs(float(m_ula - m_ou)) + 1e-12
    assert abs(float(c) / float(c_ou) - 1) < 0.02


def test_bad_inputs_name_the_argument(gen):
    x = torch.randn(5, 2, generator=gen)
    with pytest.raises(ValueError, match="step_size"):
        langevin(x, 0.0, 3, score=_score)
    with pytest.raises(ValueError, match="beta"):
        langevin(x, 0.1, 3, score=_score, beta=-1.0)
    with pytest.raises(TypeError, match="seed"):
        langevin(x, 0.1, 3, score=_score, seed="a")
    with pytest.raises(ValueError, match="bandwidth"):
        BlobKL(score=_score, bandwidth=0.0)
    with pytest.raises(NotImplementedError, match="log_density"):
        BlobKL(score=_score).value(x)
    with pytest.raises(ValueError, match="t must"):
        ou_moments(M, S, M, S, -1.0)
    assert math.isfinite(float(BlobKL(score=_score).functional_gradient(x).sum()))


def test_langevin_float32_and_float64_runs_agree_pathwise():
    # the noise is drawn in float64 and cast, so a float32 run follows the float64 run's
    # path (not only its law): the two differ by float32 rounding, accumulated over steps
    x64 = torch.randn(200, 2, generator=torch.Generator().manual_seed(0), dtype=DT) + 2.0
    x32 = x64.float()
    def score(x):  # _score in the particles' dtype
        return -(x - M.to(x.dtype)) @ P.to(x.dtype)

    a = langevin(x64, 0.05, 30, score=score, seed=4).particles
    b = langevin(x32, 0.05, 30, score=score, seed=4).particles
    assert b.dtype == torch.float32
    torch.testing.assert_close(b.double(), a, rtol=0, atol=1e-5)

    def engine(x):
        flow = fk.FunctionalGradientDescent(fk.flows.Langevin(score=score), 0.05,
                                            progress=False, noise_seed=4)
        return flow.run(x, 30)

    e64, e32 = engine(x64), engine(x32)
    torch.testing.assert_close(e32.particles.double(), e64.particles, rtol=0, atol=1e-5)
    # the float32 stack replays its own run (Algorithm 2) bit for bit
    assert torch.equal(e32.layers(x32), e32.particles)
