r"""The torch backend: one row block of each reduction, in plain (differentiable) torch.

Inputs arrive centred near the origin (by :class:`flowkit.geometry.PointCloud`), which is
what keeps the one-product (Gram) form of the squared distances accurate.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["sqdist_direct", "sqdist_gram", "reduce", "grad_explicit", "logsumexp",
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
