r"""Analytic objectives with known minimizers and smoothness constants, for theory tests.

Both are functionals of the form :math:`\mathcal L(\mu) = \int V d\mu + \frac12\iint W d\mu d\mu`
whose constants are explicit, so Theorem 1 of Nitanda & Suzuki (2018) can be checked with
its exact right-hand side.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from flowkit._compat import deprecated_module_attribute
from flowkit.objective import FunctionalObjective
from flowkit.potential import Potential
from flowkit.validation import (
    check_compatible,
    check_finite,
    check_number,
    check_particles,
    check_positive,
    check_signed_weights,
    check_weights,
)

__all__ = ["QuadraticObjective", "InteractionEnergy"]


def _check_vector_or_matrix(value: object, name: str) -> Tensor:
    """A finite floating tensor (a parameter of an analytic objective)."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
    check_finite(value, name)
    return value


def _check_points(x: Tensor, dim: int | None, ref_name: str, finite: bool) -> None:
    """Particles ``(N, d)``, ``d = dim`` when a parameter fixes it (finite if asked)."""
    check_particles(x, "x", finite=finite)
    if x.dim() != 2:
        raise ValueError(f"x must have shape (N, d), got {tuple(x.shape)}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"x must have shape (N, {dim}) to match {ref_name}, got "
                         f"{tuple(x.shape)}")


class _Validated(FunctionalObjective):
    """The public methods of an analytic objective all go through :meth:`validate`.

    ``first_variation`` (the engine's per-step hook) skips the finiteness reduction, which
    would synchronise with the device every step; the engine checks the particles after
    each update and :meth:`validate` at the start of a run.
    """

    def validate(self, x: Tensor, *, finite: bool = True) -> None:
        raise NotImplementedError

    def _check(self, x: Tensor, weights: Tensor | None, finite: bool) -> None:
        if finite:
            self.validate(x)
        else:
            self.validate(x, finite=False)
        if weights is None:
            return
        if finite:
            check_weights(weights, x.shape[0], "weights", like=x)
        else:  # metadata only, as for x
            check_signed_weights(weights, x.shape[0], "weights", like=x, finite=False)

    def first_variation(self, x: Tensor, weights: Tensor | None = None) -> Potential:
        self._check(x, weights, False)
        return self._first_variation(x, weights)

    def functional_gradient(self, x: Tensor, weights: Tensor | None = None) -> Tensor:
        self._check(x, weights, True)
        return self._first_variation(x, weights).grad(x)

    def value(self, x: Tensor, weights: Tensor | None = None) -> Tensor:
        self._check(x, weights, True)
        return self._value(x, weights)

    def _first_variation(self, x: Tensor, weights: Tensor | None) -> Potential:
        raise NotImplementedError

    def _value(self, x: Tensor, weights: Tensor | None) -> Tensor:
        raise NotImplementedError


def _average(values: Tensor, weights: Tensor | None) -> Tensor:
    """The mean of ``values`` along the particles under ``weights`` (``None``: uniform)."""
    if weights is None:
        return values.mean(0)
    return torch.tensordot(weights, values, dims=1)


class _Quadratic(Potential):
    """psi(x) = 1/2 (x-m)^T A (x-m) + b^T x, gradient A (x - m) + b."""

    def __init__(self, A: Tensor, m: Tensor, b: Tensor | None, lipschitz: float):
        super().__init__()
        self.register_buffer("A", A)
        self.register_buffer("m", m)
        self.register_buffer("b", torch.zeros_like(m) if b is None else b)
        self.lipschitz_grad = lipschitz

    def _check(self, x: Tensor) -> None:
        _check_points(x, self.A.shape[0], f"A of shape {tuple(self.A.shape)}", False)
        check_compatible(x, self.A, "x", "A")

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        d = x - self.m
        return 0.5 * ((d @ self.A) * d).sum(1) + x @ self.b

    def grad(self, x: Tensor, *, create_graph: bool = False) -> Tensor:
        self._check(x)
        return (x - self.m) @ self.A + self.b


class QuadraticObjective(_Validated):
    r"""Potential energy :math:`\mathcal L(\mu) = \int \frac12 (x-m)^\top A (x-m)\, d\mu(x)`.

    An *objective* over measures (its first variation is the quadratic potential); the
    former name ``QuadraticPotential`` is a deprecated alias. ``A`` symmetric positive
    semi-definite. The functional gradient is :math:`A(x - m)`,
    the smoothness constant in :math:`L^2(\mu)` is :math:`L = \lambda_{\max}(A)`, the minimum
    :math:`\mathcal L_* = 0` is reached by any measure on :math:`m + \ker A`.
    """

    minimum = 0.0

    def __init__(self, A: Tensor, m: Tensor | None = None):
        _check_vector_or_matrix(A, "A")
        if A.dim() != 2 or A.shape[0] != A.shape[1]:
            raise ValueError(f"A must be a square matrix, got shape {tuple(A.shape)}")
        if not torch.allclose(A, A.T, atol=1e-6 * float(A.abs().max().clamp(min=1.0))):
            raise ValueError("A must be symmetric")
        eig = torch.linalg.eigvalsh(A)
        if float(eig.min()) < -1e-8 * float(eig.abs().max().clamp(min=1.0)):
            raise ValueError(
                f"A must be positive semi-definite, smallest eigenvalue {float(eig.min())}"
            )
        self.A = A
        if m is None:
            m = torch.zeros(A.shape[0], dtype=A.dtype, device=A.device)
        self.m = _check_vector_or_matrix(m, "m")
        if self.m.shape != (A.shape[0],):
            raise ValueError(f"m must have shape ({A.shape[0]},), got {tuple(self.m.shape)}")
        check_compatible(self.m[None], A, "m", "A")
        self.smoothness = float(eig.max())

    def validate(self, x: Tensor, *, finite: bool = True) -> None:
        """Particles ``(N, d)`` with ``A``'s size, device and dtype (finite if asked)."""
        _check_points(x, self.A.shape[0], f"A of shape {tuple(self.A.shape)}", finite)
        check_compatible(x, self.A, "x", "A")

    def _first_variation(self, x: Tensor, weights: Tensor | None) -> Potential:
        return _Quadratic(self.A, self.m, None, self.smoothness)

    def _value(self, x: Tensor, weights: Tensor | None) -> Tensor:
        d = x - self.m
        return 0.5 * _average(((d @ self.A) * d).sum(1), weights)


class InteractionEnergy(_Validated):
    r"""Confinement plus quadratic attraction.

    .. math::
        \mathcal L(\mu) = \int \frac{\lambda}{2}\|x - m\|^2 d\mu
            + \frac{a}{4}\iint \|x - y\|^2 d\mu(x) d\mu(y),

    with :math:`\lambda > 0, a \ge 0`. First variation
    :math:`\psi(z) = \frac\lambda2\|z-m\|^2 + \frac a2\int\|z-y\|^2 d\mu(y)`, gradient
    :math:`\lambda(z - m) + a(z - \bar x)`. The gradient map is
    :math:`(\lambda + a)`-Lipschitz in :math:`L^2(\mu)` (``z -> z - mean`` is a projection),
    so :math:`L = \lambda + a`; the unique minimizer is :math:`\delta_m` with
    :math:`\mathcal L_* = 0`.
    """

    minimum = 0.0

    def __init__(self, confinement: float = 1.0, attraction: float = 1.0,
                 center: Tensor | None = None):
        self.confinement = check_positive(confinement, "confinement")
        self.attraction = check_number(attraction, "attraction", minimum=0.0)
        if center is not None:
            _check_vector_or_matrix(center, "center")
            if center.dim() != 1:
                raise ValueError(f"center must be a vector (d,), got shape {tuple(center.shape)}")
        self.center = center
        self.smoothness = self.confinement + self.attraction

    def _m(self, x: Tensor) -> Tensor:
        # the centre follows the particles' dtype and device (a parameter, not a sample)
        return torch.zeros_like(x[0]) if self.center is None else self.center.to(x)

    def validate(self, x: Tensor, *, finite: bool = True) -> None:
        """Particles ``(N, d)``, ``d`` the centre's size when one is given (finite if asked)."""
        dim = None if self.center is None else self.center.shape[0]
        _check_points(x, dim, f"center of shape {tuple((dim,))}", finite)

    def _first_variation(self, x: Tensor, weights: Tensor | None) -> Potential:
        lam, a, m = self.confinement, self.attraction, self._m(x)
        xbar, n = _average(x, weights), x.shape[1]
        # psi is a quadratic in z; up to an additive constant (irrelevant to the flow),
        # psi(z) = (lam + a)/2 ||z - m'||^2 with m' = (lam m + a xbar)/(lam + a).
        A = (lam + a) * torch.eye(n, dtype=x.dtype, device=x.device)
        m_eff = (lam * m + a * xbar) / (lam + a)
        return _Quadratic(A, m_eff, None, lam + a)

    def _value(self, x: Tensor, weights: Tensor | None) -> Tensor:
        m = self._m(x)
        conf = 0.5 * self.confinement * _average((x - m).pow(2).sum(1), weights)
        # (a/4) mean_ij ||x_i - x_j||^2 = (a/2) (mean ||x||^2 - ||xbar||^2)
        inter = 0.5 * self.attraction * (_average(x.pow(2).sum(1), weights)
                                         - _average(x, weights).pow(2).sum())
        return conf + inter


_DEPRECATED = {"QuadraticPotential": ("QuadraticObjective", QuadraticObjective)}


def __getattr__(name: str) -> Any:
    return deprecated_module_attribute(__name__, name, _DEPRECATED)
