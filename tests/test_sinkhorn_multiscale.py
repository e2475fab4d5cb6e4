"""The multiscale Sinkhorn: grid clusters, the block-sparse softmin, kernel truncation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from flowkit.backends import native
from flowkit.geometry import BlockSparsity, PointCloud, grid_clusters, softmin_sparse
from flowkit.objectives import SinkhornDivergence
from flowkit.objectives.sinkhorn import sinkhorn

needs_native = pytest.mark.skipif(not native.available(), reason="no native backend here")
BACKENDS = [pytest.param("native", marks=needs_native), "torch"]


def _clouds(n: int, m: int, dtype=torch.float32, d: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, d, generator=g, dtype=torch.float64)
    y = 0.5 + 0.15 * torch.randn(m, d, generator=g, dtype=torch.float64)
    return x.to(dtype), y.to(dtype)


def _dense_masked(x, y, h, eps, mask):
    logits = (h.double() - 0.5 * torch.cdist(x.double(), y.double()).pow(2) / eps)
    logits = logits.masked_fill(~mask, -math.inf)
    return -eps * logits.logsumexp(1), torch.softmax(logits, 1) @ y.double()


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_ranges_kept_equals_dense_softmin(backend):
    x, y = _clouds(203, 157)
    cx = grid_clusters(x, torch.full((203,), 1 / 203), 0.2)
    cy = grid_clusters(y, torch.full((157,), 1 / 157), 0.2)
    xs, ys = cx.sort(x), cy.sort(y)
    h = 0.3 * torch.randn(157, generator=torch.Generator().manual_seed(3))
    cloud = PointCloud(xs, ys, backend=backend)
    sp = BlockSparsity.dense(cx.ranges, cy.ranges)
    assert sp.kept_fraction == 1.0
    f, bar = softmin_sparse(cloud, h, 0.01, sp, barycenter=True)
    torch.testing.assert_close(f, cloud.softmin(h, 0.01), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bar, cloud.soft_barycenter(h, 0.01), rtol=1e-5, atol=1e-5)
    f_all, _ = softmin_sparse(cloud, h, 0.01)  # sparsity=None: every pair
    torch.testing.assert_close(f_all, f, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_block_sparse_softmin_sums_only_the_kept_blocks(backend):
    x, y = _clouds(120, 90)
    cx = grid_clusters(x, torch.full((120,), 1 / 120), 0.25)
    cy = grid_clusters(y, torch.full((90,), 1 / 90), 0.1)
    keep = torch.rand(cx.ranges.shape[0], cy.ranges.shape[0],
                      generator=torch.Generator().manual_seed(4)) < 0.4
    keep[:, 0] = True  # every row keeps something
    sp = BlockSparsity.from_mask(keep, cx.ranges, cy.ranges)
    xs, ys = cx.sort(x), cy.sort(y)
    mask = keep[cx.labels][:, cy.labels]
    assert sp.kept == int(mask.sum())
    h = torch.randn(90, generator=torch.Generator().manual_seed(5))
    f, bar = softmin_sparse(PointCloud(xs, ys, backend=backend), h, 0.05, sp, barycenter=True)
    want_f, want_bar = _dense_masked(xs, ys, h, 0.05, mask)
    torch.testing.assert_close(f.double(), want_f, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bar.double(), want_bar, rtol=1e-4, atol=1e-5)


@needs_native
@pytest.mark.parametrize("rising", [True, False])
def test_native_ranges_online_max_across_chunks(rising):
    # ranges of thousands of columns (several of the kernel's 512-column chunks), starting
    # and ending mid-group; the logits rise (or fall) along the columns by far more than
    # float32's exponent range, so the running maximum moves from chunk to chunk and the
    # sums already taken must be rescaled (rising) or the later ones vanish (falling)
    m = 3001
    g = torch.Generator().manual_seed(8)
    x, y = torch.rand(9, 2, generator=g), torch.rand(m, 2, generator=g)
    h = torch.linspace(0.0, 400.0, m)
    h = h if rising else h.flip(0)
    rows = torch.tensor([[0, 4], [4, 9]])
    cols = torch.tensor([[0, 1300], [1300, 1303], [1303, m]])
    keep = torch.tensor([[True, False, True], [False, True, True]])
    sp = BlockSparsity.from_mask(keep, rows, cols)
    mask = torch.zeros(9, m, dtype=torch.bool)
    mask[:4, :1300] = mask[:4, 1303:] = mask[4:, 1300:] = True
    f, bar = softmin_sparse(PointCloud(x, y, backend="native"), h, 0.05, sp, barycenter=True)
    want_f, want_bar = _dense_masked(x, y, h, 0.05, mask)
    torch.testing.assert_close(f.double(), want_f, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bar.double(), want_bar, rtol=1e-4, atol=1e-5)


def test_clusters_round_trip_and_weights():
    x, _ = _clouds(500, 1, d=3)
    w = torch.rand(500, generator=torch.Generator().manual_seed(6))
    w[:7] = 0.0  # zero weights are fine
    w = w / w.sum()
    c = grid_clusters(x, w, 0.3)
    assert torch.equal(c.unsort(c.sort(x)), x)
    assert torch.equal(torch.sort(c.perm).values, torch.arange(500))
    # each cluster one cell, contiguous; labels follow the ranges
    cell = torch.floor((c.sort(x) - x.amin(0)) / 0.3).long()
    for k, (a, b) in enumerate(c.ranges.tolist()):
        assert (cell[a:b] == cell[a]).all() and (c.labels[a:b] == k).all()
    torch.testing.assert_close(c.weights.sum(), w.sum())
    k = 3
    a, b = c.ranges[k].tolist()
    ws, xs = c.sort(w)[a:b], c.sort(x)[a:b]
    torch.testing.assert_close(c.centroids[k], (ws[:, None] * xs).sum(0) / ws.sum())
    assert (c.radii[c.labels] + 1e-6 >= (c.sort(x) - c.centroids[c.labels]).norm(dim=1)).all()


@pytest.mark.parametrize(("dtype", "cluster_scale"), [(torch.float32, 0.1),
                                                     (torch.float32, 0.25),
                                                     (torch.float64, 0.25)])
def test_multiscale_matches_the_dense_solve(dtype, cluster_scale):
    """blur 0.1: at cluster_scale 0.1 every level above eps runs on the clusters, at 0.25
    the schedule crosses the cluster scale (levels on the points, truncated); float64 runs
    the torch blocks."""
    x, y = _clouds(300, 200, dtype)
    eps = 0.01
    geom = PointCloud(x, y)
    dense = sinkhorn(geom, eps, tol=1e-7, max_iter=5000)
    ms = sinkhorn(geom, eps, tol=1e-7, max_iter=5000, scheme="multiscale",
                  cluster_scale=cluster_scale)
    rep = ms.multiscale
    assert ms.scheme == "multiscale" and rep.coarse_iterations > 0 and rep.fine_iterations > 0
    assert 0.0 < rep.kept_fraction < 1.0
    assert (rep.switch_eps > eps) == (cluster_scale == 0.25)
    # the pair (f + c, g - c) solves the same problem: compare centred potentials and the
    # value <a, f> + <b, g>
    for u, v in ((ms.f, dense.f), (ms.g, dense.g)):
        torch.testing.assert_close(u - u.mean(), v - v.mean(), rtol=0, atol=2e-5)
    torch.testing.assert_close(ms.f.mean() + ms.g.mean(), dense.f.mean() + dense.g.mean(),
                               rtol=0, atol=2e-5)
    assert ms.converged and ms.marginal_error < 1e-3


def test_divergence_value_and_gradient_match_dense():
    x, y = _clouds(300, 250)
    kw = {"blur": 0.1, "warm_start": False, "tol": 1e-7, "max_iter": 5000}
    dense = SinkhornDivergence(y, **kw)
    ms = SinkhornDivergence(y, scheme="multiscale", cluster_scale=0.1, **kw)
    g_d, g_m = dense.functional_gradient(x), ms.functional_gradient(x)
    assert float((g_m - g_d).norm() / g_d.norm()) < 1e-3
    torch.testing.assert_close(ms.value(x), dense.value(x), rtol=1e-3, atol=1e-6)
    ab, aa = ms.last_results
    assert ab.multiscale.clusters[0] > 1 and aa.multiscale.clusters[0] == aa.multiscale.clusters[1]


def test_geomloss_policy_error_as_the_dense_one():
    """The GeomLoss policy is not converged: the multiscale run's gradient error against a
    converged solve is the dense run's, within a tenth of it."""
    x, y = _clouds(400, 300)
    ref = SinkhornDivergence(y, blur=0.1, warm_start=False, tol=1e-7).functional_gradient(x)
    kw = {"blur": 0.1, "warm_start": False, "policy": "geomloss", "scaling": 0.7}
    errors = [float((SinkhornDivergence(y, **kw, **extra).functional_gradient(x) - ref).norm()
                    / ref.norm())
              for extra in ({}, {"scheme": "multiscale", "cluster_scale": 0.05})]
    assert errors[1] < 1.1 * errors[0]


def test_gradient_against_autograd_of_the_value():
    x, y = _clouds(100, 80, torch.float64)
    # both gradients read the same potentials: they differ by the truncation only
    obj = SinkhornDivergence(y, blur=0.1, warm_start=False, tol=1e-5, policy="geomloss",
                             scheme="multiscale", cluster_scale=0.25)
    z = x.clone().requires_grad_(True)
    (dz,) = torch.autograd.grad(obj.value(z), z)
    torch.testing.assert_close(100 * dz, obj.functional_gradient(x), rtol=1e-4, atol=1e-6)


def test_against_pot_plan_cost():
    ot = pytest.importorskip("ot")
    x, y = _clouds(80, 60)
    eps = 0.02
    obj = SinkhornDivergence(y, blur=math.sqrt(eps), warm_start=False, tol=1e-7,
                             max_iter=20000, scheme="multiscale", cluster_scale=0.25)
    C = 0.5 * torch.cdist(x.double(), y.double()).pow(2)
    want = ot.sinkhorn2(np.full(80, 1 / 80), np.full(60, 1 / 60), C.numpy(), eps,
                        numItermax=100000, stopThr=1e-10)
    assert float(obj.plan_cost(x)) == pytest.approx(float(want), rel=2e-4)


def test_weights_respected():
    x, y = _clouds(200, 180)
    g = torch.Generator().manual_seed(7)
    a = torch.rand(200, generator=g) + 0.1
    b = torch.rand(180, generator=g) + 0.1
    a[:5] = 0.0
    a, b = a / a.sum(), b / b.sum()
    kw = {"blur": 0.1, "warm_start": False, "tol": 1e-7, "max_iter": 5000,
          "target_weights": b}
    g_d = SinkhornDivergence(y, **kw).functional_gradient(x, weights=a)
    ms = SinkhornDivergence(y, scheme="multiscale", cluster_scale=0.1, **kw)
    g_m = ms.functional_gradient(x, weights=a)
    assert float((g_m - g_d).norm() / g_d.norm()) < 1e-3
    # weights matter: uniform weights give another gradient
    assert float((ms.functional_gradient(x) - g_m).norm() / g_m.norm()) > 1e-2


def test_warm_start_agrees_with_a_cold_solve():
    x, y = _clouds(200, 150)
    kw = {"blur": 0.1, "tol": 1e-7, "max_iter": 5000, "scheme": "multiscale",
          "cluster_scale": 0.1}
    warm = SinkhornDivergence(y, **kw)
    warm.functional_gradient(x)
    x2 = x + 0.01
    g_warm = warm.functional_gradient(x2)
    g_cold = SinkhornDivergence(y, warm_start=False, **kw).functional_gradient(x2)
    assert float((g_warm - g_cold).norm() / g_cold.norm()) < 1e-3


def test_gradient_checks_only_the_particles_side():
    # functional_gradient skips the check's sweep of g (one truncated softmin): same
    # potentials, marginal error of the particles' side only; value checks both sides
    x, y = _clouds(300, 250)
    obj = SinkhornDivergence(y, blur=0.1, warm_start=False, scheme="multiscale",
                             cluster_scale=0.1, policy="geomloss")
    obj.functional_gradient(x)
    rows = obj.last_results[0]
    obj.value(x)
    both = obj.last_results[0]
    assert (rows.multiscale.checked, both.multiscale.checked) == ("x", "both")
    assert obj.last_results[1].multiscale.checked == "both"  # symmetric: one side
    assert torch.equal(rows.f, both.f) and torch.equal(rows.g, both.g)
    # the rows' term recomputed densely: a_i exp((f_i - T(g)_i) / eps), T over every pair
    eps, a = 0.01, torch.full((300,), 1 / 300)
    yc, xc = y - y.mean(0), x - y.mean(0)
    tg = PointCloud(xc, yc).softmin(torch.full((250,), -math.log(250)) + rows.g / eps, eps)
    want = float((a * ((rows.f - tg) / eps).exp() - a).abs().sum())
    assert rows.marginal_error == pytest.approx(want, rel=1e-2)
    assert 0 < rows.marginal_error < both.marginal_error


def test_argument_errors():
    _, y = _clouds(1, 50)
    with pytest.raises(ValueError, match="scheme"):
        SinkhornDivergence(y, scheme="sparse")
    with pytest.raises(ValueError, match="scheme"):
        SinkhornDivergence(torch.rand(50, 4), scheme="multiscale")
    with pytest.raises(ValueError, match="cluster_scale"):
        SinkhornDivergence(y, scheme="multiscale", cluster_scale=-1.0)
    with pytest.raises(ValueError, match="cluster_scale"):
        SinkhornDivergence(y, cluster_scale=0.1)  # dense scheme
    with pytest.raises(ValueError, match="truncate"):
        SinkhornDivergence(y, scheme="multiscale", truncate=0.0)
    obj = SinkhornDivergence(y, scheme="multiscale", cluster_scale=100.0, warm_start=False)
    with pytest.raises(ValueError, match="cluster_scale"):
        obj.functional_gradient(torch.rand(20, 2))
    with pytest.raises(ValueError, match="scale"):
        grid_clusters(y, torch.full((50,), 0.02), 0.0)
    x, y = _clouds(10, 12)
    c = grid_clusters(x, torch.full((10,), 0.1), 0.5)
    sp = BlockSparsity.dense(c.ranges, c.ranges)
    with pytest.raises(ValueError, match="sparsity"):
        softmin_sparse(PointCloud(x, y), torch.zeros(12), 0.1, sp)


@needs_native
def test_native_refuses_inconsistent_ranges():
    x, y = _clouds(10, 12)
    bad = BlockSparsity(rows=torch.tensor([[0, 10]]), ptr=torch.tensor([0, 1]),
                        cols=torch.tensor([[0, 13]]), shape=(10, 12), kept=130)
    with pytest.raises(ValueError, match="sparsity"):
        native.softmin_ranges(x, y, torch.zeros(12), 0.1, bad)
