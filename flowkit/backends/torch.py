r"""The torch backend: one row block of each reduction, in plain (differentiable) torch.

Inputs arrive centred near the origin (by :class:`flowkit.geometry.PointCloud`), which is
what keeps the one-product (Gram) form of the squared distances accurate.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["sqdist_direct", "sqdist_gram", "reduce", "grad_explicit", "logsumexp",
           "softmin_ranges",
           "lse_and_barycenter"]


def sqdist_direct(x: Tensor, y: Tensor) -> Tensor:
    """Squared distances from explicit differences: exact zeros at coincident points."""
    return (x[:, None, :] - y[None, :, :]).pow(2).sum(-1)


def sqdist_gram(x: Tensor, y: Tensor, y_sq: Tensor) -> Tensor:
    """Squared distances through one matrix product (fast; absolute rounding error of
    order ``eps (|x|^2 + |y|^2)``, hence the centring)."""
    r2 = torch.addmm(y_sq[None, :], x, y.T, alpha=-2.0)
    r2.add_(x.pow(2).sum(1, keepdim=True)).clamp_(min=0.0)
    return r2


def reduce(x: Tensor, y: Tensor, V: Tensor, fn: Callable[[Tensor], Tensor],
           explicit: bool, y_sq: Tensor | None = None) -> Tensor:
    """``out_i = sum_j fn(|x_i - y_j|^2) V_j`` for one block of rows, shape ``(n, K)``."""
    if explicit:
        return fn(sqdist_direct(x, y)) @ V
    return fn(sqdist_gram(x, y, y.pow(2).sum(1) if y_sq is None else y_sq)) @ V


def grad_explicit(x: Tensor, y: Tensor, w: Tensor, dprofile: Callable[[Tensor], Tensor]
                  ) -> Tensor:
    r"""``2 sum_j w_j kappa'(r2_ij) (x_i - y_j)`` from explicit differences (the coincident
    term is exactly ``dprofile(0) * 0 = 0``)."""
    diff = x[:, None, :] - y[None]
    p = dprofile(diff.pow(2).sum(-1)) * w
    return 2.0 * torch.einsum("ij,ijd->id", p, diff)


def _logits(x: Tensor, y: Tensor, h: Tensor, eps: float, y_sq: Tensor | None) -> Tensor:
    y_sq = y.pow(2).sum(1) if y_sq is None else y_sq
    return h - (0.5 / eps) * sqdist_gram(x, y, y_sq)


def logsumexp(x: Tensor, y: Tensor, h: Tensor, eps: float, y_sq: Tensor | None = None
              ) -> Tensor:
    r"""``log sum_j exp(h_j - |x_i - y_j|^2 / (2 eps))`` for one block of rows."""
    return torch.logsumexp(_logits(x, y, h, eps, y_sq), dim=1)


def lse_and_barycenter(x: Tensor, y: Tensor, h: Tensor, eps: float,
                       y_sq: Tensor | None = None) -> tuple[Tensor, Tensor]:
    r"""The log-normaliser above and ``sum_j softmax_j(h_j - |x_i - y_j|^2/(2 eps)) y_j``."""
    logits = _logits(x, y, h, eps, y_sq)
    lse = torch.logsumexp(logits, dim=1)
    return lse, torch.exp(logits - lse[:, None]) @ y


def softmin_ranges(x: Tensor, y: Tensor, h: Tensor, eps: float, sparsity,
                   with_barycenter: bool, memory_budget: int) -> tuple[Tensor, Tensor | None]:
    r"""``log sum_j exp(h_j - |x_i - y_j|^2 / (2 eps))`` over the kept blocks of
    ``sparsity`` (:class:`flowkit.geometry.BlockSparsity`) and, with ``with_barycenter``,
    the softmax average of those ``y_j``: any device and dtype.

    Per row cluster, its kept columns are gathered once and its rows reduced in blocks of
    at most ``memory_budget`` bytes of temporaries (explicit differences, so no centring
    is needed); rows with no kept column get ``-inf`` (and a NaN barycentre). The ranges
    are read on the host once per call (a few integers per cluster).
    """
    n, d = x.shape
    lse = x.new_full((n,), -float("inf"))
    bar = x.new_full((n, d), float("nan")) if with_barycenter else None
    ptr, cols = sparsity.ptr.tolist(), sparsity.cols.tolist()
    for c, (r0, r1) in enumerate(sparsity.rows.tolist()):
        ranges = cols[ptr[c]:ptr[c + 1]]
        if not ranges or r0 == r1:
            continue
        idx = torch.cat([torch.arange(a, b, device=x.device) for a, b in ranges])
        yc, hc = y[idx], h[idx]
        step = max(1, memory_budget // ((3 + d) * idx.numel() * x.element_size()))
        for s in range(r0, r1, step):
            e = min(r1, s + step)
            logits = hc - (0.5 / eps) * sqdist_direct(x[s:e], yc)
            lse[s:e] = torch.logsumexp(logits, dim=1)
            if bar is not None:
                bar[s:e] = torch.softmax(logits, dim=1) @ yc
    return lse, bar
