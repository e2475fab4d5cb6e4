"""Where the reductions run, and the one routing decision.

``torch`` (:mod:`flowkit.backends.torch`) is plain torch, differentiable, any device and
dtype. ``native`` (:mod:`flowkit.backends.native`) is a fused C path for the Gaussian kernel
and Sinkhorn's softmin on CPU in float32. ``keops`` (:mod:`flowkit.backends.keops`) hands
the reduction to KeOps.
``triton`` (:mod:`flowkit.triton_kernels`) is the fused Triton path on CUDA (Gaussian,
Laplacian and energy kernels, and Sinkhorn's softmin; extra ``flowkit[triton]``).
:func:`route` turns the requested backend (``"auto"`` by default) into the one that runs.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from flowkit.backends import native

__all__ = ["BACKENDS", "DEFAULT_MEMORY_BUDGET", "block_rows", "check_backend",
           "check_blocking", "route"]

#: Bytes of temporaries one block of a reduction may use (256 MiB) unless told otherwise.
DEFAULT_MEMORY_BUDGET = 2**28
#: The backends a reduction can be asked for; ``"auto"`` lets :func:`route` choose.
BACKENDS = ("auto", "torch", "native", "keops", "triton")


def check_backend(backend: str) -> str:
    """``backend`` if it is one of :data:`BACKENDS`, else a ``ValueError`` naming it."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def check_blocking(block_size: int | None, memory_budget: int) -> None:
    """``block_size``: None or an int >= 1; ``memory_budget``: an int number of bytes >= 1."""
    if block_size is not None and (isinstance(block_size, bool)
                                   or not isinstance(block_size, int) or block_size < 1):
        raise ValueError(f"block_size must be a positive int, got {block_size!r}")
    if isinstance(memory_budget, bool) or not isinstance(memory_budget, int):
        raise TypeError(f"memory_budget must be an int number of bytes, got {memory_budget!r}")
    if memory_budget < 1:
        raise ValueError(f"memory_budget must be a positive number of bytes, got {memory_budget}")


def block_rows(n_cols: int, itemsize: int, memory_budget: int = DEFAULT_MEMORY_BUDGET,
               n_buffers: int = 2) -> int:
    """Rows per block so that ``n_buffers`` temporaries of ``rows x n_cols`` fit the budget."""
    check_blocking(None, memory_budget)
    per_row = n_buffers * n_cols * itemsize
    if memory_budget < per_row:
        raise ValueError(
            f"memory_budget={memory_budget} bytes is too small for one row of {n_cols} "
            f"columns ({per_row} bytes); raise memory_budget to at least {per_row}"
        )
    return max(1, memory_budget // per_row)


#: the ``kernel`` tags of Sinkhorn's reductions, which the native path fuses too
SINKHORN_REDUCTIONS = ("softmin", "soft_barycenter")


def _native_refusal(x: Tensor, gaussian_rate: float | None, tensors: tuple,
                    kernel: Any = None) -> str | None:
    """None if the native path applies, else why not."""
    import torch

    if gaussian_rate is None and not (isinstance(kernel, str) and kernel in SINKHORN_REDUCTIONS):
        return "it supports the Gaussian kernel only (and Sinkhorn's softmin)"
    if x.device.type != "cpu" or x.dtype != torch.float32:
        return f"it runs float32 on CPU only, got {x.dtype} on {x.device}"
    if torch.is_grad_enabled() and any(t.requires_grad for t in (x, *tensors)):
        return "it does not record gradients (use backend='torch' for autograd)"
    return None


def _triton_refusal(x: Tensor, kernel: Any, tensors: tuple) -> str | None:
    """None if the Triton path can run this reduction, else why not."""
    if kernel is None or (isinstance(kernel, str) and kernel == "soft_barycenter"):
        return "it has no fused kernel for this reduction"
    from flowkit import triton_kernels
    from flowkit.kernels import Gaussian

    # the softmin runs under the same conditions as a kernel sum (dtype, device, no graph)
    kernel = Gaussian(1.0) if isinstance(kernel, str) and kernel == "softmin" else kernel
    return triton_kernels.triton_applicable(x, x, kernel, *tensors)


def route(backend: str, x: Tensor, *tensors: Tensor, gaussian_rate: float | None = None,
          what: str = "", kernel: Any = None) -> str:
    """The backend that will run: ``'torch'``, ``'native'``, ``'keops'`` or ``'triton'``.

    ``auto`` takes the native path where it applies (Gaussian kernel or Sinkhorn's
    reductions, float32 on CPU, no gradient being recorded) and is available; on CUDA the
    Triton path where it applies (:func:`flowkit.triton_kernels.triton_applicable`: Triton
    importable, a kernel it fuses, float32/float64, no gradient being recorded); else torch.
    KeOps only when asked for. ``gaussian_rate`` is ``c`` of a Gaussian kernel
    ``exp(-c r^2)``, None for anything else. ``kernel`` is the kernel of a kernel reduction,
    ``"softmin"`` or ``"soft_barycenter"`` for Sinkhorn's reductions (the native path fuses
    both, the Triton path the softmin), None for a reduction no fused path covers.
    """
    check_backend(backend)
    if backend in ("torch", "keops"):
        return backend
    if backend == "triton":
        why = _triton_refusal(x, kernel, tensors)
        if why is not None:
            raise ValueError(f"backend='triton' cannot run here: {why}{what}; use "
                             "backend='auto' or 'torch' (the fused path needs CUDA tensors "
                             "and pip install 'flowkit[triton]')")
        return "triton"
    why = _native_refusal(x, gaussian_rate, tensors, kernel)
    if backend == "native":
        if why is not None:
            raise ValueError(f"backend='native' cannot run here: {why}{what}")
        if native.library() is None:
            raise RuntimeError(f"backend='native' is unavailable: "
                               f"{native.unavailable_reason()}; use backend='torch'")
        return "native"
    if why is None and native.library() is not None:
        return "native"
    # CUDA only: on CPU Triton runs under its interpreter, for tests, never by default
    if x.device.type == "cuda" and _triton_refusal(x, kernel, tensors) is None:
        return "triton"
    return "torch"
