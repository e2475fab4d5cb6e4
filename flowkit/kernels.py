r"""Radial kernels and the blocked reductions a kernel flow needs.

Every kernel here is radial, :math:`k(x, y) = \kappa(\|x - y\|^2)`, so its gradient in the
first argument is :math:`\nabla_1 k(x, y) = 2 \kappa'(r^2) (x - y)`. The two sums a flow needs
are then, for a block of rows,

.. math::
    \sum_j w_j k(x_i, y_j) = (K w)_i, \qquad
    \sum_j w_j \nabla_1 k(x_i, y_j) = 2\big[x_i (P w)_i - (P (w \odot Y))_i\big],
    \quad P_{ij} = \kappa'(\|x_i - y_j\|^2),

i.e. two matrix products per block, which one product ``P [w * Y | w]`` does at once. No
matrix larger than one ``rows x M`` block is ever built; the block size follows a memory
budget unless given.

Kernels that are not differentiable at zero distance (Laplacian, energy) take their
differences explicitly and use the subgradient 0 at coincident points, so a particle's
interaction with itself never produces a NaN.

Backends
--------
The reductions are thin wrappers over :class:`flowkit.geometry.PointCloud`, which validates
the inputs once (errors name the argument), centres each block of rows and hands it to a
backend of :mod:`flowkit.backends`: ``"torch"`` (plain torch, differentiable, any device
and dtype), ``"native"`` (a fused C path for the Gaussian kernel on CPU in float32, compiled
once and cached), ``"keops"`` (extra ``flowkit[keops]``), ``"triton"`` (fused kernels on
CUDA, extra ``flowkit[triton]``). ``backend="auto"`` (the default) takes the native path
where it applies and is available and no gradient is being recorded, on CUDA the Triton
path where it applies, else plain torch; ``FLOWKIT_NATIVE=0`` turns the native path off.
"""

from __future__ import annotations

import abc
import math

import torch
from torch import Tensor

from flowkit.backends import (
    BACKENDS,
    DEFAULT_MEMORY_BUDGET,
    block_rows,
)
from flowkit.backends import native as _native
from flowkit.backends.torch import sqdist_direct as _sqdist_direct
from flowkit.validation import check_positive

__all__ = [
    "Kernel",
    "Gaussian",
    "InverseMultiquadric",
    "Laplacian",
    "EnergyKernel",
    "SumKernel",
    "block_rows",
    "kernel_sum",
    "kernel_grad_sum",
    "mmd2",
    "native_available",
    "BACKENDS",
    "DEFAULT_MEMORY_BUDGET",
]

class Kernel(abc.ABC):
    r"""A radial kernel :math:`k(x, y) = \kappa(\|x-y\|^2)`.

    Subclasses give the profile :math:`\kappa` and its derivative :math:`\kappa'`, and, where
    known, :meth:`hessian_bound`, a guaranteed bound on
    :math:`\sup_{x,y} \|\nabla_x^2 k(x, y)\|_{op}` (the Lipschitz constant of
    :math:`\nabla_1 k`, assumption A of Arbel et al. 2019).
    """

    #: True when kappa'(r2) blows up at r2 = 0: such kernels use explicit differences.
    singular_at_zero: bool = False

    @abc.abstractmethod
    def profile(self, r2: Tensor) -> Tensor:
        """kappa(r^2), elementwise."""

    @abc.abstractmethod
    def dprofile(self, r2: Tensor) -> Tensor:
        """kappa'(r^2) = d kappa / d(r^2), elementwise (0 at r2 = 0 where singular)."""

    def hessian_bound(self) -> float:
        """sup over x, y of the operator norm of the Hessian of k in x (inf if unbounded)."""
        return math.inf

    def gaussian_rate(self) -> float | None:
        r"""``c`` when :math:`\kappa(r^2) = e^{-c r^2}` (enables the native path), else None."""
        return None

    def lazy_profile(self, r2, derivative: bool = False):  # pragma: no cover - keops only
        """kappa (or kappa') written with methods a KeOps ``LazyTensor`` supports."""
        raise ValueError(
            f"backend='keops' does not support {type(self).__name__}; use backend='torch'"
        )

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        """The full kernel matrix ``(N, M)``; for small inputs (tests, plots) only."""
        x, y = x.flatten(1), y.flatten(1)
        return self.profile(_sqdist_direct(x, y))

    def __add__(self, other: Kernel) -> SumKernel:
        return SumKernel([self, other])

    def __mul__(self, weight: float) -> SumKernel:
        return SumKernel([self], weights=[weight])

    __rmul__ = __mul__


def _safe_sqrt(r2: Tensor) -> Tensor:
    """``sqrt(r2)`` whose autograd derivative at ``r2 = 0`` is 0, not ``inf * 0 = NaN``.

    The subgradient 0 at coincident points is what the closed forms use, so autograd through
    the value of a singular kernel (e.g. ``N * d MMD^2 / dx``) agrees with them.
    """
    pos = r2 > 0
    return torch.where(pos, torch.where(pos, r2, torch.ones_like(r2)).sqrt(),
                       torch.zeros_like(r2))


class Gaussian(Kernel):
    r"""Gaussian kernel :math:`k(x,y) = \exp(-\|x-y\|^2 / (2 h^2))`, bandwidth ``h``.

    Its Hessian in ``x`` has eigenvalues :math:`-k/h^2` (across ``x-y``) and
    :math:`k (r^2/h^2 - 1)/h^2` (along it), both bounded by :math:`1/h^2`, attained at r = 0.
    """

    def __init__(self, bandwidth: float = 1.0):
        self.bandwidth = check_positive(bandwidth, "bandwidth")
        self._c = 1.0 / (2.0 * self.bandwidth**2)

    def profile(self, r2: Tensor) -> Tensor:
        return torch.exp(-self._c * r2)

    def dprofile(self, r2: Tensor) -> Tensor:
        return -self._c * torch.exp(-self._c * r2)

    def hessian_bound(self) -> float:
        return 1.0 / self.bandwidth**2

    def gaussian_rate(self) -> float:
        return self._c

    def lazy_profile(self, r2, derivative: bool = False):
        e = (-self._c * r2).exp()
        return -self._c * e if derivative else e

    def __repr__(self) -> str:
        return f"Gaussian(bandwidth={self.bandwidth})"


class InverseMultiquadric(Kernel):
    r"""Inverse multiquadric :math:`k(x,y) = (1 + \|x-y\|^2/c^2)^{\beta}`, ``-1 < beta < 0``.

    With :math:`u = r^2/c^2` the Hessian eigenvalues are
    :math:`2\beta (1+u)^{\beta-1}/c^2` (across) and
    :math:`2\beta (1+u)^{\beta-2}(1 + (2\beta-1)u)/c^2` (along); the first peaks at u = 0,
    the second at u = 0 or at its interior stationary point
    :math:`u^* = (3 - 3\beta)/((1-2\beta)(1-\beta))`, so the supremum is exact.
    """

    def __init__(self, scale: float = 1.0, beta: float = -0.5):
        self.scale = check_positive(scale, "scale")
        if not -1.0 < beta < 0.0:
            raise ValueError(f"beta must lie in (-1, 0), got {beta}")
        self.beta = float(beta)

    def profile(self, r2: Tensor) -> Tensor:
        return (1.0 + r2 / self.scale**2).pow(self.beta)

    def dprofile(self, r2: Tensor) -> Tensor:
        return (self.beta / self.scale**2) * (1.0 + r2 / self.scale**2).pow(self.beta - 1.0)

    def hessian_bound(self) -> float:
        b = self.beta
        a = 1.0 - 2.0 * b
        u_star = (a + 2.0 - b) / (a * (1.0 - b))
        along = abs(1.0 - a * u_star) * (1.0 + u_star) ** (b - 2.0)
        return 2.0 * abs(b) * max(1.0, along) / self.scale**2

    def lazy_profile(self, r2, derivative: bool = False):
        u = 1.0 + r2 / self.scale**2
        if derivative:
            return (self.beta / self.scale**2) * u ** (self.beta - 1.0)
        return u**self.beta

    def __repr__(self) -> str:
        return f"InverseMultiquadric(scale={self.scale}, beta={self.beta})"


class Laplacian(Kernel):
    r"""Laplacian kernel :math:`k(x,y) = \exp(-\|x-y\|/h)`; not differentiable at x = y."""

    singular_at_zero = True

    def __init__(self, bandwidth: float = 1.0):
        self.bandwidth = check_positive(bandwidth, "bandwidth")

    def profile(self, r2: Tensor) -> Tensor:
        return torch.exp(-_safe_sqrt(r2) / self.bandwidth)

    def dprofile(self, r2: Tensor) -> Tensor:
        r = _safe_sqrt(r2)
        safe = torch.where(r > 0, r, torch.ones_like(r))
        out = -torch.exp(-r / self.bandwidth) / (2.0 * self.bandwidth * safe)
        return torch.where(r > 0, out, torch.zeros_like(r))

    def lazy_profile(self, r2, derivative: bool = False):
        e = (-r2.sqrt() / self.bandwidth).exp()
        # KeOps' Rsqrt is 0 at 0: the subgradient 0 at coincident points, as in dprofile
        return (-0.5 / self.bandwidth) * e * r2.rsqrt() if derivative else e

    def __repr__(self) -> str:
        return f"Laplacian(bandwidth={self.bandwidth})"


class EnergyKernel(Kernel):
    r"""The energy-distance kernel :math:`k(x, y) = -\|x - y\|`.

    MMD with this (conditionally positive definite) kernel is the energy distance
    (Székely & Rizzo 2013; Sejdinovic et al. 2013).
    """

    singular_at_zero = True

    def profile(self, r2: Tensor) -> Tensor:
        return -_safe_sqrt(r2)

    def dprofile(self, r2: Tensor) -> Tensor:
        r = _safe_sqrt(r2)
        safe = torch.where(r > 0, r, torch.ones_like(r))
        return torch.where(r > 0, -0.5 / safe, torch.zeros_like(r))

    def lazy_profile(self, r2, derivative: bool = False):
        return -0.5 * r2.rsqrt() if derivative else -r2.sqrt()

    def __repr__(self) -> str:
        return "EnergyKernel()"


class SumKernel(Kernel):
    r"""A weighted sum :math:`\sum_i w_i k_i` of radial kernels (e.g. several bandwidths)."""

    def __init__(self, kernels: list[Kernel], weights: list[float] | None = None):
        flat_k: list[Kernel] = []
        flat_w: list[float] = []
        if not isinstance(kernels, (list, tuple)):
            raise TypeError(f"kernels must be a list of flowkit Kernels, got "
                            f"{type(kernels).__name__}")
        weights = [1.0] * len(kernels) if weights is None else list(weights)
        if len(weights) != len(kernels) or not kernels:
            raise ValueError("kernels must be non-empty and weights must match it in length")
        for k, w in zip(kernels, weights):
            if isinstance(k, SumKernel):  # flatten nested sums
                flat_k += k.kernels
                flat_w += [w * wi for wi in k.weights]
            elif isinstance(k, Kernel):
                flat_k.append(k)
                flat_w.append(float(w))
            else:
                raise TypeError(f"kernels must be flowkit Kernels, got {type(k).__name__}")
        self.kernels, self.weights = flat_k, flat_w
        self.singular_at_zero = any(k.singular_at_zero for k in flat_k)

    def profile(self, r2: Tensor) -> Tensor:
        return sum(w * k.profile(r2) for k, w in zip(self.kernels, self.weights))

    def dprofile(self, r2: Tensor) -> Tensor:
        return sum(w * k.dprofile(r2) for k, w in zip(self.kernels, self.weights))

    def hessian_bound(self) -> float:
        return sum(abs(w) * k.hessian_bound() for k, w in zip(self.kernels, self.weights))

    def lazy_profile(self, r2, derivative: bool = False):
        terms = [w * k.lazy_profile(r2, derivative) for k, w in zip(self.kernels, self.weights)]
        out = terms[0]
        for t in terms[1:]:
            out = out + t
        return out

    def __repr__(self) -> str:
        return " + ".join(f"{w}*{k!r}" for k, w in zip(self.kernels, self.weights))


# --------------------------------------------------------------------------- reductions


def native_available() -> bool:
    """Whether the fused native Gaussian path can run here (compiles it on first call)."""
    return _native.available()


def _cloud(x: Tensor, y: Tensor, kernel: Kernel, weights: Tensor | None, kw: dict):
    from flowkit.geometry import PointCloud  # the geometry layer builds on this module

    if y is None:  # the cloud reads None as "y = x": here it is a missing argument
        raise TypeError("y must be a torch.Tensor of samples (M, *event), got None")
    return PointCloud(x, y, b=weights, kernel=kernel, names=("x", "y", "x", "weights"), **kw)


def kernel_sum(x: Tensor, y: Tensor, kernel: Kernel, weights: Tensor | None = None, *,
               block_size: int | None = None, memory_budget: int = DEFAULT_MEMORY_BUDGET,
               backend: str = "auto") -> Tensor:
    r"""``s_i = sum_j w_j k(x_i, y_j)``, shape ``(N,)``; uniform weights ``1/M`` by default.

    Parameters
    ----------
    x, y : Tensor
        Samples ``(N, *event)`` and ``(M, *event)``: same event shape, device and dtype,
        non-empty, finite (``ValueError``/``TypeError`` naming the argument otherwise).
    kernel : Kernel
        A radial kernel.
    weights : Tensor, optional
        ``(M,)`` finite weights of ``x``'s dtype and device (signed weights are fine);
        default ``1/M``.
    block_size : int, optional
        Rows per block; by default what ``memory_budget`` allows.
    memory_budget : int
        Bytes of temporaries allowed per block (default 256 MiB); ``ValueError`` if not
        even one row of ``M`` columns fits.
    backend : {"auto", "torch", "native", "keops", "triton"}
        See the module docstring.

    Notes
    -----
    A thin wrapper over :meth:`flowkit.geometry.PointCloud.kernel_sum` (whose module
    docstring states the float32 accuracy domain).
    """
    kw = {"block_size": block_size, "memory_budget": memory_budget, "backend": backend}
    return _cloud(x, y, kernel, weights, kw).kernel_sum()


def kernel_grad_sum(x: Tensor, y: Tensor, kernel: Kernel, weights: Tensor | None = None, *,
                    block_size: int | None = None, memory_budget: int = DEFAULT_MEMORY_BUDGET,
                    backend: str = "auto") -> Tensor:
    r"""``g_i = sum_j w_j grad_1 k(x_i, y_j)``, the shape of ``x``; weights ``1/M`` by default.

    Smooth kernels use the Gram form :math:`2[x_i (P w)_i - (P(w \odot Y))_i]` with the two
    products fused into one, ``P [w * Y | w]``; singular ones take explicit differences
    (subgradient 0 at coincident points). Arguments as in :func:`kernel_sum`.
    """
    kw = {"block_size": block_size, "memory_budget": memory_budget, "backend": backend}
    return _cloud(x, y, kernel, weights, kw).kernel_grad_sum()


def mmd2(x: Tensor, y: Tensor, kernel: Kernel, *, block_size: int | None = None,
         memory_budget: int = DEFAULT_MEMORY_BUDGET, backend: str = "auto") -> Tensor:
    r"""Squared MMD between the empirical measures of ``x`` and ``y`` (V-statistic).

    .. math:: \mathrm{MMD}^2 = \overline{k(x,x')} - 2\,\overline{k(x,y)} + \overline{k(y,y')}

    (Gretton et al. 2012 [GrettonEtAl12], eq. (5), biased form including the diagonal).
    Inputs are validated as in :func:`kernel_sum`; a thin wrapper over
    :meth:`flowkit.geometry.PointCloud.mmd2` (which also takes weights on both sides).
    """
    kw = {"block_size": block_size, "memory_budget": memory_budget, "backend": backend}
    return _cloud(x, y, kernel, None, kw).mmd2()
