r"""Fused GPU reductions in Triton: distance, profile and sum in one pass, no N x M block.

The blocked torch path of :mod:`flowkit.kernels` writes each ``rows x M`` block of
distances and kernel values to memory and reads it back for the product. Here one Triton
program owns ``BLOCK_M`` rows of ``x``, streams ``y`` through in tiles of ``BLOCK_N``
points, and keeps everything in registers:

.. math::
    s_i = \sum_j w_j \kappa(r_{ij}^2), \qquad
    g_i = 2 \sum_j w_j \kappa'(r_{ij}^2)(x_i - y_j), \qquad
    \mathrm{softmin}_i = -\varepsilon \log \sum_j \exp(h_j - r_{ij}^2 / (2\varepsilon)),

with :math:`r_{ij}^2 = \|x_i - y_j\|^2` from explicit differences (exact zeros at
coincident points, so the singular kernels take the subgradient 0 there, as the torch path
does) and the softmin as an online log-sum-exp (the running maximum is rescaled tile by
tile; Milakov & Gimelshein 2018 [MilakovGimelshein18]). Memory traffic is
``O((N + M) d)`` per reduction instead of ``O(N M)``.

Kernels: :class:`flowkit.kernels.Gaussian` (exponential), :class:`~flowkit.kernels.Laplacian`
(square root and exponential) and :class:`~flowkit.kernels.EnergyKernel` (square root).
float32 and float64; the event is flattened and padded to a power of two (small ``d`` is the
target: the distance tile is ``BLOCK_M x BLOCK_N x D`` in registers).

Routing: :func:`flowkit.backends.route` sends a reduction of :mod:`flowkit.geometry` here
(kernel sums, kernel-gradient sums, Sinkhorn's softmin) when asked for with
``backend="triton"``, and under ``backend="auto"`` on CUDA tensors when
:func:`triton_applicable` returns ``None`` (Triton importable, supported kernel, float32 or
float64, no autograd graph requested). On CPU the same kernels
run under Triton's interpreter (``TRITON_INTERPRET=1`` before the first call), which is how
the tests check them against the torch path; that is for correctness only (slow).
"""

from __future__ import annotations

import functools
import math
import os
from typing import Any

import torch
from torch import Tensor

from flowkit.kernels import EnergyKernel, Gaussian, Kernel, Laplacian

__all__ = [
    "triton_available",
    "triton_applicable",
    "triton_kernel_sum",
    "triton_kernel_grad_sum",
    "triton_softmin",
]

# profile ids compiled into the kernel (tl.constexpr): one specialization per kernel
_GAUSS, _LAPLACE, _ENERGY = 0, 1, 2


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.lru_cache(maxsize=1)
def _triton() -> Any | None:
    try:
        from flowkit import _triton_impl
    except ImportError:  # Triton is not installed
        return None
    # TRITON_INTERPRET is read when the kernels are decorated: remember which kind they are
    return {"sum": _triton_impl.ksum, "grad": _triton_impl.kgrad,
            "softmin": _triton_impl.softmin, "interpreted": _interpreting()}


def triton_available(device: torch.device | str = "cuda") -> bool:
    """Whether the fused Triton path can run on ``device``.

    True on CUDA when Triton imports and a GPU is present; on CPU only under Triton's
    interpreter (``TRITON_INTERPRET=1``), which the tests use.
    """
    device = torch.device(device)
    impl = _triton()
    if impl is None:
        return False
    if device.type == "cuda":
        return torch.cuda.is_available() and not impl["interpreted"]
    return device.type == "cpu" and impl["interpreted"]


def _kernel_id(kernel: Kernel) -> tuple[int, float] | None:
    if isinstance(kernel, Gaussian):
        return _GAUSS, kernel.gaussian_rate()
    if isinstance(kernel, Laplacian):
        return _LAPLACE, 1.0 / kernel.bandwidth
    if isinstance(kernel, EnergyKernel):
        return _ENERGY, 0.0
    return None


def triton_applicable(x: Tensor, y: Tensor, kernel: Kernel, *tensors: Tensor) -> str | None:
    """``None`` when the Triton path can run this reduction, else the reason it cannot."""
    if _kernel_id(kernel) is None:
        return (f"it supports Gaussian, Laplacian and EnergyKernel, not {kernel!r}")
    if x.dtype not in (torch.float32, torch.float64):
        return f"it runs float32 and float64, got {x.dtype}"
    if not triton_available(x.device):
        return f"Triton is not importable or cannot run on {x.device}"
    if torch.is_grad_enabled() and any(t.requires_grad for t in (x, y, *tensors)):
        return "it does not record gradients (use backend='torch' for autograd)"
    return None


def _prepare(x: Tensor, y: Tensor, kernel: Kernel, weights: Tensor | None, what: str):
    from flowkit.validation import check_compatible, check_particles

    check_particles(x, "x", finite=False)
    check_particles(y, "y", finite=False)
    check_compatible(x, y, "x", "y")
    why = triton_applicable(x, y, kernel, *(() if weights is None else (weights,)))
    if why is not None:
        raise ValueError(f"{what} cannot run: {why}")
    x2, y2 = x.flatten(1).contiguous(), y.flatten(1).contiguous()
    m = y2.shape[0]
    if weights is None:
        w = torch.full((m,), 1.0 / m, dtype=y2.dtype, device=y2.device)
    elif weights.shape != (m,):
        raise ValueError(f"weights must have shape ({m},) to match y, got "
                         f"{tuple(weights.shape)}")
    else:
        w = weights.to(y2.dtype).contiguous()
    return x2, y2, w


def _blocks(d: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_D): the distance tile holds at most 2^14 numbers."""
    bd = max(2, 1 << (d - 1).bit_length())
    side = max(16, int(math.isqrt((1 << 14) // bd)))
    side = 1 << (side.bit_length() - 1)
    return min(side, 64), min(side, 64), bd


def _launch(fn, x2: Tensor, *args: Any) -> None:
    n = x2.shape[0]
    bm, bn, bd = _blocks(x2.shape[1])
    grid = (-(-n // bm),)
    fn[grid](*args, BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd)


def triton_kernel_sum(x: Tensor, y: Tensor, kernel: Kernel,
                      weights: Tensor | None = None) -> Tensor:
    r"""``s_i = sum_j w_j k(x_i, y_j)`` fused in Triton; as :func:`flowkit.kernels.kernel_sum`.

    ``weights`` default to ``1/M``. ``ValueError`` (saying why) where the path cannot run.
    """
    x2, y2, w = _prepare(x, y, kernel, weights, "triton_kernel_sum")
    kind, c = _kernel_id(kernel)
    out = torch.empty(x2.shape[0], dtype=x2.dtype, device=x2.device)
    _launch(_triton()["sum"], x2, x2, y2, w, out, x2.shape[0], y2.shape[0], x2.shape[1],
            float(c), kind)
    return out


def triton_kernel_grad_sum(x: Tensor, y: Tensor, kernel: Kernel,
                           weights: Tensor | None = None) -> Tensor:
    r"""``g_i = sum_j w_j grad_1 k(x_i, y_j)`` fused in Triton, the shape of ``x``.

    As :func:`flowkit.kernels.kernel_grad_sum` (explicit differences: subgradient 0 at
    coincident points for the Laplacian and energy kernels).
    """
    x2, y2, w = _prepare(x, y, kernel, weights, "triton_kernel_grad_sum")
    kind, c = _kernel_id(kernel)
    out = torch.empty_like(x2)
    _launch(_triton()["grad"], x2, x2, y2, w, out, x2.shape[0], y2.shape[0], x2.shape[1],
            float(c), kind)
    return out.view_as(x)


def triton_softmin(x: Tensor, y: Tensor, h: Tensor, eps: float) -> Tensor:
    r"""``-eps log sum_j exp(h_j - |x_i - y_j|^2 / (2 eps))``, the Sinkhorn softmin.

    The reduction :func:`flowkit.objectives.sinkhorn_potentials` repeats (cost
    :math:`\|x-y\|^2/2`), as one online log-sum-exp pass; ``h`` is ``(M,)`` (log-weights
    plus the current dual potential over ``eps``).
    """
    from flowkit.validation import check_positive

    eps = check_positive(eps, "eps")
    x2, y2, hh = _prepare(x, y, Gaussian(1.0), h, "triton_softmin")
    out = torch.empty(x2.shape[0], dtype=x2.dtype, device=x2.device)
    _launch(_triton()["softmin"], x2, x2, y2, hh, out, x2.shape[0], y2.shape[0],
            x2.shape[1], 0.5 / eps, eps)
    return out
