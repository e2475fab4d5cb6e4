"""KSD descent (Korba et al. 2021): Stein kernel, value, gradient convention, the peer."""

import math

import pytest
import torch

import flowkit as fk
from flowkit.flows import KSD, ksd2, stein_kernel
from flowkit.kernels import Gaussian, InverseMultiquadric

ksdd = pytest.importorskip("ksddescent")
from ksddescent.kernels import gaussian_stein_kernel, imq_kernel  # noqa: E402

DT = torch.float64


def _score(x):
    # a non-Gaussian target (its score has a non-constant Jacobian): pi ~ exp(-|x|^4/4 + x_0)
    return -x * (x**2).sum(1, keepdim=True) + torch.nn.functional.one_hot(
        torch.zeros(x.shape[0], dtype=torch.long), x.shape[1]).to(x.dtype)


def _stein_by_autograd(x, y, kernel, score):
    # k_pi(x, y) = s_x.s_y k + s_x.grad_y k + s_y.grad_x k + tr(grad_x grad_y k), one pair
    def k(a, b):
        return kernel(a[None], b[None])[0, 0]

    xr, yr = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
    kv = k(xr, yr)
    gx, gy = torch.autograd.grad(kv, (xr, yr), create_graph=True)
    tr = sum(torch.autograd.grad(gy[c], xr, retain_graph=True)[0][c] for c in range(len(x)))
    sx, sy = score(x[None])[0], score(y[None])[0]
    return (sx @ sy) * kv + sx @ gy + sy @ gx + tr


@pytest.mark.parametrize("kernel", [Gaussian(0.7), InverseMultiquadric(1.5, -0.3),
                                    Gaussian(0.4) + 2.0 * InverseMultiquadric(1.0, -0.5)])
def test_stein_kernel_is_its_definition(gen, kernel):
    x, y = torch.randn(4, 3, generator=gen, dtype=DT), torch.randn(3, 3, generator=gen, dtype=DT)
    K = stein_kernel(x, y, _score(x), _score(y), kernel)
    for i in range(4):
        for j in range(3):
            ref = _stein_by_autograd(x[i], y[j], kernel, _score)
            torch.testing.assert_close(K[i, j], ref.detach())


def test_ksd_values_equal_ksddescent_gaussian_and_imq(gen):
    x = torch.randn(50, 2, generator=gen, dtype=DT)
    s = _score(x)
    sigma, g, beta = 0.8, 2.0, 0.3
    mine = ksd2(x, _score, Gaussian(math.sqrt(sigma)), block_size=7)
    peer = gaussian_stein_kernel(x, x, s, s, sigma).sum() / 50**2
    assert abs(float(mine / peer) - 1) < 1e-6
    mine = ksd2(x, _score, InverseMultiquadric(1 / math.sqrt(g), -beta), block_size=7)
    peer = imq_kernel(x, x, s, s, g=g, beta=beta).sum() / 50**2
    assert abs(float(mine / peer) - 1) < 1e-6


@pytest.mark.parametrize("kernel", ["gaussian", "imq"])
def test_trajectory_equals_ksdd_gradient(gen, kernel):
    # ksdd_gradient: x -= step * d(sum K / n^2)/dx = step/n * grad psi, so eta = step / n;
    # max_iter=m takes m + 1 steps
    n, step, bw, beta = 30, 0.3, 0.5, 0.2
    x0 = torch.randn(n, 2, generator=gen, dtype=DT)
    peer = ksdd.ksdd_gradient(x0, _score, step, kernel=kernel, max_iter=49, bw=bw, beta=beta)
    k = Gaussian(math.sqrt(bw)) if kernel == "gaussian" else InverseMultiquadric(
        1 / math.sqrt(bw), -beta)
    flow = fk.FunctionalGradientDescent(KSD(score=_score, kernel=k), step_size=step / n,
                                        progress=False, keep_layers=False)
    mine = flow.run(x0, 50).particles
    assert float((mine - peer).abs().max()) < 1e-5


@pytest.mark.parametrize("weighted", [False, True])
def test_gradient_convention_against_autograd(gen, weighted):
    x = torch.randn(12, 2, generator=gen, dtype=DT)
    obj = KSD(score=_score, kernel=InverseMultiquadric(1.0, -0.5), block_size=5)
    if not weighted:
        z = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(obj.value(z), z)
        torch.testing.assert_close(obj.functional_gradient(x), 12 * g)
        return
    w = torch.rand(12, generator=gen, dtype=DT)
    w = w / w.sum()
    z = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(obj.value(z, w), z)
    torch.testing.assert_close(obj.first_variation(x, w).grad(x), g / w[:, None])


def test_potential_value_is_twice_the_mean_stein_kernel(gen):
    x, z = torch.randn(9, 2, generator=gen, dtype=DT), torch.randn(4, 2, generator=gen, dtype=DT)
    obj = KSD(score=_score, kernel=Gaussian(0.9))
    ref = 2 * stein_kernel(z, x, _score(z), _score(x), Gaussian(0.9)).mean(1)
    torch.testing.assert_close(obj.first_variation(x)(z), ref)
    torch.testing.assert_close(obj.value(x), obj.first_variation(x)(x).mean() / 2)


def test_small_step_descends_and_dtypes_agree(gen):
    x = torch.randn(40, 2, generator=gen, dtype=DT) + 1.0
    obj = KSD(log_density=lambda z: -(z**4).sum(1) / 4)
    g = obj.functional_gradient(x)
    assert float(obj.value(x - 1e-3 * g)) < float(obj.value(x))
    torch.testing.assert_close(obj.value(x.float()).double(), obj.value(x), rtol=1e-5, atol=0)
    torch.testing.assert_close(obj.functional_gradient(x.float()).double(), g, rtol=1e-4,
                               atol=1e-5)


def test_bad_inputs_name_the_argument(gen):
    x = torch.randn(5, 2, generator=gen)
    with pytest.raises(TypeError, match="kernel"):
        KSD(score=_score, kernel=fk.kernels.Laplacian(1.0))
    with pytest.raises(ValueError, match="weights"):
        ksd2(x, _score, weights=torch.ones(4) / 4)
    with pytest.raises(ValueError, match="exactly one"):
        KSD(score=_score, log_density=lambda z: z.sum(1))
    with pytest.raises(ValueError, match="x must"):
        KSD(score=_score).value(torch.randn(5, 2, 2))
