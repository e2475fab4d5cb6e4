"""The KeOps backend (extra ``flowkit[keops]``): symbolic reductions, no blocks needed."""

from __future__ import annotations

from torch import Tensor

__all__ = ["kernel_reduce", "softmin", "soft_barycenter"]


def _lazy():
    try:
        from pykeops.torch import LazyTensor
    except ImportError as err:
        raise ImportError(
            "backend='keops' needs pykeops, which is not installed: pip install "
            "'flowkit[keops]' (or pip install pykeops), or pass backend='torch'"
        ) from err
    return LazyTensor


def _pair(x: Tensor, y: Tensor):
    LazyTensor = _lazy()
    return LazyTensor(x[:, None, :].contiguous()), LazyTensor(y[None, :, :].contiguous())


def kernel_reduce(x: Tensor, y: Tensor, w: Tensor, kernel, grad: bool) -> Tensor:
    """``sum_j w_j k(x_i, y_j)`` (``(N,)``) or ``sum_j w_j grad_1 k(x_i, y_j)`` (``(N, d)``)."""
    xi, yj = _pair(x, y)
    wj = _lazy()(w[None, :, None].contiguous())
    r2 = ((xi - yj) ** 2).sum(-1)
    if grad:  # explicit differences: exact 0 at coincident points for singular kernels
        return 2.0 * (kernel.lazy_profile(r2, True) * wj * (xi - yj)).sum(dim=1)
    return (kernel.lazy_profile(r2) * wj).sum(dim=1)[:, 0]


def _logits(x: Tensor, y: Tensor, h: Tensor, eps: float):
    xi, yj = _pair(x, y)
    hj = _lazy()(h[None, :, None].contiguous())
    return hj - ((xi - yj) ** 2).sum(-1) * (0.5 / eps), yj


def softmin(x: Tensor, y: Tensor, h: Tensor, eps: float) -> Tensor:
    logits, _ = _logits(x, y, h, eps)
    return -eps * logits.logsumexp(dim=1)[:, 0]


def soft_barycenter(x: Tensor, y: Tensor, h: Tensor, eps: float) -> Tensor:
    logits, yj = _logits(x, y, h, eps)
    return logits.sumsoftmaxweight(yj, dim=1)
