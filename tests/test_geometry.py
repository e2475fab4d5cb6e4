"""PointCloud: the reductions against dense formulas, segments, routing, one validation."""

import pytest
import torch

import flowkit as fk
from flowkit.geometry import PointCloud


def _clouds(gen, n=23, m=17, d=3):
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    y = torch.randn(m, d, generator=gen, dtype=torch.float64) + 0.3
    return x, y


@pytest.mark.parametrize("block_size", [None, 4])
def test_softmin_and_barycentre_match_dense_formulas(gen, block_size):
    x, y = _clouds(gen)
    # two far segments in y: the combination over segments must be exact
    y = torch.cat([y, y[:5] + 50.0])
    h = torch.randn(len(y), generator=gen, dtype=torch.float64)
    eps = 0.7
    logits = h - 0.5 * torch.cdist(x, y).pow(2) / eps
    pc = PointCloud(x, y, block_size=block_size)
    assert len(pc._segments()) == 2
    torch.testing.assert_close(pc.softmin(h, eps), -eps * torch.logsumexp(logits, 1))
    torch.testing.assert_close(pc.soft_barycenter(h, eps), torch.softmax(logits, 1) @ y)


def test_rows_do_not_depend_on_their_batch(gen):
    x, y = _clouds(gen, n=40)
    pc = PointCloud(x, torch.cat([x, y + 100.0]), kernel=fk.kernels.Gaussian(1.0))
    whole = pc.kernel_grad_sum()
    part = PointCloud(x[:7], torch.cat([x, y + 100.0]), kernel=fk.kernels.Gaussian(1.0))
    # the same centres whatever rows come along (bit-identity is then up to the BLAS)
    torch.testing.assert_close(part.kernel_grad_sum(), whole[:7], rtol=1e-13, atol=1e-15)


def test_one_validation_path_names_the_arguments(gen):
    x, y = _clouds(gen)
    with pytest.raises(ValueError, match="b must have shape"):
        PointCloud(x, y, b=torch.ones(3, dtype=torch.float64))
    with pytest.raises(TypeError, match="a has dtype"):
        PointCloud(x, y, a=torch.ones(len(x)))
    with pytest.raises(ValueError, match="no kernel"):
        PointCloud(x, y).kernel_sum()
    with pytest.raises(ValueError, match="h must be a tensor of shape"):
        PointCloud(x, y).softmin(torch.zeros(3, dtype=torch.float64), 1.0)
    with pytest.raises(ValueError, match="backend='native' cannot run here: it runs float32"
                                         ".*softmin"):
        PointCloud(x, y, backend="native").softmin(torch.zeros(len(y), dtype=x.dtype), 1.0)


def test_routing_is_one_decision(gen):
    from flowkit.backends import route

    x, _ = _clouds(gen)
    assert route("torch", x.float(), gaussian_rate=1.0) == "torch"
    assert route("auto", x, gaussian_rate=1.0) == "torch"  # float64: not native
    assert route("auto", x.float(), gaussian_rate=None) == "torch"
    z = x.float().requires_grad_(True)
    assert route("auto", z, gaussian_rate=1.0) == "torch"
    if fk.kernels.native_available():
        assert route("auto", x.float(), gaussian_rate=1.0) == "native"
        for reduction in ("softmin", "soft_barycenter"):
            assert route("auto", x.float(), kernel=reduction) == "native"
            assert route("auto", x, kernel=reduction) == "torch"


NATIVE = pytest.mark.skipif(not fk.kernels.native_available(),
                            reason="native path needs gcc and AVX2")


@NATIVE
@pytest.mark.parametrize("d", [2, 7, 20])  # 20: over the fused path's event size (torch)
def test_native_softmin_and_barycentre_match_dense_formulas(gen, d):
    x, y = _clouds(gen, n=23, m=17, d=d)
    y = torch.cat([y, y[:5] + 50.0])  # two segments, and M not a multiple of 8
    h = torch.randn(len(y), generator=gen, dtype=torch.float64)
    h[2] = -torch.inf  # a zero weight
    eps = 0.7
    logits = h - 0.5 * torch.cdist(x, y).pow(2) / eps
    pc = PointCloud(x.float(), y.float(), backend="native")
    assert len(pc._segments()) == 2
    torch.testing.assert_close(pc.softmin(h.float(), eps).double(),
                               -eps * torch.logsumexp(logits, 1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pc.soft_barycenter(h.float(), eps).double(),
                               torch.softmax(logits, 1) @ y, rtol=1e-5, atol=1e-5)


@NATIVE
def test_native_softmin_propagates_nan_and_empty_rows(gen):
    x, y = (t.float() for t in _clouds(gen, n=9, m=13))
    pc = PointCloud(x, y, backend="native")
    h = torch.zeros(len(y))
    h[5] = torch.nan  # the vector max alone would drop it
    assert pc.softmin(h, 0.5).isnan().all()
    # zero weights everywhere: the softmin of nothing is +inf, as logsumexp's
    empty = torch.full((len(y),), -torch.inf)
    assert (pc.softmin(empty, 0.5) == torch.inf).all()
    assert pc.soft_barycenter(empty, 0.5).isnan().all()


@NATIVE
def test_native_softmin_gate_checks_every_tensor():
    from flowkit.backends import native

    lib = native.library()
    xs, yt, h = torch.zeros(4, 2), torch.zeros(2, 8), torch.zeros(8)
    vt, lse, out = torch.zeros(0, 8), torch.zeros(4), torch.zeros(4, 0)
    lib.softmin(xs, yt, h, vt, lse, out, 0, 4)
    with pytest.raises(ValueError, match="native h"):
        lib.softmin(xs, yt, h.double(), vt, lse, out, 0, 4)
    with pytest.raises(ValueError, match="native lse"):
        lib.softmin(xs, yt, h, vt, torch.zeros(3), out, 0, 4)
    with pytest.raises(ValueError, match="unsupported sizes"):
        lib.softmin(xs, torch.zeros(2, 7), torch.zeros(7), torch.zeros(0, 7), lse, out, 0, 4)
