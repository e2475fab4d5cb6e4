"""Debiased Sinkhorn divergence: POT, GeomLoss, finite differences, the flow."""

import numpy as np
import ot
import pytest
import torch

import flowkit as fk
from flowkit.objectives import SinkhornDivergence


def _pair(gen, n=40, m=30):
    x = torch.randn(n, 2, generator=gen, dtype=torch.float64)
    y = 0.7 * torch.randn(m, 2, generator=gen, dtype=torch.float64) + 1.0
    return x, y


def test_plan_cost_matches_pot_sinkhorn2(gen):
    x, y = _pair(gen)
    blur = 0.4
    obj = SinkhornDivergence(y, blur=blur, tol=1e-12, max_iter=5000)
    # same problem in POT: cost |x-y|^2 / 2, reg = eps = blur^2; sinkhorn2 returns <pi, C>
    cost = 0.5 * ot.dist(x.numpy(), y.numpy())
    a, b = np.full(len(x), 1 / len(x)), np.full(len(y), 1 / len(y))
    want = ot.sinkhorn2(a, b, cost, blur**2, method="sinkhorn_log", stopThr=1e-13,
                        numItermax=100000)
    assert float(obj.plan_cost(x)) == pytest.approx(float(want), rel=1e-7)


def test_divergence_is_debiased_and_nonnegative(gen):
    x, y = _pair(gen)
    obj = SinkhornDivergence(y, blur=0.3, tol=1e-10, max_iter=100)
    assert float(obj.value(y)) == pytest.approx(0.0, abs=1e-6)
    assert float(obj.value(x)) > 0
    assert float(obj.ot_eps(y)) > 0.01  # the biased cost is not zero at x = y


def test_envelope_gradient_matches_finite_differences(gen):
    x, y = _pair(gen, 25, 20)
    obj = SinkhornDivergence(y, blur=0.3, tol=1e-12, max_iter=5000)
    g = obj.functional_gradient(x)
    h = 1e-6
    for i, k in [(0, 0), (3, 1), (17, 0)]:
        e = torch.zeros_like(x)
        e[i, k] = h
        fd = (obj.value(x + e) - obj.value(x - e)) / (2 * h) * len(x)
        assert float(g[i, k]) == pytest.approx(float(fd), rel=1e-5, abs=1e-8)


def test_float32_agrees_with_float64(gen):
    x, y = _pair(gen)
    o64, o32 = SinkhornDivergence(y, blur=0.2), SinkhornDivergence(y.float(), blur=0.2)
    assert float(o32.value(x.float())) == pytest.approx(float(o64.value(x)), rel=1e-3)
    g64, g32 = o64.functional_gradient(x), o32.functional_gradient(x.float())
    assert (g32.double() - g64).abs().max() < 1e-3 * g64.abs().max()


def test_value_and_gradient_match_geomloss(gen):
    # geomloss is in the `test` extra: this comparison runs in CI
    from geomloss import SamplesLoss

    x, y = _pair(gen)
    obj = SinkhornDivergence(y, blur=0.3, tol=1e-12, max_iter=5000)
    # GeomLoss' conventions: cost |x - y|^2 / 2 for p = 2, eps = blur^2
    loss = SamplesLoss("sinkhorn", p=2, blur=0.3, scaling=0.99, debias=True,
                       backend="tensorized")
    z = x.clone().requires_grad_(True)
    want = loss(z, y)
    (dz,) = torch.autograd.grad(want, z)
    assert float(obj.value(x)) == pytest.approx(float(want.detach()), rel=1e-3)
    g = obj.functional_gradient(x)
    # GeomLoss differentiates the value: d S / d x_i = (1/N) grad psi(x_i). Its solve is
    # one iteration per eps level, so its gradient approaches ours as scaling -> 1:
    # measured relative gap 2.1e-2 (0.99), 2.7e-3 (0.999), 2.7e-4 (0.9999, 39 s)
    assert torch.linalg.norm(g - len(x) * dz) <= 3e-2 * torch.linalg.norm(g)


def test_result_reports_convergence_and_marginal_error(gen):
    from flowkit.geometry import PointCloud
    from flowkit.objectives.sinkhorn import SinkhornResult, sinkhorn

    x, y = _pair(gen)
    geom = PointCloud(x, y)
    tight = sinkhorn(geom, 0.09, tol=1e-10, max_iter=5000)
    loose = sinkhorn(geom, 0.09, tol=1e-10, max_iter=2)
    assert isinstance(tight, SinkhornResult) and tight.policy == "converge"
    assert tight.converged and tight.marginal_error < 1e-7
    assert not loose.converged and loose.marginal_error > 100 * tight.marginal_error
    # the plan's marginals, computed directly, agree with the reported error
    c = 0.5 * torch.cdist(x, y).pow(2)
    n, m = len(x), len(y)
    pi = torch.exp((loose.f[:, None] + loose.g[None] - c) / 0.09) / (n * m)
    direct = float((pi.sum(1) - 1 / n).abs().sum() + (pi.sum(0) - 1 / m).abs().sum())
    assert loose.marginal_error == pytest.approx(direct, rel=1e-6)


def test_geomloss_policy_matches_geomloss_iterates(gen):
    # same annealing (ratio scaling^2 from the diameter), one averaged step per level, one
    # extrapolation: the value agrees with GeomLoss' own at a coarse scaling
    from geomloss import SamplesLoss

    x, y = _pair(gen)
    blur, scaling = 0.3, 0.7
    obj = SinkhornDivergence(y, blur=blur, policy="geomloss", scaling=scaling,
                             warm_start=False)
    want = SamplesLoss("sinkhorn", p=2, blur=blur, scaling=scaling, debias=True,
                       backend="tensorized")(x, y)
    exact = SinkhornDivergence(y, blur=blur, tol=1e-12, max_iter=5000).value(x)
    got = obj.value(x)
    # both are truncated solves of the same problem, equally far from the converged value
    assert abs(float(got) - float(exact)) < 5 * abs(float(want) - float(exact)) + 1e-6
    assert obj.last_results[0].policy == "geomloss"
    assert obj.last_results[0].iterations < 30


def test_bad_arguments_are_rejected(gen):
    _, y = _pair(gen)
    with pytest.raises(ValueError, match="blur"):
        SinkhornDivergence(y, blur=0.0)
    with pytest.raises(ValueError, match="scaling"):
        SinkhornDivergence(y, scaling=1.5)
    with pytest.raises(ValueError, match="memory_budget"):
        SinkhornDivergence(y, memory_budget=8)
    with pytest.raises(ValueError, match="policy"):
        SinkhornDivergence(y, policy="fast")
    with pytest.raises(ValueError, match="backend='native' cannot run here: it runs float32"):
        SinkhornDivergence(y, backend="native")  # float64 data


def test_sinkhorn_flow_decreases_the_divergence(gen):
    y = fk.datasets.eight_gaussians(150, seed=0, dtype=torch.float64)
    x0 = 0.3 * torch.randn(150, 2, generator=gen, dtype=torch.float64)
    obj = SinkhornDivergence(y, blur=0.1, tol=1e-5)  # a flow needs no tight solves
    res = fk.FunctionalGradientDescent(obj, 0.5, progress=False).run(x0, 20)
    assert float(obj.value(res.particles)) < 0.3 * float(obj.value(x0))


@pytest.mark.parametrize("blur", [1e-30, 1e30])
def test_extreme_blur_is_refused_in_float32_and_finite_in_float64(gen, blur):
    x, y = _pair(gen)
    with pytest.raises(ValueError, match=r"blur must lie in \[.*float32"):
        SinkhornDivergence(y.float(), blur=blur)
    g = SinkhornDivergence(y, blur=blur).functional_gradient(x)
    assert torch.isfinite(g).all()
    with pytest.raises(ValueError, match="blur must lie in"):
        SinkhornDivergence(y, blur=blur**4)


def _probabilities(gen, n):
    w = torch.rand(n, generator=gen, dtype=torch.float64) + 0.1
    return w / w.sum()


def test_weighted_plan_cost_matches_pot_sinkhorn2(gen):
    x, y = _pair(gen, 30, 20)
    a, b = _probabilities(gen, 30), _probabilities(gen, 20)
    blur = 0.4
    obj = SinkhornDivergence(y, blur=blur, tol=1e-12, max_iter=5000, target_weights=b)
    cost = 0.5 * ot.dist(x.numpy(), y.numpy())
    want = ot.sinkhorn2(a.numpy(), b.numpy(), cost, blur**2, method="sinkhorn_log",
                        stopThr=1e-13, numItermax=100000)
    assert float(obj.plan_cost(x, a)) == pytest.approx(float(want), rel=1e-7)


def test_warm_start_does_not_depend_on_the_particles_order():
    # the reported reproducer: the warm start reused potentials indexed by particle, so a
    # solve after a call on permuted particles started from scrambled potentials (with one
    # iteration allowed, the gradient was off by 5e-3); now the start is the previous
    # potentials extended as functions, the same for any order
    y = torch.randn(6, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(5))
    o = SinkhornDivergence(y, blur=0.5, tol=1e-12)
    a = o.functional_gradient(x)
    o.max_iter = 1
    b = o.functional_gradient(x[perm])
    assert float((b - a[perm]).abs().max()) < 1e-10
    # at the default tol, warm and fresh solves agree to the order of tol
    o = SinkhornDivergence(y, blur=0.5)
    a = o.functional_gradient(x)
    b = o.functional_gradient(x[perm])
    ref = SinkhornDivergence(y, blur=0.5, tol=1e-13).functional_gradient(x[perm])
    assert float((b - a[perm]).abs().max()) < 1e-5
    assert float((b - ref).abs().max()) < 1e-5


def test_warm_start_follows_a_moving_flow_and_a_change_of_size(gen):
    x, y = _pair(gen, 20, 15)
    warm = SinkhornDivergence(y, blur=0.4, tol=1e-10)
    cold = SinkhornDivergence(y, blur=0.4, tol=1e-10, warm_start=False)
    for z in (x, x + 0.05, torch.cat([x, y[:3]])):
        torch.testing.assert_close(warm.functional_gradient(z), cold.functional_gradient(z),
                                   rtol=1e-6, atol=1e-8)


def test_value_is_differentiable_by_autograd(gen):
    # envelope theorem: autograd of the value gives w_i times the functional gradient
    x, y = _pair(gen, 12, 10)
    w = _probabilities(gen, 12)
    obj = SinkhornDivergence(y, blur=0.5, tol=1e-12)
    z = x.clone().requires_grad_(True)
    v = obj.value(z, w)
    (dx,) = torch.autograd.grad(v, z)
    torch.testing.assert_close(dx / w[:, None], obj.functional_gradient(x, w))
    assert float(v.detach()) == pytest.approx(float(obj.value(x, w)), rel=1e-12)
    # and the weights: d S / d w_i is the first variation at x_i, up to a constant
    wr = w.clone().requires_grad_(True)
    (dw,) = torch.autograd.grad(obj.value(x, wr), wr)
    psi = obj.first_variation(x, w)(x)
    torch.testing.assert_close(dw - dw.mean(), psi - psi.mean())


@pytest.mark.skipif(not fk.kernels.native_available(), reason="native path needs gcc and AVX2")
def test_native_backend_agrees_with_torch_in_float32(gen):
    x, y = (t.float() for t in _pair(gen, 300, 200))
    ref = SinkhornDivergence(y.double(), blur=0.2, tol=1e-9, warm_start=False)
    want = ref.functional_gradient(x.double())
    for backend in ("native", "torch"):
        obj = SinkhornDivergence(y, blur=0.2, backend=backend, warm_start=False)
        g = obj.functional_gradient(x)
        assert (g.double() - want).norm() < 1e-4 * want.norm(), backend
