"""The fused Triton reductions against the torch path, on CPU under Triton's interpreter.

Triton is an optional extra (``pip install 'flowkit[triton]'``); without it the correctness
tests are skipped *with that reason printed* (``-rs``), and the routing test still checks
that the path refuses to run, saying why. A CI job that installs the extra sets
``FLOWKIT_REQUIRE_TRITON=1``: a missing or broken Triton then fails instead of skipping.
"""

from __future__ import annotations

import os

# read when the kernels are decorated, so before flowkit.triton_kernels first builds them
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import flowkit as fk  # noqa: E402
from flowkit import triton_kernels as tk  # noqa: E402

HAVE_TRITON = tk.triton_available("cpu")
needs_triton = pytest.mark.skipif(
    not HAVE_TRITON,
    reason="Triton is not installed (pip install 'flowkit[triton]') or TRITON_INTERPRET=0: "
           "the fused path is untested in this run")



def test_triton_is_present_where_ci_requires_it():
    if os.environ.get("FLOWKIT_REQUIRE_TRITON") == "1":
        assert HAVE_TRITON, "FLOWKIT_REQUIRE_TRITON=1 but Triton's interpreter cannot run here"


KERNELS = [fk.kernels.Gaussian(0.7), fk.kernels.Laplacian(0.8), fk.kernels.EnergyKernel()]
TOL = {torch.float32: 2e-6, torch.float64: 1e-13}  # relative to the sum of |w_j| |k|


N, M = 70, 150  # more than one tile of rows (programs) and of columns (loop steps)


def _case(dtype, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, d, generator=g, dtype=dtype)
    y = torch.randn(M, d, generator=g, dtype=dtype)
    y[:4] = x[:4]  # coincident points: the singular kernels' subgradient 0
    w = torch.rand(M, generator=g, dtype=dtype) - 0.3  # signed, as in the MMD witness
    return x, y, w


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("d", [1, 3, 5])
def test_fused_sums_match_the_torch_path(dtype, d):
    x, y, w = _case(dtype, d)
    for kernel in KERNELS:
        ref = fk.kernels.kernel_sum(x, y, kernel, w, backend="torch")
        gref = fk.kernels.kernel_grad_sum(x, y, kernel, w, backend="torch")
        scale = float((w.abs()[None] * kernel(x, y).abs()).sum(1).max()) + 1.0
        torch.testing.assert_close(tk.triton_kernel_sum(x, y, kernel, w), ref,
                                   rtol=0, atol=TOL[dtype] * scale)
        torch.testing.assert_close(tk.triton_kernel_grad_sum(x, y, kernel, w), gref,
                                   rtol=0, atol=TOL[dtype] * scale * 4)


@needs_triton
def test_default_weights_event_shapes_and_the_mmd_gradient():
    x, y, _ = _case(torch.float64, 6)
    xe, ye = x.view(N, 2, 3), y.view(M, 2, 3)
    g = tk.triton_kernel_grad_sum(xe, ye, KERNELS[0])
    assert g.shape == xe.shape
    torch.testing.assert_close(g, fk.kernels.kernel_grad_sum(xe, ye, KERNELS[0],
                                                             backend="torch"),
                               rtol=0, atol=1e-14)
    # the MMD first variation's gradient, as flowkit's MMD objective computes it
    pts, w = torch.cat([x, y]), torch.cat([x.new_full((N,), 2 / N), y.new_full((M,), -2 / M)])
    torch.testing.assert_close(tk.triton_kernel_grad_sum(x, pts, KERNELS[0], w),
                               fk.objectives.MMD(y, KERNELS[0]).functional_gradient(x),
                               rtol=0, atol=1e-13)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_softmin_is_the_log_sum_exp(dtype):
    x, y, _ = _case(dtype, 3)
    h = torch.randn(M, dtype=dtype, generator=torch.Generator().manual_seed(1))
    for eps in (0.05, 1.0):  # small eps: the online maximum must keep exp in range
        ref = -eps * torch.logsumexp(h - (x[:, None] - y[None]).pow(2).sum(-1) / (2 * eps), 1)
        torch.testing.assert_close(tk.triton_softmin(x, y, h, eps), ref, rtol=0,
                                   atol=TOL[dtype] * (1 + float(ref.abs().max())))


def test_the_fused_path_says_why_it_cannot_run():
    x, y, w = _case(torch.float32, 2)
    imq = fk.kernels.InverseMultiquadric()
    assert "Gaussian, Laplacian and EnergyKernel" in tk.triton_applicable(x, y, imq)
    with pytest.raises(ValueError, match="triton_kernel_sum cannot run: it supports"):
        tk.triton_kernel_sum(x, y, imq, w)
    assert "float32 and float64" in tk.triton_applicable(x.half(), y.half(), KERNELS[0])
    assert not tk.triton_available("cuda") or torch.cuda.is_available()
    if HAVE_TRITON:
        xr = x.clone().requires_grad_(True)
        with pytest.raises(ValueError, match="does not record gradients"):
            tk.triton_kernel_grad_sum(xr, y, KERNELS[0])
        with pytest.raises(ValueError, match="weights must have shape"):
            tk.triton_kernel_sum(x, y, KERNELS[0], w[:3])
    else:
        with pytest.raises(ValueError, match="Triton is not importable"):
            tk.triton_kernel_sum(x, y, KERNELS[0], w)


# --------------------------------------------------------------------------- routing
def _cuda_like(dtype=torch.float32, requires_grad=False):
    """What route() reads of a tensor, on a CUDA device this machine need not have."""
    from types import SimpleNamespace

    return SimpleNamespace(device=torch.device("cuda", 0), dtype=dtype,
                           requires_grad=requires_grad)


@pytest.fixture
def triton_on_cuda(monkeypatch):
    """Triton importable and a GPU present, as route() sees them."""
    monkeypatch.setattr(tk, "triton_available", lambda device="cuda":
                        torch.device(device).type == "cuda")


def test_auto_routes_the_fused_reductions_on_cuda_to_triton(triton_on_cuda):
    from flowkit.backends import route

    x, y, w = _cuda_like(), _cuda_like(), _cuda_like()
    for kernel in KERNELS:
        assert route("auto", x, y, w, gaussian_rate=kernel.gaussian_rate(),
                     kernel=kernel) == "triton"
    assert route("auto", x, y, w, kernel="softmin") == "triton"
    assert route("triton", x, y, w, kernel=KERNELS[0]) == "triton"
    # what it does not fuse, or cannot run, stays on torch
    assert route("auto", x, y, w, kernel=None) == "torch"  # the soft barycentre
    assert route("auto", x, y, w, kernel=fk.kernels.InverseMultiquadric()) == "torch"
    assert route("auto", _cuda_like(torch.float16), y, w, kernel=KERNELS[0]) == "torch"
    assert route("auto", _cuda_like(requires_grad=True), y, w, kernel=KERNELS[0]) == "torch"
    assert route("torch", x, y, w, kernel=KERNELS[0]) == "torch"


def test_auto_never_takes_triton_on_cpu_or_without_it(monkeypatch):
    from flowkit import backends

    x, y, w = _case(torch.float64, 2)
    monkeypatch.setattr(tk, "triton_available", lambda device="cuda": True)
    assert backends.route("auto", x, y, w, kernel=KERNELS[0]) == "torch"  # CPU unchanged
    monkeypatch.setattr(tk, "triton_available", lambda device="cuda": False)
    assert backends.route("auto", _cuda_like(), _cuda_like(), kernel=KERNELS[0]) == "torch"


def test_backend_triton_on_cpu_says_why_it_cannot_run(monkeypatch):
    # Triton's interpreter aside (the tests above), the fused path needs CUDA tensors
    monkeypatch.setattr(tk, "triton_available", lambda device="cuda":
                        torch.device(device).type == "cuda")
    x, y, w = _case(torch.float32, 2)
    with pytest.raises(ValueError, match="backend='triton' cannot run here: Triton is not "
                                         "importable or cannot run on cpu.*Gaussian"):
        fk.kernels.kernel_sum(x, y, KERNELS[0], w, backend="triton")
    with pytest.raises(ValueError, match="backend='triton' cannot run here: it has no fused"):
        fk.geometry.PointCloud(x, y, backend="triton").soft_barycenter(w, 0.5)


@needs_triton
def test_backend_triton_runs_the_fused_kernels_through_the_geometry():
    x, y, w = _case(torch.float64, 3)
    for kernel in KERNELS:
        for fn in (fk.kernels.kernel_sum, fk.kernels.kernel_grad_sum):
            torch.testing.assert_close(fn(x, y, kernel, w, backend="triton"),
                                       fn(x, y, kernel, w, backend="torch"),
                                       rtol=0, atol=1e-12)
    h = torch.randn(M, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(fk.geometry.PointCloud(x, y, backend="triton").softmin(h, 0.3),
                               fk.geometry.PointCloud(x, y, backend="torch").softmin(h, 0.3),
                               rtol=0, atol=1e-12)
