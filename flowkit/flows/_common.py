"""Pieces shared by the flows: targets given by their score, blocked vector reductions."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from flowkit.backends import DEFAULT_MEMORY_BUDGET, block_rows, check_blocking
from flowkit.backends import torch as torch_backend
from flowkit.kernels import Kernel
from flowkit.validation import check_weights

Score = Callable[[Tensor], Tensor]

__all__ = ["Score", "resolve_score", "kernel_matvec", "uniform_or_checked_weights"]


def resolve_score(score: Score | None, log_density: Callable[[Tensor], Tensor] | None) -> Score:
    r"""The score :math:`\nabla \log \pi` from exactly one of ``score`` or ``log_density``.

    A log-density (unnormalized is fine: the constant drops out) is differentiated by
    autograd; the returned score carries no graph unless its input does.
    """
    if (score is None) == (log_density is None):
        raise ValueError("give exactly one of score (x -> grad log pi(x), shape of x) or "
                         "log_density (x -> log pi(x) up to a constant, shape (N,))")
    if score is not None:
        if not callable(score):
            raise TypeError(f"score must be callable x -> grad log pi(x), got "
                            f"{type(score).__name__}")
        return score
    if not callable(log_density):
        raise TypeError(f"log_density must be callable x -> log pi(x), got "
                        f"{type(log_density).__name__}")
    return _AutogradScore(log_density)


class _AutogradScore(nn.Module):
    # a flowkit module, not a closure: objectives and layers holding it pickle into
    # checkpoints and layer files, and load without trusted_classes for this class
    def __init__(self, log_density: Callable[[Tensor], Tensor]):
        super().__init__()
        self.log_density = log_density

    def forward(self, x: Tensor) -> Tensor:
        with torch.enable_grad():
            keep = x.requires_grad
            z = x if keep else x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.log_density(z).sum(), z, create_graph=keep)
        return g


def checked_score(score: Score, x: Tensor) -> Tensor:
    """``score(x)``, checked to have the shape, dtype and device of ``x``."""
    s = score(x)
    if not isinstance(s, Tensor) or s.shape != x.shape:
        got = tuple(s.shape) if isinstance(s, Tensor) else type(s).__name__
        raise ValueError(f"score must return a tensor shaped like x {tuple(x.shape)}, got {got}")
    if s.dtype != x.dtype or s.device != x.device:
        raise TypeError(f"score returned {s.dtype} on {s.device} for x of {x.dtype} on "
                        f"{x.device}; it must keep the dtype and device")
    return s


def uniform_or_checked_weights(weights: Tensor | None, x: Tensor, name: str = "weights"
                               ) -> Tensor:
    """``1/N`` each when ``weights`` is None, else the checked ``(N,)`` weights summing to 1."""
    n = x.shape[0]
    if weights is None:
        return torch.full((n,), 1.0 / n, dtype=x.dtype, device=x.device)
    return check_weights(weights, n, name, like=x)


def kernel_matvec(x: Tensor, y: Tensor, kernel: Kernel, V: Tensor, *,
                  block_size: int | None = None,
                  memory_budget: int = DEFAULT_MEMORY_BUDGET) -> Tensor:
    r"""``out_i = sum_j k(x_i, y_j) V_j`` for ``V`` of shape ``(M, K)``: the vector-valued
    kernel sum (``kernel_sum`` reduces one weight vector; SVGD needs ``K = d`` of them).

    Blocked over rows of ``x`` like :func:`flowkit.kernels.kernel_sum`, differentiable.
    :class:`flowkit.geometry.PointCloud` reduces one weight vector per pass, so this runs
    the torch backend's block reduction directly (one pass for all ``K`` columns).
    """
    check_blocking(block_size, memory_budget)
    x2, y2 = x.flatten(1), y.flatten(1)
    center = y2.mean(0, keepdim=True)  # translation invariance: accurate float32 distances
    x2, y2 = x2 - center, y2 - center
    rows = block_size or block_rows(y2.shape[0], y2.element_size(), memory_budget, 2)
    if kernel.singular_at_zero:
        raise ValueError(f"kernel {kernel!r} is not differentiable at 0; use Gaussian or "
                         "InverseMultiquadric")
    y_sq = y2.pow(2).sum(1)
    out = [torch_backend.reduce(xb, y2, V, kernel.profile, False, y_sq) for xb in x2.split(rows)]
    return torch.cat(out) if len(out) > 1 else out[0]
