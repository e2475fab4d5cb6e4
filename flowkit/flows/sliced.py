r"""Sliced-Wasserstein flow (Bonnotte 2013 [Bonnotte13]; Liutkus et al. 2019 [LiutkusEtAl19]).

For unit directions :math:`\theta_1, \dots, \theta_L` (the columns of a ``(d, L)``
projections matrix, POT's convention) the objective is the sliced squared distance

.. math::
    \mathrm{SW}_2^2(\mu, \nu) = \frac1L \sum_{l} W_2^2(\theta_l \sharp\mu, \theta_l \sharp\nu)

([Bonneel15], with the integral over the sphere replaced by the ``L`` directions).
In 1-D, with :math:`F^{-1}` the quantile functions, :math:`W_2^2 = \int_0^1 |F_\mu^{-1} -
F_\nu^{-1}|^2 du`, and the first variation of :math:`W_2^2(\cdot, \nu)` at :math:`\mu` is
the Kantorovich potential :math:`\varphi_\theta` with :math:`\varphi_\theta'(t) = 2(t -
T_\theta(t))`, :math:`T_\theta = F_\nu^{-1} \circ F_\mu` the monotone map ([Bonnotte13],
ch. 5; [LiutkusEtAl19], sec. 3). Hence

.. math::
    \psi(z) = \frac1L\sum_l \varphi_{\theta_l}(\theta_l^\top z), \qquad
    \nabla\psi(z) = \frac1L\sum_l 2\big(\theta_l^\top z - T_{\theta_l}(\theta_l^\top z)\big)
    \theta_l .

On particles :math:`\mu = \sum_i w_i\delta_{x_i}` the particle of rank ``r`` on direction
:math:`\theta` owns the quantile cell :math:`[c_r, c_{r+1})` (:math:`c` the cumulated sorted
weights), and :math:`T_\theta` sends it to the target's mean over that cell,
:math:`b_r = \frac{1}{w_r}\int_{c_r}^{c_{r+1}} F_\nu^{-1}`; then ``grad psi(x_i)`` is exactly
:math:`(1/w_i)\,\partial\mathrm{SW}_2^2/\partial x_i` (for ``N = M`` uniform, ``b_r`` is
the ``r``-th sorted target projection). Between particles :class:`SlicedPotential`
interpolates :math:`T_\theta` linearly over the stored sorted projections ``a_r`` and
their targets ``b_r`` (flat outside), and integrates it exactly for the value, so a layer
replays at any point: it stores the projections, ``a`` and ``b``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from flowkit.flows._common import uniform_or_checked_weights
from flowkit.objective import FunctionalObjective
from flowkit.potential import Potential
from flowkit.validation import check_compatible, check_int, check_particles, check_seed

__all__ = ["random_projections", "sliced_wasserstein2", "SlicedPotential", "SlicedWasserstein"]


def random_projections(d: int, n_projections: int, generator: torch.Generator, *,
                       dtype: torch.dtype = torch.float32, device: Any = "cpu") -> Tensor:
    """``(d, L)`` matrix of directions uniform on the sphere (normalized Gaussian columns).

    Drawn in float64 on the generator's device, then moved to ``dtype`` and ``device``: the
    same seed gives the same directions (to rounding) in every dtype and on every device.
    """
    d = check_int(d, "d")
    n_projections = check_int(n_projections, "n_projections")
    theta = torch.randn(d, n_projections, generator=generator, dtype=torch.float64,
                        device=generator.device)
    return (theta / theta.norm(dim=0, keepdim=True)).to(device=device, dtype=dtype)


def _check_projections(projections: Tensor, x: Tensor) -> Tensor:
    if not isinstance(projections, Tensor) or projections.dim() != 2 \
            or projections.shape[0] != x.shape[1]:
        got = tuple(projections.shape) if isinstance(projections, Tensor) else \
            type(projections).__name__
        raise ValueError(f"projections must be a (d, L) tensor with d = {x.shape[1]}, got {got}")
    check_compatible(projections.T, x, "projections", "x")
    return projections


def _target_slices(y: Tensor, projections: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per direction: the sorted shifted target projections ``q`` ``(L, M)``, the shift
    ``(L, 1)``, ``G(k / M) = int_0^{k/M} F_nu^{-1}`` ``(L, M + 1)`` and ``mean(q^2)``.

    Projections are shifted by the target's mean projection (translation invariance) so
    the value's three terms do not cancel large numbers.
    """
    q = (y @ projections).T
    shift = q.mean(1, keepdim=True)
    q = torch.sort(q - shift, dim=1).values
    Qc = torch.cat([torch.zeros_like(q[:, :1]), torch.cumsum(q, 1) / q.shape[1]], 1)
    return q, shift, Qc, q.pow(2).mean(1)


def _slices(x: Tensor, target: tuple[Tensor, Tensor, Tensor, Tensor], projections: Tensor,
            w: Tensor):
    r"""Sorted particle projections ``a``, their sort order, cell integrals ``I`` and targets
    ``b = I / w`` per direction (all ``(L, N)``), given :func:`_target_slices`' output."""
    q, shift, Qc, _ = target
    a, order = torch.sort((x @ projections).T - shift, dim=1)
    ws = w[order]  # (L, N)
    m = q.shape[1]
    cuts = torch.cat([torch.zeros_like(ws[:, :1]), torch.cumsum(ws, 1)], 1).clamp_(0.0, 1.0)
    # G(u) = int_0^u F_nu^{-1}: piecewise linear with knots at k / M
    idx = torch.clamp(torch.floor(cuts * m).long(), 0, m - 1)
    G = Qc.gather(1, idx) + (cuts - idx.to(q.dtype) / m) * q.gather(1, idx)
    integral = G[:, 1:] - G[:, :-1]
    b = integral / ws.clamp_min(torch.finfo(ws.dtype).tiny)
    return a, order, integral, b


def _sw2(x: Tensor, target: tuple, projections: Tensor, w: Tensor) -> Tensor:
    a, order, integral, _ = _slices(x, target, projections, w)
    per_direction = (w[order] * a.pow(2)).sum(1) + target[3] - 2.0 * (a * integral).sum(1)
    return per_direction.mean()


def sliced_wasserstein2(x: Tensor, y: Tensor, projections: Tensor,
                        weights: Tensor | None = None) -> Tensor:
    r""":math:`\mathrm{SW}_2^2` between ``sum_i w_i delta_{x_i}`` and the uniform measure on
    ``y``, over the columns of ``projections`` ``(d, L)``; POT's
    ``sliced_wasserstein_distance(x, y, a=w, projections=projections) ** 2``.

    Differentiable in ``x``; :math:`\frac1{w_i}\partial/\partial x_i` is :math:`\nabla\psi(x_i)`
    of :class:`SlicedPotential`.
    """
    check_particles(x, "x")
    check_particles(y, "y")
    check_compatible(x, y, "x", "y")
    if x.dim() != 2:
        raise ValueError(f"x must have shape (N, d), got {tuple(x.shape)}")
    _check_projections(projections, x)
    w = uniform_or_checked_weights(weights, x)
    return _sw2(x, _target_slices(y, projections), projections, w)


class SlicedPotential(Potential):
    r"""First variation of :math:`\mathrm{SW}_2^2(\cdot, \nu)` frozen at one step.

    Buffers: ``projections`` ``(d, L)``, the sorted shifted particle projections ``knots``
    ``(L, N)``, their transport targets ``targets`` ``(L, N)``, the shifts ``(L, 1)``, and
    the cumulated integrals of the interpolated map at the knots.
    """

    def __init__(self, projections: Tensor, knots: Tensor, targets: Tensor, shift: Tensor):
        super().__init__()
        self.register_buffer("projections", projections.detach())
        self.register_buffer("knots", knots.detach().contiguous())
        self.register_buffer("targets", targets.detach())
        self.register_buffer("shift", shift.detach())
        seg = (knots[:, 1:] - knots[:, :-1]) * (targets[:, 1:] + targets[:, :-1]) / 2.0
        self.register_buffer("cumulated", torch.cat([torch.zeros_like(seg[:, :1]),
                                                     torch.cumsum(seg, 1)], 1).detach())
        # 2 * sum_l ||theta_l||^2 / L = 2 bounds the curvature of t^2 only: no guarantee
        self.lipschitz_grad = None

    def _map(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Projected points ``t`` ``(L, B)``, ``T(t)`` and the lower knot index."""
        t = ((z.flatten(1) @ self.projections).T - self.shift).contiguous()
        n = self.knots.shape[1]
        idx = torch.searchsorted(self.knots, t.detach())
        lo, hi = (idx - 1).clamp(0, n - 1), idx.clamp(0, n - 1)
        a_lo, a_hi = self.knots.gather(1, lo), self.knots.gather(1, hi)
        b_lo, b_hi = self.targets.gather(1, lo), self.targets.gather(1, hi)
        gap = a_hi - a_lo
        frac = torch.where(gap > 0, (t - a_lo) / torch.where(gap > 0, gap, 1.0), 0.0)
        return t, b_lo + frac * (b_hi - b_lo), lo

    def forward(self, z: Tensor) -> Tensor:
        t, T, lo = self._map(z)
        a_lo, b_lo = self.knots.gather(1, lo), self.targets.gather(1, lo)
        integral = self.cumulated.gather(1, lo) + (t - a_lo) * (b_lo + T) / 2.0
        return (t.pow(2) - 2.0 * integral).mean(0)

    def grad(self, z: Tensor, *, create_graph: bool = False) -> Tensor:
        if create_graph:
            return super().grad(z, create_graph=True)
        t, T, _ = self._map(z)
        return ((2.0 / t.shape[0]) * (t - T).T @ self.projections.T).view_as(z)


class SlicedWasserstein(FunctionalObjective):
    r""":math:`\mathrm{SW}_2^2(\mu, \nu)` to a fixed target sample, the sliced-Wasserstein flow.

    Parameters
    ----------
    target : Tensor
        Target sample ``(M, d)``.
    n_projections : int
        Number ``L`` of directions.
    projections : Tensor, optional
        A fixed ``(d, L)`` matrix of unit directions (then ``n_projections`` and ``seed``
        are not used).
    resample : bool
        Draw fresh directions at every step (the stochastic flow of [LiutkusEtAl19],
        Algorithm 1, and POT's gallery loop); else one fixed set (a deterministic objective).
    seed : int or torch.Generator
        Source of the directions (its state is in :meth:`state_dict`).

    See Also
    --------
    flowkit.objectives.SinkhornDivergence
        Entropic optimal transport in full dimension.
    flowkit.objectives.MMD
        A kernel divergence to a sample.

    Notes
    -----
    The entropic term of [LiutkusEtAl19]'s SWF (noise ``sqrt(2 lambda eta) xi``) is the
    engine's Langevin noise, not part of this objective.

    Examples
    --------
    >>> import torch, flowkit as fk, flowkit.flows
    >>> y = torch.randn(100, 2) + 3.0
    >>> obj = fk.flows.SlicedWasserstein(y, n_projections=20, seed=0)
    >>> fk.FunctionalGradientDescent(obj, 0.5, progress=False).run(torch.randn(100, 2), 10
    ...     ).n_steps
    10
    """

    minimum = 0.0

    def __init__(self, target: Tensor, n_projections: int = 50, *,
                 projections: Tensor | None = None, resample: bool = False,
                 seed: int | torch.Generator = 0):
        self.target = check_particles(target, "target")
        if target.dim() != 2:
            raise ValueError(f"target must have shape (M, d), got {tuple(target.shape)}")
        self.n_projections = check_int(n_projections, "n_projections")
        if projections is not None:
            _check_projections(projections, target)
            if resample:
                raise ValueError("resample=True draws its own directions; do not pass "
                                 "projections with it")
        self.resample = bool(resample)
        seed = check_seed(seed)
        # an int seeds a CPU generator: the directions do not depend on the device
        self.generator = seed if isinstance(seed, torch.Generator) else torch.Generator(
            ).manual_seed(seed)
        self.projections = projections if projections is not None else self._draw()

    def _draw(self) -> Tensor:
        return random_projections(self.target.shape[1], self.n_projections, self.generator,
                                  dtype=self.target.dtype, device=self.target.device)

    def validate(self, x: Tensor) -> None:
        check_particles(x, "x")
        check_compatible(x, self.target, "x", "target")

    def first_variation(self, x: Tensor, weights: Tensor | None = None) -> SlicedPotential:
        w = uniform_or_checked_weights(weights, x)
        target = self._target()
        a, _, _, b = _slices(x.detach(), target, self.projections, w)
        return SlicedPotential(self.projections, a, b, target[1])

    def value(self, x: Tensor, weights: Tensor | None = None) -> Tensor:
        self.validate(x)
        w = uniform_or_checked_weights(weights, x)
        return _sw2(x, self._target(), self.projections, w)

    def _target(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        # the target's sorted projections change only with the directions: sort once per set
        if getattr(self, "_cache_key", None) is not self.projections:
            self._cache = _target_slices(self.target, self.projections)
            self._cache_key = self.projections
        return self._cache

    def after_step(self, layer: Any) -> None:
        if self.resample:
            self.projections = self._draw()

    def state_dict(self) -> dict[str, Any]:
        return {"projections": self.projections, "rng": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = {"projections", "rng"} - set(state)
        if missing:
            raise ValueError(f"state is missing keys {sorted(missing)}")
        self.projections = state["projections"]
        self.generator.set_state(state["rng"])
