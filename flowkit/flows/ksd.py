r"""Kernel Stein discrepancy descent (Korba, Aubin-Frankowski, Majewski & Ablin 2021 [KAMA21]).

For a target :math:`\pi` with score :math:`s = \nabla\log\pi` and a radial base kernel
:math:`k(x, y) = \kappa(r^2)`, :math:`r = \|x-y\|`, the Stein kernel is
([KAMA21], sec. 2; Liu, Lee & Jordan 2016 [LiuLeeJordan16], sec. 3)

.. math::
    k_\pi(x, y) = s(x)^\top s(y)\, k(x, y) + s(x)^\top \nabla_y k(x, y)
                  + s(y)^\top \nabla_x k(x, y) + \nabla_x \cdot \nabla_y k(x, y)
                = \kappa\, s_x^\top s_y - 2\kappa' (x - y)^\top (s_x - s_y)
                  - 4 \kappa'' r^2 - 2 d\, \kappa',

with :math:`\kappa', \kappa''` the derivatives in :math:`r^2` (the second line derived
here from the first for radial kernels). The objective is

.. math::
    \mathrm{KSD}^2(\mu\,|\,\pi) = \iint k_\pi\, d\mu\, d\mu
        = \sum_{i, j} w_i w_j\, k_\pi(x_i, x_j),

the V-statistic ([KAMA21], sec. 3), with first variation
:math:`\psi(z) = 2 \sum_j w_j k_\pi(z, x_j)` and functional gradient
:math:`\nabla\psi(x_i) = 2\sum_j w_j \nabla_1 k_\pi(x_i, x_j) = (1/w_i)\,\partial
\mathrm{KSD}^2/\partial x_i`. Its gradient needs the score's Jacobian, so it is taken by
autograd through the blocked potential, one block of rows at a time (memory stays one
block). Base kernels: :class:`~flowkit.kernels.Gaussian`,
:class:`~flowkit.kernels.InverseMultiquadric` and their sums.

``ksddescent``'s parameters map as: its Gaussian ``bw = sigma`` is ``Gaussian(sqrt(sigma))``
(kernel ``exp(-r^2 / (2 sigma))``); its IMQ ``(1 + g r^2)^(-beta)`` is
``InverseMultiquadric(scale=1/sqrt(g), beta=-beta)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from flowkit.backends import block_rows, check_blocking
from flowkit.flows._common import Score, checked_score, resolve_score, uniform_or_checked_weights
from flowkit.kernels import (
    DEFAULT_MEMORY_BUDGET,
    Gaussian,
    InverseMultiquadric,
    Kernel,
    SumKernel,
)
from flowkit.objective import FunctionalObjective
from flowkit.potential import Potential
from flowkit.validation import check_particles

__all__ = ["stein_kernel", "ksd2", "SteinPotential", "KSD"]

# temporaries of one row block: r2, kappa, kappa', kappa'', the products, their graph
_BUFFERS = 12


def _profile_derivatives(kernel: Kernel, r2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``kappa, kappa', kappa''`` at ``r2`` (derivatives in r^2) for the supported kernels."""
    if isinstance(kernel, Gaussian):
        c = kernel.gaussian_rate()
        e = torch.exp(-c * r2)
        return e, -c * e, (c * c) * e
    if isinstance(kernel, InverseMultiquadric):
        a, b = 1.0 / kernel.scale**2, kernel.beta
        u = 1.0 + a * r2
        return u.pow(b), (a * b) * u.pow(b - 1.0), (a * a * b * (b - 1.0)) * u.pow(b - 2.0)
    if isinstance(kernel, SumKernel):
        parts = [_profile_derivatives(k, r2) for k in kernel.kernels]
        return tuple(sum(w * p[i] for w, p in zip(kernel.weights, parts)) for i in range(3))
    raise TypeError(f"kernel must be Gaussian, InverseMultiquadric or a sum of them for the "
                    f"Stein kernel, got {kernel!r}")


def _check_kernel(kernel: Kernel) -> Kernel:
    _profile_derivatives(kernel, torch.zeros(1))  # raises TypeError on unsupported kernels
    return kernel


def stein_kernel(x: Tensor, y: Tensor, sx: Tensor, sy: Tensor, kernel: Kernel) -> Tensor:
    r"""The Stein kernel matrix :math:`k_\pi(x_i, y_j)`, shape ``(N, M)`` (one block).

    ``sx``, ``sy`` are the scores at ``x`` and ``y``. Differentiable in all four tensors.
    Written with matrix products only (no ``N x M x d`` temporaries): ``r^2`` and
    :math:`(x-y)^\top(s_x-s_y) = x\cdot s_x - x\cdot s_y - y\cdot s_x + y\cdot s_y` in Gram
    form, after centring both samples on ``y``'s mean (the kernel is translation invariant)
    so that float32 distances stay accurate.
    """
    d = x.shape[1]
    center = y.mean(0, keepdim=True).detach()
    x, y = x - center, y - center
    x2, y2 = x.pow(2).sum(1), y.pow(2).sum(1)
    r2 = (x2[:, None] + y2[None, :] - 2.0 * (x @ y.T)).clamp(min=0.0)
    cross = ((x * sx).sum(1)[:, None] - x @ sy.T - sx @ y.T + (y * sy).sum(1)[None, :])
    if isinstance(kernel, Gaussian):
        # kappa' = -c kappa, kappa'' = c^2 kappa: one exponential, one bracket (3x fewer
        # N x M temporaries, forward and backward, than the general form)
        c = kernel.gaussian_rate()
        bracket = (sx @ sy.T).add_(cross, alpha=2.0 * c).add_(r2, alpha=-4.0 * c * c)
        return torch.exp(-c * r2) * bracket.add_(2.0 * d * c)
    k0, k1, k2 = _profile_derivatives(kernel, r2)
    return k0 * (sx @ sy.T) - 2.0 * k1 * cross - 4.0 * k2 * r2 - (2.0 * d) * k1


def _stein_rows(z: Tensor, sz: Tensor, y: Tensor, sy: Tensor, wy: Tensor, kernel: Kernel
                ) -> Tensor:
    """``sum_j wy_j k_pi(z_i, y_j)`` for one block of rows ``z``."""
    return stein_kernel(z, y, sz, sy, kernel) @ wy


def _rows(m: Tensor, block_size: int | None, memory_budget: int) -> int:
    check_blocking(block_size, memory_budget)
    return block_size or block_rows(m.shape[0], m.element_size(), memory_budget, _BUFFERS)


def ksd2(x: Tensor, score: Score, kernel: Kernel | None = None, weights: Tensor | None = None,
         *, block_size: int | None = None, memory_budget: int = DEFAULT_MEMORY_BUDGET
         ) -> Tensor:
    r""":math:`\mathrm{KSD}^2(\mu\,|\,\pi) = \sum_{ij} w_i w_j k_\pi(x_i, x_j)` (V-statistic).

    Parameters
    ----------
    x : Tensor
        Particles ``(N, d)``.
    score : callable
        ``x -> grad log pi(x)``.
    kernel : Kernel, default ``Gaussian(1.0)``
        Gaussian, InverseMultiquadric or a sum of them.
    weights : Tensor, optional
        ``(N,)`` weights summing to 1; default ``1/N``.
    block_size, memory_budget
        Rows per block (default: what ``memory_budget`` bytes allow).

    Returns
    -------
    Tensor
        0-dim, differentiable in ``x`` (through the score too).
    """
    check_particles(x, "x")
    if x.dim() != 2:
        raise ValueError(f"x must have shape (N, d), got {tuple(x.shape)}")
    kernel = _check_kernel(Gaussian(1.0) if kernel is None else kernel)
    w = uniform_or_checked_weights(weights, x)
    s = checked_score(resolve_score(score, None), x)
    rows = _rows(x, block_size, memory_budget)
    total = x.new_zeros(())
    for a in range(0, x.shape[0], rows):
        total = total + w[a:a + rows] @ _stein_rows(x[a:a + rows], s[a:a + rows], x, s, w,
                                                    kernel)
    return total


class SteinPotential(Potential):
    r"""First variation of KSD^2: :math:`\psi(z) = 2\sum_j w_j k_\pi(z, y_j)`.

    Holds the particles ``y``, their scores and weights at the step it was built, and the
    score function (evaluated at ``z``), so a layer made from it replays anywhere.
    """

    def __init__(self, particles: Tensor, scores: Tensor, weights: Tensor, score: Score,
                 kernel: Kernel, rows: int):
        super().__init__()
        self.register_buffer("particles", particles.detach())
        self.register_buffer("scores", scores.detach())
        self.register_buffer("weights", weights.detach())
        self.score, self.kernel, self.rows = score, kernel, rows

    def _block(self, z: Tensor) -> Tensor:
        return 2.0 * _stein_rows(z, self.score(z), self.particles, self.scores, self.weights,
                                 self.kernel)

    def forward(self, z: Tensor) -> Tensor:
        out = [self._block(z[a:a + self.rows]) for a in range(0, z.shape[0], self.rows)]
        return torch.cat(out) if len(out) > 1 else out[0]

    def grad(self, z: Tensor, *, create_graph: bool = False) -> Tensor:
        if create_graph:
            return super().grad(z, create_graph=True)
        # one block's graph at a time: memory stays one block of rows
        out = []
        with torch.enable_grad():
            for a in range(0, z.shape[0], self.rows):
                zb = z[a:a + self.rows].detach().requires_grad_(True)
                (g,) = torch.autograd.grad(self._block(zb).sum(), zb)
                out.append(g)
        return torch.cat(out) if len(out) > 1 else out[0]


class KSD(FunctionalObjective):
    r"""Kernel Stein discrepancy :math:`\mathrm{KSD}^2(\mu\,|\,\pi)` as a flowkit objective.

    KSD descent ([KAMA21], sec. 3) is then :class:`flowkit.FunctionalGradientDescent` on
    it: ``x_i <- x_i - eta grad psi(x_i)``. ``ksddescent.ksdd_gradient(step=s)`` steps on
    ``d(sum K / N^2)/dx = grad psi / N``, so its ``step`` is flowkit's ``eta * N``.

    Parameters
    ----------
    score : callable, optional
        ``x -> grad log pi(x)`` (torch, differentiable: the gradient needs its Jacobian).
    log_density : callable, optional
        ``x -> log pi(x)`` up to a constant; exactly one of the two.
    kernel : Kernel, default ``Gaussian(1.0)``
        Gaussian, InverseMultiquadric or a sum of them.
    block_size, memory_budget
        Blocking of the Stein-kernel sums.

    See Also
    --------
    flowkit.flows.SVGD
        A velocity field built from the same kernel and score.
    flowkit.flows.Langevin
        Sampling the same target with noise.

    Examples
    --------
    >>> import torch, flowkit as fk, flowkit.flows
    >>> obj = fk.flows.KSD(score=lambda x: -x)
    >>> flow = fk.FunctionalGradientDescent(obj, step_size=0.1, progress=False)
    >>> flow.run(torch.randn(30, 2) + 2.0, n_steps=5).particles.shape
    torch.Size([30, 2])
    """

    minimum = 0.0

    def __init__(self, score: Score | None = None, *, log_density=None,
                 kernel: Kernel | None = None, block_size: int | None = None,
                 memory_budget: int = DEFAULT_MEMORY_BUDGET):
        self.score = resolve_score(score, log_density)
        self.kernel = _check_kernel(Gaussian(1.0) if kernel is None else kernel)
        check_blocking(block_size, memory_budget)
        self._kw = {"block_size": block_size, "memory_budget": memory_budget}

    def validate(self, x: Tensor) -> None:
        check_particles(x, "x")
        if x.dim() != 2:
            raise ValueError(f"x must have shape (N, d), got {tuple(x.shape)}")

    def first_variation(self, x: Tensor, weights: Tensor | None = None) -> SteinPotential:
        self.validate(x)
        w = uniform_or_checked_weights(weights, x)
        s = checked_score(self.score, x.detach())
        rows = _rows(x, self._kw["block_size"], self._kw["memory_budget"])
        return SteinPotential(x, s, w, self.score, self.kernel, rows)

    def value(self, x: Tensor, weights: Tensor | None = None) -> Tensor:
        return ksd2(x, self.score, self.kernel, weights, **self._kw)
