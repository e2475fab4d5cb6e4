"""SVGD (Liu & Wang 2016): the direction, the peer ksddescent, the linear-kernel fact."""

import math

import pytest
import torch

import flowkit as fk
from flowkit.flows import SVGD, LinearKernel, median_bandwidth, svgd_velocity
from flowkit.kernels import Gaussian, InverseMultiquadric

ksdd = pytest.importorskip("ksddescent")
from ksddescent.kernels import svgd_direction  # noqa: E402

DT = torch.float64


def _score(x):
    return -(x - 1.0) / 2.0


def _dense_velocity(x, s, kernel, w):
    # phi(x_i) = sum_j w_j [k(x_j, x_i) s_j + grad_{x_j} k(x_j, x_i)], by autograd on y
    y = x.clone().requires_grad_(True)
    K = kernel(y, x)  # K[j, i] = k(y_j, x_i)
    out = K.T @ (w[:, None] * s)
    for i in range(x.shape[0]):
        (g,) = torch.autograd.grad((w * K[:, i]).sum(), y, retain_graph=True)
        out[i] += g.sum(0)
    return out.detach()


@pytest.mark.parametrize("kernel", [Gaussian(0.8), InverseMultiquadric(1.3, -0.5),
                                    Gaussian(0.5) + InverseMultiquadric(1.0)])
def test_velocity_matches_the_definition_with_weights(gen, kernel):
    x = torch.randn(17, 3, generator=gen, dtype=DT)
    w = torch.rand(17, generator=gen, dtype=DT)
    w = w / w.sum()
    mine = svgd_velocity(x, _score, kernel, w, block_size=5)
    torch.testing.assert_close(mine, _dense_velocity(x, _score(x), kernel, w))


def test_velocity_equals_ksddescent_direction(gen):
    x = torch.randn(60, 2, generator=gen, dtype=DT)
    sigma = 0.7  # ksddescent's bw: exp(-r^2 / (2 sigma))
    mine = svgd_velocity(x, _score, Gaussian(math.sqrt(sigma)))
    peer = svgd_direction(x, _score(x), sigma) / x.shape[0]
    assert float((mine - peer).norm() / peer.norm()) < 1e-6


def test_trajectory_equals_ksddescent_svgd(gen):
    # ksddescent.svgd: x += step * (K s - sum grad K) / n, i.e. flowkit's eta = step
    x0 = torch.randn(40, 2, generator=gen, dtype=DT) + 2.0
    sigma, step = 0.5, 0.3
    peer = ksdd.svgd(x0, _score, step, max_iter=50, bw=sigma, tol=0.0)
    mine = SVGD(score=_score, kernel=Gaussian(math.sqrt(sigma))).run(x0, step, 50).particles
    assert float((mine - peer).abs().max()) < 1e-5


def test_linear_kernel_matches_target_mean_and_covariance(gen):
    # Liu & Wang 2018, sec. 3.1: with k = 1 + x.y the fixed points have the Gaussian
    # target's mean and covariance exactly (empirical, 1/N), whatever the sample.
    m = torch.tensor([1.0, -2.0], dtype=DT)
    cov = torch.tensor([[2.0, 0.6], [0.6, 1.0]], dtype=DT)
    prec = torch.linalg.inv(cov)
    x0 = 0.5 * torch.randn(200, 2, generator=gen, dtype=DT)
    res = SVGD(score=lambda x: -(x - m) @ prec, kernel=LinearKernel()).run(x0, 0.05, 1500)
    x = res.particles
    xc = x - x.mean(0)
    torch.testing.assert_close(x.mean(0), m, atol=1e-6, rtol=0)
    torch.testing.assert_close(xc.T @ xc / x.shape[0], cov, atol=1e-6, rtol=0)


def test_log_density_equals_score(gen):
    x = torch.randn(20, 2, generator=gen, dtype=DT)
    a = SVGD(score=_score, bandwidth=1.0).velocity(x)(x)
    b = SVGD(log_density=lambda z: -((z - 1.0) ** 2).sum(1) / 4.0, bandwidth=1.0).velocity(x)(x)
    torch.testing.assert_close(a, b)


def test_median_heuristic_is_liu_wangs(gen):
    x = torch.randn(30, 2, generator=gen, dtype=DT)
    d = torch.cdist(x, x)
    med = d[torch.triu(torch.ones(30, 30, dtype=torch.bool), 1)].median()  # odd count: exact
    h2 = 0.5 * float(med) ** 2 / math.log(31)
    assert abs(median_bandwidth(x) - math.sqrt(h2)) < 1e-12
    torch.testing.assert_close(-SVGD(score=_score).velocity(x)(x),
                               svgd_velocity(x, _score, Gaussian(math.sqrt(h2))))


def test_float32_agrees_with_float64(gen):
    x = torch.randn(50, 2, generator=gen, dtype=DT)
    v64 = svgd_velocity(x, _score, Gaussian(1.0))
    v32 = svgd_velocity(x.float(), _score, Gaussian(1.0))
    torch.testing.assert_close(v32.double(), v64, atol=1e-5, rtol=1e-4)


def test_bad_inputs_name_the_argument(gen):
    x = torch.randn(5, 2, generator=gen)
    with pytest.raises(ValueError, match="score"):
        svgd_velocity(x, lambda z: z[:, :1], Gaussian(1.0))
    with pytest.raises(ValueError, match="weights"):
        svgd_velocity(x, _score, Gaussian(1.0), torch.full((5,), 0.3))
    with pytest.raises(TypeError, match="kernel"):
        svgd_velocity(x, _score, "gauss")
    with pytest.raises(ValueError, match="score or log_density|exactly one"):
        SVGD()
    with pytest.raises(ValueError, match="bandwidth"):
        SVGD(score=_score, bandwidth="mean")
    with pytest.raises(ValueError, match="step_size"):
        SVGD(score=_score).run(x, -1.0, 3)
    with pytest.raises(ValueError, match="kernel"):
        svgd_velocity(x, _score, fk.kernels.Laplacian(1.0))
