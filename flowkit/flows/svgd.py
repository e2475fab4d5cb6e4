r"""Stein variational gradient descent (Liu & Wang 2016 [LiuWang16], Lemma 3.2 and Algorithm 1).

For a target :math:`\pi` known through its score :math:`s = \nabla\log\pi` and particles
:math:`\mu = \sum_j w_j \delta_{y_j}` (uniform weights by default), the SVGD direction is

.. math::
    \phi^*_\mu(x) = \mathbb E_{y\sim\mu}\big[k(y, x)\, s(y) + \nabla_y k(y, x)\big]
                 = \sum_j w_j \big[k(x, y_j)\, s(y_j) - \nabla_1 k(x, y_j)\big]

for a radial kernel (where :math:`\nabla_y k(y, x) = -\nabla_1 k(x, y)`), and a step is
``x <- x + eta phi*(x)``. It is the steepest descent direction of :math:`KL(\mu\,|\,\pi)` in
the RKHS unit ball, *not* the gradient of a potential evaluable from the particles alone:
in flowkit's contract it is a velocity field: :class:`SVGD` is a
:class:`flowkit.FunctionalObjective` overriding ``velocity``, so
:class:`flowkit.FunctionalGradientDescent` stacks replayable
:class:`flowkit.layers.VelocityLayer` s ``x - eta v(x)`` with ``v = -phi*`` (frozen at the
step's particles, scores, weights and kernel, so a layer evaluates anywhere).

Both sums run blocked: ``sum_j w_j k(x_i, y_j) s_j`` through a vector-valued kernel sum and
``sum_j w_j grad_1 k(x_i, y_j)`` through :func:`flowkit.kernels.kernel_grad_sum`; no
``N x N`` matrix larger than one block of rows is built.

Bandwidth: ``"median"`` is the heuristic of Liu & Wang's reference code, kernel
:math:`\exp(-r^2/(2h^2))` with :math:`h^2 = \mathrm{med}^2 / (2\log(N+1))`, med the median
pairwise distance, i.e. ``Gaussian(bandwidth=h)``; recomputed at every step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from flowkit.flows._common import (
    Score,
    checked_score,
    kernel_matvec,
    resolve_score,
    uniform_or_checked_weights,
)
from flowkit.kernels import DEFAULT_MEMORY_BUDGET, Gaussian, Kernel, kernel_grad_sum
from flowkit.layers import VelocityField
from flowkit.objective import FunctionalObjective
from flowkit.validation import check_int, check_particles, check_positive

__all__ = ["LinearKernel", "median_bandwidth", "svgd_velocity", "SVGD", "SVGDField",
           "SVGDResult"]


class LinearKernel(nn.Module):
    r"""The linear kernel :math:`k(x, y) = 1 + x^\top y` (not radial: SVGD only).

    With it SVGD matches first and second moments: for a Gaussian target its fixed points
    are exactly the particle sets with the target's mean and covariance: with
    :math:`s(y) = -\Sigma^{-1}(y - m)`, :math:`\phi \equiv 0` forces
    :math:`\hat m = m` and :math:`\hat C = \Sigma` (derived here; moment matching by SVGD
    is the subject of Liu & Wang 2018 [LiuWang18]). The velocity is affine, computed in
    closed form in O(N d^2). (An ``nn.Module`` with no parameters only so that layers
    holding it load from files like flowkit's other kernels.)
    """

    def __repr__(self) -> str:
        return "LinearKernel()"


def median_bandwidth(x: Tensor, max_points: int = 1000) -> float:
    r"""Liu & Wang's median heuristic: ``h = med / sqrt(2 log(N + 1))`` for ``Gaussian(h)``.

    ``med`` is the median pairwise distance (numpy's median: mean of the two middle values),
    over an evenly strided subset of at most ``max_points`` particles. One device sync.
    """
    check_particles(x, "x")
    max_points = check_int(max_points, "max_points", minimum=2)
    n = x.shape[0]
    sub = x.flatten(1)[:: max(1, -(-n // max_points))]
    if sub.shape[0] < 2:
        raise ValueError(f"x needs at least 2 particles for the median heuristic, got {n}")
    med = float(torch.quantile(torch.pdist(sub.double()), 0.5))
    if med == 0.0:
        raise ValueError("x: all particles coincide, the median heuristic gives bandwidth 0; "
                         "pass a bandwidth")
    return med / math.sqrt(2.0 * math.log(n + 1.0))


def _resolve_kernel(kernel: Kernel | LinearKernel | None, bandwidth: float | str | None,
                    x: Tensor) -> Kernel | LinearKernel:
    if kernel is not None and bandwidth is not None:
        raise ValueError("give kernel or bandwidth, not both")
    if kernel is not None:
        if not isinstance(kernel, (Kernel, LinearKernel)):
            raise TypeError(f"kernel must be a flowkit.kernels.Kernel or LinearKernel, got "
                            f"{type(kernel).__name__}")
        return kernel
    if bandwidth is None or bandwidth == "median":
        return Gaussian(median_bandwidth(x))
    return Gaussian(check_positive(bandwidth, "bandwidth"))


def svgd_velocity(x: Tensor, score: Score | Tensor, kernel: Kernel | LinearKernel | None = None,
                  weights: Tensor | None = None, *, bandwidth: float | str | None = None,
                  block_size: int | None = None,
                  memory_budget: int = DEFAULT_MEMORY_BUDGET) -> Tensor:
    r"""The SVGD direction :math:`\phi^*_\mu(x_i)` at every particle ([LiuWang16], Lemma 3.2).

    Parameters
    ----------
    x : Tensor
        Particles ``(N, d)``.
    score : callable or Tensor
        ``x -> grad log pi(x)``, or its values at ``x`` already computed (shape of ``x``).
    kernel : Kernel or LinearKernel, optional
        A smooth radial kernel of :mod:`flowkit.kernels` (Gaussian, IMQ, their sums) or
        :class:`LinearKernel`; default ``Gaussian`` with ``bandwidth``.
    weights : Tensor, optional
        ``(N,)`` non-negative particle weights summing to 1; default ``1/N``.
    bandwidth : float or "median", optional
        Bandwidth of the default Gaussian kernel (``"median"``, the default: the heuristic
        of :func:`median_bandwidth`). Not with ``kernel``.
    block_size, memory_budget
        Blocking of the kernel sums, as in :func:`flowkit.kernels.kernel_sum`.

    Returns
    -------
    Tensor
        The velocity, shape of ``x``; a step is ``x + eta * velocity``.
    """
    check_particles(x, "x")
    if x.dim() != 2:
        raise ValueError(f"x must have shape (N, d), got {tuple(x.shape)}")
    w = uniform_or_checked_weights(weights, x)
    k = _resolve_kernel(kernel, bandwidth, x)
    if isinstance(score, Tensor):
        if score.shape != x.shape:
            raise ValueError(f"score must have the shape of x {tuple(x.shape)}, got "
                             f"{tuple(score.shape)}")
        s = score
    else:
        s = checked_score(resolve_score(score, None), x)
    field = SVGDField(x, s, w, k, block_size=block_size, memory_budget=memory_budget)
    return -field(x)


class SVGDField(VelocityField):
    r"""The engine's velocity ``v(z) = -phi*_mu(z)`` for particles ``y`` frozen at one step.

    Holds the particles ``y_j``, their scores ``s(y_j)``, weights ``w_j`` and the kernel, so
    ``v`` evaluates at any ``z`` (a layer replays on fresh samples):
    :math:`v(z) = -\sum_j w_j [k(z, y_j) s(y_j) - \nabla_1 k(z, y_j)]`, blocked.
    """

    def __init__(self, particles: Tensor, scores: Tensor, weights: Tensor,
                 kernel: Kernel | LinearKernel, *, block_size: int | None = None,
                 memory_budget: int = DEFAULT_MEMORY_BUDGET):
        super().__init__()
        if not isinstance(kernel, LinearKernel) and kernel.singular_at_zero:
            raise ValueError(f"kernel {kernel!r} is not differentiable at 0; SVGD needs a "
                             "smooth kernel")
        self.register_buffer("particles", particles.detach())
        self.register_buffer("scores", scores.detach())
        self.register_buffer("weights", weights.detach())
        self.kernel = kernel
        self.block_size, self.memory_budget = block_size, memory_budget

    def forward(self, z: Tensor) -> Tensor:
        y, s, w, k = self.particles, self.scores, self.weights, self.kernel
        ws = w[:, None] * s
        if isinstance(k, LinearKernel):
            # E_w[(1 + y.z) s(y) + z] = E_w[s] + E_w[s y^T] z + z
            return -(ws.sum(0) + z + z @ (ws.T @ y).T)
        kw = {"block_size": self.block_size, "memory_budget": self.memory_budget}
        drive = kernel_matvec(z, y, k, ws, **kw)
        repulse = kernel_grad_sum(z, y, k, w, backend="torch", **kw)
        return repulse - drive


@dataclass
class SVGDResult:
    """Outcome of :meth:`SVGD.run`: final particles, optional snapshots, wall time."""

    particles: Tensor
    n_steps: int
    wall_time: float
    snapshots: list[Tensor] = field(default_factory=list)


class SVGD(FunctionalObjective):
    r"""SVGD toward a target given by its score or log-density (Liu & Wang 2016, Alg. 1).

    A velocity-field objective: :class:`flowkit.FunctionalGradientDescent` on it stacks
    layers ``x - eta v(x)`` with ``v = -phi*_mu`` (:class:`SVGDField`), i.e. Liu & Wang's
    step ``x + eta phi*(x)``; monitors, checkpoints and Algorithm 2 replay then work as
    for any objective. SVGD has no value (it is not the gradient of a functional of the
    particles alone).

    Parameters
    ----------
    score : callable, optional
        ``x -> grad log pi(x)``.
    log_density : callable, optional
        ``x -> log pi(x)`` up to a constant, shape ``(N,)``; differentiated by autograd.
        Exactly one of ``score`` and ``log_density``.
    kernel : Kernel or LinearKernel, optional
        Fixed kernel; default a Gaussian with ``bandwidth`` (``"median"``: per step, frozen
        into that step's layer).
    bandwidth : float or "median"
        See :func:`svgd_velocity`.

    See Also
    --------
    flowkit.flows.KSD
        Descent on the kernel Stein discrepancy of the same kernel.
    flowkit.flows.Langevin
        The stochastic flow of the same KL objective.
    flowkit.flows.BlobKL
        The deterministic blob approximation of the KL flow.

    Examples
    --------
    >>> import torch, flowkit as fk, flowkit.flows
    >>> svgd = fk.flows.SVGD(score=lambda x: -x, bandwidth=1.0)
    >>> flow = fk.FunctionalGradientDescent(svgd, step_size=0.5, progress=False)
    >>> result = flow.run(torch.randn(50, 2) + 3.0, n_steps=20)
    >>> result.particles.shape, len(result.layers)
    (torch.Size([50, 2]), 20)
    """

    def __init__(self, score: Score | None = None, *, log_density=None,
                 kernel: Kernel | LinearKernel | None = None,
                 bandwidth: float | str | None = None, block_size: int | None = None,
                 memory_budget: int = DEFAULT_MEMORY_BUDGET):
        self.score = resolve_score(score, log_density)
        if kernel is not None and bandwidth is not None:
            raise ValueError("give kernel or bandwidth, not both")
        if isinstance(bandwidth, str) and bandwidth != "median":
            raise ValueError(f"bandwidth must be a number > 0 or 'median', got {bandwidth!r}")
        if bandwidth is not None and not isinstance(bandwidth, str):
            check_positive(bandwidth, "bandwidth")
        if kernel is not None:
            _resolve_kernel(kernel, None, torch.zeros(2, 1))  # type check only
        self.kernel, self.bandwidth = kernel, bandwidth
        self._kw = {"block_size": block_size, "memory_budget": memory_budget}

    def validate(self, x: Tensor) -> None:
        check_particles(x, "x")
        if x.dim() != 2:
            raise ValueError(f"x must have shape (N, d), got {tuple(x.shape)}")

    def velocity(self, x: Tensor, weights: Tensor | None = None) -> SVGDField:
        """The engine's field ``v = -phi*_mu`` at particles ``x`` (weights: default ``1/N``)."""
        self.validate(x)
        w = uniform_or_checked_weights(weights, x)
        s = checked_score(self.score, x.detach())
        k = _resolve_kernel(self.kernel, self.bandwidth, x)
        return SVGDField(x, s, w, k, **self._kw)

    def run(self, x0: Tensor, step_size: float, n_steps: int, *,
            snapshot_every: int | None = None) -> SVGDResult:
        """``n_steps`` steps ``x <- x + step_size * phi*(x)`` from ``x0``.

        A shortcut for :class:`flowkit.FunctionalGradientDescent` without layers, monitors
        or checkpoints (use the engine for those).
        """
        from flowkit.descent import FunctionalGradientDescent

        check_particles(x0, "x0")
        eta = check_positive(step_size, "step_size")
        n_steps = check_int(n_steps, "n_steps", minimum=0)
        if snapshot_every is not None:
            snapshot_every = check_int(snapshot_every, "snapshot_every")
        snaps = [x0.detach().clone()] if snapshot_every else []

        def keep(state) -> None:
            if state.step % snapshot_every == 0:
                snaps.append(state.particles)

        engine = FunctionalGradientDescent(
            self, eta, keep_layers=False, progress=False, max_growth=None,
            callbacks=[keep] if snapshot_every else [])
        res = engine.run(x0, n_steps)
        return SVGDResult(res.particles, n_steps, res.wall_time, snaps)
