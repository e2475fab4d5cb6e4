"""The Triton kernels behind :mod:`flowkit.triton_kernels` (imports Triton at import time).

Triton resolves the helpers a jitted function calls through the module's globals, so the
kernels live at module level here, and :mod:`flowkit.triton_kernels` imports this module
only once Triton is known to be installed.
"""

import triton
import triton.language as tl


@triton.jit
def _tiles(x_ptr, y_ptr, rows, start, n, m, d, BLOCK_N: tl.constexpr,
           BLOCK_D: tl.constexpr):
    # a BLOCK_M x BLOCK_N x BLOCK_D tile of differences x_i - y_j (zero padding)
    cols = start + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, BLOCK_D)
    xm = (rows[:, None] < n) & (dims[None, :] < d)
    ym = (cols[:, None] < m) & (dims[None, :] < d)
    xt = tl.load(x_ptr + rows[:, None] * d + dims[None, :], mask=xm, other=0.0)
    yt = tl.load(y_ptr + cols[:, None] * d + dims[None, :], mask=ym, other=0.0)
    diff = xt[:, None, :] - yt[None, :, :]
    return cols, diff


@triton.jit
def _profile(r2, c, KIND: tl.constexpr, DERIV: tl.constexpr):
    # kappa(r2) or kappa'(r2); singular profiles give 0 at r2 = 0 (subgradient)
    pos = r2 > 0
    r = tl.sqrt(tl.where(pos, r2, 1.0))
    if KIND == 0:
        e = tl.exp(-c * r2)
        out = -c * e if DERIV else e
    elif KIND == 1:
        e = tl.exp(-c * tl.where(pos, r, 0.0))
        out = tl.where(pos, -0.5 * c * e / r, 0.0) if DERIV else e
    else:
        out = tl.where(pos, -0.5 / r, 0.0) if DERIV else -tl.where(pos, r, 0.0)
    return out


@triton.jit
def ksum(x_ptr, y_ptr, w_ptr, out_ptr, n, m, d, c, KIND: tl.constexpr,
         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    acc = tl.zeros((BLOCK_M,), dtype=out_ptr.dtype.element_ty)
    for start in range(0, m, BLOCK_N):
        cols, diff = _tiles(x_ptr, y_ptr, rows, start, n, m, d, BLOCK_N, BLOCK_D)
        w = tl.load(w_ptr + cols, mask=cols < m, other=0.0)
        k = _profile(tl.sum(diff * diff, axis=2), c, KIND, False)
        acc += tl.sum(k * w[None, :], axis=1)
    tl.store(out_ptr + rows, acc, mask=rows < n)


@triton.jit
def kgrad(x_ptr, y_ptr, w_ptr, out_ptr, n, m, d, c, KIND: tl.constexpr,
          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=out_ptr.dtype.element_ty)
    for start in range(0, m, BLOCK_N):
        cols, diff = _tiles(x_ptr, y_ptr, rows, start, n, m, d, BLOCK_N, BLOCK_D)
        w = tl.load(w_ptr + cols, mask=cols < m, other=0.0)
        p = _profile(tl.sum(diff * diff, axis=2), c, KIND, True) * w[None, :]
        acc += tl.sum(p[:, :, None] * diff, axis=1)
    mask = (rows[:, None] < n) & (dims[None, :] < d)
    tl.store(out_ptr + rows[:, None] * d + dims[None, :], 2.0 * acc, mask=mask)


@triton.jit
def softmin(x_ptr, y_ptr, h_ptr, out_ptr, n, m, d, inv2eps, eps,
            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    dt = out_ptr.dtype.element_ty
    best = tl.full((BLOCK_M,), float("-inf"), dtype=dt)
    total = tl.zeros((BLOCK_M,), dtype=dt)
    for start in range(0, m, BLOCK_N):
        cols, diff = _tiles(x_ptr, y_ptr, rows, start, n, m, d, BLOCK_N, BLOCK_D)
        h = tl.load(h_ptr + cols, mask=cols < m, other=float("-inf"))
        a = h[None, :] - inv2eps * tl.sum(diff * diff, axis=2)
        new = tl.maximum(best, tl.max(a, axis=1))
        # rescale the running sum to the new maximum (online log-sum-exp)
        total = total * tl.exp(best - new) + tl.sum(tl.exp(a - new[:, None]), axis=1)
        best = new
    tl.store(out_ptr + rows, -eps * (best + tl.log(total)), mask=rows < n)
