"""Weighted monitors: POT's emd2 with weights, a doubled weight is two copies, FlowState."""

import numpy as np
import ot
import pytest
import torch

import flowkit as fk
from flowkit.monitors import wasserstein

F64 = torch.float64


def _data(n=9, m=7):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 2, dtype=F64, generator=g)
    y = torch.randn(m, 2, dtype=F64, generator=g) + 0.5
    a = torch.rand(n, dtype=F64, generator=g) + 0.1
    b = torch.rand(m, dtype=F64, generator=g) + 0.1
    return x, y, a / a.sum(), b / b.sum()


@pytest.mark.parametrize("p", [1, 2])
def test_weighted_exact_matches_pot_emd2(p):
    x, y, a, b = _data()
    cost = ot.dist(x.numpy(), y.numpy(), metric="sqeuclidean" if p == 2 else "euclidean")
    want = ot.emd2(a.numpy(), b.numpy(), cost) ** (1.0 / p)
    est = wasserstein(x, y, p, weights=a, target_weights=b)
    assert est.value == pytest.approx(want, rel=1e-10)
    monitor = (fk.monitors.W1 if p == 1 else fk.monitors.W2)(y, target_weights=b)
    state = fk.FlowState(0, x, None, None, None, None, 0.0, weights=a)
    assert monitor(state)[f"W{p}"] == pytest.approx(want, rel=1e-10)


def _doubled(x):
    n = x.shape[0]
    w = torch.full((n,), 1.0 / (n + 1), dtype=F64)
    w[0] = 2.0 / (n + 1)
    return w, torch.cat([x, x[:1]])


def test_a_doubled_weight_is_two_copies():
    x, y, _, _ = _data()
    w, copies = _doubled(x)
    for p in (1, 2):
        assert wasserstein(x, y, p, weights=w).value == pytest.approx(
            wasserstein(copies, y, p).value, rel=1e-10)
    k = fk.kernels.Gaussian(0.8)
    weighted = fk.monitors.MMD(y, k)(fk.FlowState(0, x, None, None, None, None, 0.0,
                                                   weights=w))["MMD"]
    assert weighted == pytest.approx(fk.monitors.MMD(y, k)(copies)["MMD"], rel=1e-10)
    vt, ty = _doubled(y)
    assert fk.monitors.MMD(y, k, target_weights=vt)(x)["MMD"] == pytest.approx(
        fk.monitors.MMD(ty, k)(x)["MMD"], rel=1e-10)
    # sliced: the same projections, so the same number for the same measure
    s_w = wasserstein(x, y, 2, estimator="sliced", weights=w, n_projections=50).value
    s_c = wasserstein(copies, y, 2, estimator="sliced", n_projections=50).value
    assert s_w == pytest.approx(s_c, rel=1e-8)


def test_subsample_refuses_weights_and_bad_weights_are_named():
    x, y, a, _ = _data()
    with pytest.raises(ValueError, match="uniform weights"):
        wasserstein(x, y, 2, estimator="subsample", exact_max=4, weights=a)
    with pytest.raises(ValueError, match="weights"):
        wasserstein(x, y, 2, weights=torch.ones(9, dtype=F64))
    with pytest.raises(ValueError, match="target_weights"):
        fk.monitors.W2(y, target_weights=torch.ones(3, dtype=F64) / 3)
    with pytest.raises(ValueError, match="target_weights"):
        fk.monitors.MMD(y, target_weights=torch.ones(7, dtype=F64))


def test_monitors_read_the_engine_weights():
    x, y, a, _ = _data()
    obj = fk.objectives.MMD(y)
    flow = fk.FunctionalGradientDescent(obj, 0.2, progress=False, monitor_every=1,
                                        monitors=[fk.monitors.W2(y), fk.monitors.MMD(y)])
    res = flow.run(x, 2, weights=a)
    cost = ot.dist(res.particles.numpy(), y.numpy())
    want = np.sqrt(ot.emd2(a.numpy(), np.full(7, 1 / 7), cost))
    assert res.history["W2"][-1] == pytest.approx(want, rel=1e-10)
    assert res.history["MMD"][-1] == pytest.approx(float(obj.value(res.particles, a)) ** 0.5,
                                                   rel=1e-8)
