"""Kernels and the blocked reductions: closed forms against autograd, blocks, backends, errors."""

import sys

import pytest
import torch

import flowkit as fk
from flowkit.kernels import kernel_grad_sum, kernel_sum, mmd2, native_available

K = fk.kernels
KERNELS = [
    K.Gaussian(0.8),
    K.InverseMultiquadric(1.2, -0.5),
    K.InverseMultiquadric(0.7, -0.9),
    K.Laplacian(0.9),
    K.EnergyKernel(),
    K.Gaussian(0.3) + 0.5 * K.InverseMultiquadric(2.0),
    K.SumKernel([K.Gaussian(0.5), K.Laplacian(1.0)], [1.0, 0.25]),
]
NATIVE = pytest.mark.skipif(not native_available(), reason="native path needs gcc and AVX2")


def _data(gen, n=17, m=11, d=3, dtype=torch.float64):
    x = torch.randn(n, d, generator=gen, dtype=dtype)
    y = torch.randn(m, d, generator=gen, dtype=dtype) + 0.5
    w = torch.randn(m, generator=gen, dtype=dtype)
    return x, y, w


@pytest.mark.parametrize("kernel", KERNELS, ids=repr)
def test_closed_form_gradient_matches_autograd(gen, kernel):
    x, y, w = _data(gen)
    z = x.clone().requires_grad_(True)
    (want,) = torch.autograd.grad(kernel_sum(z, y, kernel, w).sum(), z)
    got = kernel_grad_sum(x, y, kernel, w)
    assert torch.linalg.norm(got - want) <= 1e-5 * torch.linalg.norm(want)
    # and against the explicit kernel matrix
    z = x.clone().requires_grad_(True)
    (naive,) = torch.autograd.grad((kernel(z, y) @ w).sum(), z)
    torch.testing.assert_close(got, naive, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kernel", KERNELS, ids=repr)
def test_sums_match_the_explicit_kernel_matrix(gen, kernel):
    x, y, w = _data(gen)
    torch.testing.assert_close(kernel_sum(x, y, kernel, w), kernel(x, y) @ w)
    want = kernel(x, x).mean() - 2 * kernel(x, y).mean() + kernel(y, y).mean()
    torch.testing.assert_close(mmd2(x, y, kernel), want)


@pytest.mark.parametrize("kernel", KERNELS, ids=repr)
@pytest.mark.parametrize("block_size", [1, 3, 16])
def test_blocked_equals_unblocked(gen, kernel, block_size):
    x, y, w = _data(gen)
    torch.testing.assert_close(kernel_sum(x, y, kernel, w, block_size=block_size),
                               kernel_sum(x, y, kernel, w))
    torch.testing.assert_close(kernel_grad_sum(x, y, kernel, w, block_size=block_size),
                               kernel_grad_sum(x, y, kernel, w))


def test_memory_budget_sets_the_blocks_and_small_budgets_are_exact(gen):
    x, y, w = _data(gen, n=40, m=30)
    k = K.Gaussian(1.0)
    one_row = 2 * 30 * 8
    assert K.block_rows(30, 8, one_row) == 1
    assert K.block_rows(30, 8, 10 * one_row) == 10
    torch.testing.assert_close(kernel_grad_sum(x, y, k, w, memory_budget=one_row),
                               kernel_grad_sum(x, y, k, w))


def test_memory_budget_too_small_for_one_row_names_the_fix(gen):
    x, y, _ = _data(gen)
    for k in (K.Gaussian(1.0), K.Laplacian(1.0)):
        with pytest.raises(ValueError, match="memory_budget.*raise memory_budget"):
            kernel_sum(x, y, k, memory_budget=16)
        with pytest.raises(ValueError, match="memory_budget"):
            kernel_grad_sum(x, y, k, memory_budget=16)
    with pytest.raises(TypeError, match="memory_budget"):
        kernel_sum(x, y, K.Gaussian(), memory_budget=1e9)
    with pytest.raises(ValueError, match="memory_budget"):
        fk.objectives.MMD(y, memory_budget=0)


@pytest.mark.parametrize("make", [lambda v: K.Gaussian(v), lambda v: K.Laplacian(v),
                                  lambda v: K.InverseMultiquadric(v)])
@pytest.mark.parametrize("value", [0.0, -1.0, float("nan"), float("inf")])
def test_nonpositive_bandwidth_is_rejected(make, value):
    with pytest.raises(ValueError, match="bandwidth|scale"):
        make(value)


def test_bad_backend_and_weights_are_rejected(gen):
    x, y, w = _data(gen)
    with pytest.raises(ValueError, match="backend"):
        kernel_sum(x, y, K.Gaussian(), backend="cuda")
    with pytest.raises(ValueError, match="weights"):
        kernel_sum(x, y, K.Gaussian(), w[:-1])


def test_keops_asked_for_but_missing_names_the_fix(gen, monkeypatch):
    x, y, _ = _data(gen)
    # None in sys.modules makes `import pykeops...` raise ImportError, installed or not
    monkeypatch.setitem(sys.modules, "pykeops", None)
    monkeypatch.setitem(sys.modules, "pykeops.torch", None)
    with pytest.raises(ImportError, match=r"pip install 'flowkit\[keops\]'"):
        kernel_grad_sum(x, y, K.Gaussian(), backend="keops")
    with pytest.raises(ImportError, match="backend='torch'"):
        fk.objectives.MMD(y, backend="keops").functional_gradient(x)


def test_singular_kernels_are_safe_at_zero_distance(gen):
    x, _, _ = _data(gen, n=9)
    for k in (K.Laplacian(0.5), K.EnergyKernel()):
        g = kernel_grad_sum(x, x, k)
        assert torch.isfinite(g).all()
        # one point against itself: the subgradient 0
        assert torch.equal(kernel_grad_sum(x[:1], x[:1], k), torch.zeros_like(x[:1]))
        z = x.clone().requires_grad_(True)
        (ga,) = torch.autograd.grad(mmd2(z, x + 1.0, k), z)
        assert torch.isfinite(ga).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_and_shape_are_kept(gen, dtype):
    x = torch.randn(7, 2, 3, generator=gen).to(dtype)
    y = torch.randn(5, 2, 3, generator=gen).to(dtype)
    g = kernel_grad_sum(x, y, K.Gaussian(1.0))
    assert g.shape == x.shape and g.dtype == dtype
    assert kernel_sum(x, y, K.Gaussian(1.0)).dtype == dtype


def test_float32_far_from_the_origin_stays_accurate(gen):
    # centring makes the Gram-form distances exact enough at |x| ~ 1e3
    x, y, w = _data(gen, dtype=torch.float64)
    shift = 1000.0
    k = K.Gaussian(1.0)
    xf, yf = (x + shift).float(), (y + shift).float()  # the inputs as float32 holds them
    want = kernel_grad_sum(xf.double(), yf.double(), k, w, backend="torch")
    got = kernel_grad_sum(xf, yf, k, w.float(), backend="torch")
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)


@NATIVE
@pytest.mark.parametrize("d", [1, 2, 5, 16, 17, 64, 100, 130])
def test_native_path_matches_torch(gen, d):
    x, y, w = _data(gen, n=203, m=150, d=d, dtype=torch.float32)
    k = K.Gaussian(0.6 * d**0.5)
    ref_s = kernel_sum(x.double(), y.double(), k, w.double(), backend="torch")
    ref_g = kernel_grad_sum(x.double(), y.double(), k, w.double(), backend="torch")
    s = kernel_sum(x, y, k, w, backend="native")
    g = kernel_grad_sum(x, y, k, w, backend="native")
    assert (s.double() - ref_s).abs().max() <= 1e-5 * ref_s.abs().max()
    assert (g.double() - ref_g).abs().max() <= 1e-5 * ref_g.abs().max()


@NATIVE
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("tiles", ["fused", "augmented"])
@pytest.mark.parametrize("d", [1, 3, 17, 64, 100, 130])
def test_native_gram_tiles_match_float64(gen, monkeypatch, tiles, d, threads):
    # The large-d path on small tiles (9 x 20: sizes not multiples of 8 or of the tile;
    # fused: 3 column panels, the last one short, and equal row tiles of 9 or fewer rows),
    # several value columns (a kernel sum, a gradient's d + 1, more than the small-d kernel
    # takes, which sends d <= 16 to the tiles too), one and two threads: each tile's
    # exponent, exponential and last column must be right, whichever worker takes it.
    from flowkit.backends import native

    monkeypatch.setattr(native, "_TILES", {tiles: (9, 20)})
    monkeypatch.setattr(native, "LARGE_D_TILES", tiles)
    x = torch.randn(53, d, generator=gen) / 2
    y = torch.randn(47, d, generator=gen) / 2
    x[0] += 30.0  # exponents below -88: exact zeros, not subnormal garbage
    c = 1.0 / d
    kernel = torch.exp(-c * torch.cdist(x.double(), y.double()).pow(2))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for k in (1, 2, d + 1, native.library().kmax + 3):
            V = torch.randn(47, k, generator=gen)
            got = native.reduce(x, y, V, c, rows=11)
            want = kernel @ V.double()
            # float32: a relative error of a few 1e-7 per entry, summed over 47 columns
            torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
            assert torch.all(got[0] == 0)
            assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)


@NATIVE
def test_native_fused_tiles_are_deterministic_on_two_threads(gen, monkeypatch):
    # Two workers take the runs of columns in whatever order the scheduler gives them; the
    # runs' sums are added in column order, so every call gives the same bits, inside
    # serial_caller (the caller's ops on one thread, the workers still two) or not.
    from flowkit.backends import native

    monkeypatch.setattr(native, "_TILES", {"fused": (16, 8)})
    monkeypatch.setattr(native, "LARGE_D_TILES", "fused")
    x = torch.randn(61, 33, generator=gen) / 3
    y = torch.randn(203, 33, generator=gen) / 3
    V = torch.randn(203, 34, generator=gen)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        first = native.reduce(x, y, V, 0.05, rows=61)
        for _ in range(5):
            assert torch.equal(native.reduce(x, y, V, 0.05, rows=61), first)
        with native.serial_caller():
            assert torch.get_num_threads() == 1 and native.worker_threads() == 2
            assert torch.equal(native.reduce(x, y, V, 0.05, rows=61), first)
        want = torch.exp(-0.05 * torch.cdist(x.double(), y.double()).pow(2)) @ V.double()
        torch.testing.assert_close(first.double(), want, rtol=1e-5, atol=1e-5)
    finally:
        torch.set_num_threads(before)


def test_serial_caller_restores_threads_and_nests(monkeypatch):
    from flowkit.backends import native

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.raises(RuntimeError, match="inside"):
            with native.serial_caller():
                assert (torch.get_num_threads(), native.worker_threads()) == (1, 2)
                with native.serial_caller():  # nested: the outer count is kept
                    assert (torch.get_num_threads(), native.worker_threads()) == (1, 2)
                assert (torch.get_num_threads(), native.worker_threads()) == (1, 2)
                raise RuntimeError("inside")
        assert (torch.get_num_threads(), native.worker_threads()) == (2, 2)
        monkeypatch.setattr(native, "SERIAL_CALLER", False)  # the benchmark's "before"
        with native.serial_caller():
            assert (torch.get_num_threads(), native.worker_threads()) == (2, 2)
    finally:
        torch.set_num_threads(before)


@NATIVE
def test_native_exp_is_accurate_and_underflows_to_zero():
    from flowkit.backends import native

    a = torch.linspace(-120.0, 80.0, 100_003)
    out = a.clone()
    native.scaled_exp(out, 1.0)
    ref = torch.exp(a.double())
    normal = a > -87.0
    rel = ((out.double() - ref).abs() / ref)[normal]
    assert rel.max() < 3e-7
    assert torch.all(out[a < -88.0] == 0)


def test_native_refuses_what_it_cannot_do(gen):
    x, y, _ = _data(gen)
    with pytest.raises(ValueError, match="float32 on CPU"):
        kernel_sum(x, y, K.Gaussian(), backend="native")
    with pytest.raises(ValueError, match="Gaussian kernel only"):
        kernel_sum(x.float(), y.float(), K.Laplacian(), backend="native")


def test_auto_backend_records_gradients(gen):
    # auto must fall back to differentiable torch when autograd is recording
    x, y, w = _data(gen, dtype=torch.float32)
    z = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(kernel_sum(z, y, K.Gaussian(1.0), w).sum(), z)
    torch.testing.assert_close(g, kernel_grad_sum(x, y, K.Gaussian(1.0), w), rtol=1e-4,
                               atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(gen):
    x, y, w = _data(gen)
    k = K.Gaussian(1.0)
    got = kernel_grad_sum(x.cuda(), y.cuda(), k, w.cuda())
    torch.testing.assert_close(got.cpu(), kernel_grad_sum(x, y, k, w))


def _has_keops() -> bool:
    try:
        import pykeops.torch  # noqa: F401
    except Exception:
        return False
    return True


@pytest.mark.skipif(not _has_keops(), reason="pykeops is an optional extra")
def test_keops_backend_matches_torch(gen):
    x, y, w = _data(gen, n=50, m=40, dtype=torch.float32)
    for k in (K.Gaussian(0.8), K.EnergyKernel()):
        torch.testing.assert_close(kernel_grad_sum(x, y, k, w, backend="keops"),
                                   kernel_grad_sum(x, y, k, w, backend="torch"),
                                   rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------- inputs are validated


@pytest.mark.parametrize("wdtype", [torch.float64, torch.float16])
@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_weights_of_another_dtype_are_refused_not_misread(gen, wdtype, backend):
    # the native path used to read float64/float16 weights' memory as float32
    x, y, _ = _data(gen, n=30, m=30, dtype=torch.float32)
    w = torch.full((30,), 1 / 30, dtype=wdtype)
    for fn in (kernel_sum, kernel_grad_sum):
        with pytest.raises(TypeError, match="weights has dtype"):
            fn(x, y, K.Gaussian(1.0), w, backend=backend)


@NATIVE
def test_native_gate_checks_every_tensor():
    from flowkit.backends import native

    lib = native.library()
    x, out = torch.zeros(4, 2), torch.zeros(4, 1)
    yt, vt = torch.zeros(2, 8), torch.zeros(1, 8)
    with pytest.raises(ValueError, match="native vt"):
        lib.gauss_reduce(x, yt, vt.double(), out, 0, 4)
    with pytest.raises(ValueError, match="native yt"):
        lib.gauss_reduce(x, torch.zeros(8, 2).T, vt, out, 0, 4)  # not contiguous
    with pytest.raises(ValueError, match="native out"):
        lib.gauss_reduce(x, yt, vt, torch.zeros(3, 1), 0, 4)
    with pytest.raises(ValueError, match="native a"):
        lib.scaled_exp(torch.zeros(5, dtype=torch.float16), 1.0)
    tile, v = torch.zeros(4, 8), torch.zeros(8)
    with pytest.raises(ValueError, match="native g"):
        lib.gauss_tile(tile[:, :4], out[:, 0], v[:4], v[:4], out[:, 0], 1.0)  # a view
    with pytest.raises(ValueError, match="native g: expected a 2-d tile"):
        lib.gauss_tile(v, out[:, 0], v, v, out[:, 0], 1.0)
    with pytest.raises(ValueError, match="native q"):
        lib.gauss_tile(tile, out[:, 0].contiguous(), v[:7], v, out[:, 0].contiguous(), 1.0)
    with pytest.raises(ValueError, match="native acc"):
        lib.gauss_tile(tile, torch.zeros(4), v, v, torch.zeros(4, dtype=torch.float64), 1.0)
    run = lib.tile_epilogue(torch.zeros(16), torch.zeros(4), v, v, torch.zeros(4), 1.0)
    for bounds in ((0, 4, 0, 8), (0, 5, 0, 1), (0, 1, 7, 9), (2, 1, 0, 1)):
        with pytest.raises(ValueError, match="do not fit a buffer of 16"):
            run(*bounds)
    with pytest.raises(ValueError, match="native u"):
        lib.tile_epilogue(torch.zeros(16), torch.zeros(4), v, v[:7], torch.zeros(4), 1.0)


@pytest.mark.parametrize("fn", ["kernel_sum", "kernel_grad_sum", "mmd2"])
@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_non_finite_inputs_are_refused(gen, fn, backend):
    x, y, _ = _data(gen, dtype=torch.float32)
    f = getattr(K, fn)
    for bad, name in ((float("nan"), "x"), (float("inf"), "y")):
        xb, yb = x.clone(), y.clone()
        (xb if name == "x" else yb)[0, 0] = bad
        with pytest.raises(ValueError, match=f"{name} contains 1 non-finite"):
            f(xb, yb, K.Gaussian(1.0), backend=backend)
    if fn != "mmd2":
        w = torch.ones(y.shape[0])
        w[2] = float("nan")
        with pytest.raises(ValueError, match="weights contains 1 non-finite"):
            f(x, y, K.Gaussian(1.0), w, backend=backend)


@pytest.mark.parametrize("fn", ["kernel_sum", "kernel_grad_sum", "mmd2"])
def test_bad_inputs_name_the_argument(gen, fn):
    x, y, w = _data(gen)
    f = getattr(K, fn)
    k = K.Gaussian(1.0)
    with pytest.raises(ValueError, match="y has event shape"):
        f(x, y[:, :2], k)
    with pytest.raises(TypeError, match="y has dtype"):
        f(x, y.float(), k)
    with pytest.raises(TypeError, match="x must be a torch.Tensor.*torch.as_tensor"):
        f(x.numpy(), y, k)
    with pytest.raises(TypeError, match="y must be a torch.Tensor"):
        f(x, y.tolist(), k)
    with pytest.raises(ValueError, match="x is empty"):
        f(x[:0], y, k)
    with pytest.raises(ValueError, match="y is empty"):
        f(x, y[:0], k)
    with pytest.raises(ValueError, match="x must have shape"):
        f(x[0], y, k)
    if fn != "mmd2":
        with pytest.raises(ValueError, match=r"weights must have shape \(11,\)"):
            f(x, y, k, w[:, None])
        with pytest.raises(TypeError, match="weights must be a torch.Tensor"):
            f(x, y, k, w.tolist())


def test_meta_tensors_skip_value_checks_but_not_shape_checks():
    x, y = torch.empty(5, 2, device="meta"), torch.empty(4, 2, device="meta")
    assert kernel_sum(x, y, K.Gaussian(1.0), backend="torch").shape == (5,)
    assert kernel_grad_sum(x, y, K.Gaussian(1.0), backend="torch").shape == (5, 2)
    with pytest.raises(ValueError, match="y has event shape"):
        kernel_sum(x, torch.empty(4, 3, device="meta"), K.Gaussian(1.0))


# ----------------------------------------------------------------- precision far from 0


@pytest.mark.parametrize("backend", ["auto", "torch"])
@pytest.mark.parametrize("kernel", [K.InverseMultiquadric(1.0), K.Gaussian(1.0)], ids=repr)
def test_float32_witness_gradient_far_from_the_target(gen, backend, kernel):
    # particles 3000 bandwidths from the target: the stacked [x; target] reduction used to
    # cancel catastrophically in the Gram form (20% off on CPU)
    x, y, _ = _data(gen, n=60, m=50, d=2, dtype=torch.float32)
    xs = x + 3000.0
    got = fk.objectives.MMD(y, kernel, backend=backend).functional_gradient(xs)
    want = fk.objectives.MMD(y.double(), kernel).functional_gradient(xs.double())
    assert torch.linalg.norm(got.double() - want) <= 1e-5 * torch.linalg.norm(want)


def test_float64_mmd2_keeps_its_self_terms_at_1e9(gen):
    x, y, _ = _data(gen, n=40, m=30, d=2)
    k = K.Gaussian(1.0)
    want = mmd2(x, y, k)
    assert float(mmd2(x + 1e9, y + 1e9, k)) == pytest.approx(float(want), rel=1e-6)
    assert float(mmd2(x + 1e9, y, k)) == pytest.approx(float(mmd2(x, y - 1e9, k)), rel=1e-6)


def test_weighted_mmd2_matches_the_kernel_matrices(gen):
    from flowkit.geometry import PointCloud

    x, y, _ = _data(gen)
    a = torch.rand(x.shape[0], generator=gen, dtype=x.dtype)
    b = torch.rand(y.shape[0], generator=gen, dtype=x.dtype)
    for k in (K.Gaussian(0.7), K.EnergyKernel()):
        want = a @ k(x, x) @ a - 2 * a @ k(x, y) @ b + b @ k(y, y) @ b
        torch.testing.assert_close(PointCloud(x, y, a=a, b=b, kernel=k, block_size=4).mmd2(),
                                   want)


def test_native_unavailable_reason_says_available_when_it_is(monkeypatch):
    # each state set by hand, so that the answer is checked on machines with and without it
    from flowkit.backends import native

    monkeypatch.delenv("FLOWKIT_NATIVE", raising=False)
    monkeypatch.setattr(native._State, "tried", True)
    monkeypatch.setattr(native._State, "lib", object())  # a library was built and loaded
    monkeypatch.setattr(native._State, "error", None)
    assert native.available() and native.unavailable_reason() == "available"
    monkeypatch.setattr(native._State, "lib", None)
    monkeypatch.setattr(native._State, "error", "compiling it failed")
    assert native.unavailable_reason() == "compiling it failed"
    monkeypatch.setenv("FLOWKIT_NATIVE", "0")
    assert native.unavailable_reason() == "it is turned off by FLOWKIT_NATIVE=0"
