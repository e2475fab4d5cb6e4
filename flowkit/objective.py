"""The abstract objective over probability measures that Algorithm 3 minimizes."""

from __future__ import annotations

import abc
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from torch import Tensor

from flowkit.potential import Potential

if TYPE_CHECKING:  # the layers module imports potentials only; no cycle at run time
    from flowkit.layers import GradientLayer, VelocityField

__all__ = ["FunctionalObjective", "call_weighted", "gives_potential", "accepts_weights"]


def accepts_weights(method: Callable[..., Any]) -> bool:
    """Whether ``method`` takes a ``weights`` argument (or ``**kwargs``)."""
    try:
        params = inspect.signature(method).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "weights" or p.kind is p.VAR_KEYWORD for p in params)


def call_weighted(method: Callable[..., Any], x: Tensor, weights: Tensor | None) -> Any:
    """``method(x, weights=weights)``, or ``method(x)`` when the weights are uniform.

    ``weights=None`` stands for uniform weights. An objective method written before
    weights existed (no ``weights`` argument) gets non-uniform weights refused with a
    ``TypeError`` rather than silently ignored.
    """
    if weights is None:
        return method(x)
    if accepts_weights(method):
        return method(x, weights=weights)
    owner = getattr(method, "__self__", None)
    name = f"{type(owner).__name__}.{method.__name__}" if owner is not None else repr(method)
    raise TypeError(
        f"{name}(x) takes no weights, so it can only describe uniformly weighted particles; "
        "pass weights=None, or give it a weights=None argument "
        "(see FunctionalObjective's weights convention)")


def gives_potential(objective: FunctionalObjective) -> bool:
    """Whether the objective overrides ``first_variation`` (else it gives a velocity)."""
    return type(objective).first_variation is not FunctionalObjective.first_variation


# No abstract method: a subclass overrides first_variation *or* velocity, which abc cannot
# express; the engine checks it when it is built.
class FunctionalObjective(abc.ABC):  # noqa: B024
    r"""An objective :math:`\mathcal{L}(\mu)` on probability measures, seen through particles.

    A measure is represented by particles ``x`` of shape ``(N, *event)`` and weights
    ``w`` of shape ``(N,)`` (non-negative, summing to 1; ``None`` means uniform),
    :math:`\mu = \sum_i w_i \delta_{x_i}`. A subclass gives the first variation
    :math:`\psi = \frac{\delta \mathcal L}{\delta \mu}(\mu)`; the functional gradient at
    particle :math:`x_i` is then :math:`\nabla \psi(x_i)` (Nitanda & Suzuki 2018, sec. 4:
    :math:`\nabla_\phi \mathcal L(\phi) = \nabla_x \psi \circ \phi`). This is the gradient in
    :math:`L^2(\mu)`, so with a value defined,

    .. math:: \nabla \psi(x_i) = \frac{1}{w_i} \, \partial \mathcal L / \partial x_i ,

    which is :math:`N \partial \mathcal L / \partial x_i` for uniform weights, and step sizes
    do not depend on the number of particles.

    **Weights.** ``first_variation``, ``functional_gradient`` and ``value`` take an optional
    ``weights=None``. An objective written without that argument keeps working for uniform
    weights; the engine refuses to pass it non-uniform ones (:func:`call_weighted`).
    :meth:`update_weights` lets a flow move the weights too (Wasserstein-Fisher-Rao type
    flows); the default leaves them unchanged.

    **Velocity fields.** An objective whose flow is not a gradient (SVGD) overrides
    :meth:`velocity` instead of :meth:`first_variation`; the engine then stacks
    :class:`flowkit.layers.VelocityLayer` s ``x - eta v(x)``. With ``temperature``
    (:math:`\beta`) set, every layer adds :math:`\sqrt{2\eta/\beta}\,\xi`,
    :math:`\xi \sim \mathcal N(0, I)` (a Langevin-type step), seeded per layer so the
    stack replays.

    Attributes
    ----------
    smoothness : float or None
        A constant ``L`` such that the objective is ``L``-smooth in :math:`L^2(\mu)`
        (Nitanda & Suzuki 2018, Def. 1), when known. Theorem 1 needs ``eta <= 1/L``.
    minimum : float or None
        The infimum :math:`\mathcal L_*` when known (Theorem 1's right-hand side).
    """

    smoothness: float | None = None
    minimum: float | None = None
    #: Inverse temperature beta of the layers' Gaussian noise; ``None``: no noise.
    temperature: float | None = None

    def first_variation(self, x: Tensor, weights: Tensor | None = None) -> Potential:
        """The first variation ``psi = dL/dmu`` at the particles ``x``, as a Potential.

        Every objective overrides this or :meth:`velocity`.
        """
        raise NotImplementedError(
            f"{type(self).__name__} must override first_variation(x) (a potential) or "
            "velocity(x) (a velocity field)")

    def velocity(self, x: Tensor, weights: Tensor | None = None) -> VelocityField:
        """The velocity field ``v`` of the flow ``dx/dt = -v(x)`` at the particles ``x``.

        Default: the gradient field of :meth:`first_variation`. Override it (and not
        ``first_variation``) for flows whose velocity is not a gradient.
        """
        from flowkit.layers import GradientField

        return GradientField(call_weighted(self.first_variation, x, weights))

    def functional_gradient(self, x: Tensor, weights: Tensor | None = None) -> Tensor:
        """``grad psi(x_i)`` at every particle: the :math:`L^2(\\mu)` gradient, shape of ``x``.

        With weights: ``functional_gradient(x, w)[i] == (1 / w_i) d value(x, w) / d x_i``.
        """
        if gives_potential(self):
            return call_weighted(self.first_variation, x, weights).grad(x)
        return call_weighted(self.velocity, x, weights)(x)

    def value(self, x: Tensor, weights: Tensor | None = None) -> Tensor:
        """The objective at the measure of ``(x, weights)``, a 0-dim tensor (if defined)."""
        raise NotImplementedError(f"{type(self).__name__} defines no value")

    def update_weights(self, x: Tensor, weights: Tensor, potential: Potential | None,
                       step_size: float) -> Tensor:
        """New weights after a step at particles ``x`` (before they move); default unchanged.

        A Wasserstein-Fisher-Rao type flow returns e.g.
        ``w * exp(-eta (psi(x) - sum_j w_j psi(x_j)))``, normalised.
        """
        return weights

    def validate(self, x: Tensor) -> None:
        """Check that ``x`` is a valid set of particles for this objective (raise if not)."""
        from flowkit.validation import check_particles

        check_particles(x, "x")

    def reference_scale(self, x: Tensor) -> float | None:
        """A length scale of the problem, for the engine's divergence rule (``max_growth``).

        Default: the largest ``|entry|`` of the objective's public tensors that live in the
        particles' space (a target sample ``(M, *event)`` or a point ``event``), e.g. the
        target of an MMD; ``None`` if there is none. Override where a better scale is known.
        """
        event = tuple(x.shape[1:])
        scales = [float(v.detach().abs().amax()) for name, v in vars(self).items()
                  if not name.startswith("_") and isinstance(v, Tensor) and v.numel()
                  and v.device.type != "meta"
                  and (tuple(v.shape[1:]) == event or tuple(v.shape) == event)]
        return max(scales) if scales else None

    def on_run_start(self, *, resumed: bool) -> None:
        """Called by the engine before the first step of a run (``resumed`` after a resume).

        Objectives that write outside the run (a layer history on disk) check here that
        they will not overwrite another run's files (default: nothing).
        """

    def after_step(self, layer: GradientLayer) -> None:
        """Called by the engine with the layer it just applied (default: nothing).

        Objectives that need the history, e.g. Algorithm 1 pushing fresh base samples through
        every layer so far, record it here.
        """

    # Stateful objectives (a critic fitted at every step) save and restore their state so a
    # checkpointed run resumes exactly; analytic ones have nothing to save.
    def state_dict(self) -> dict[str, Any]:
        """State needed to resume a run bit-identically (empty for stateless objectives)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        if state:
            raise ValueError(f"{type(self).__name__} has no state but got keys {sorted(state)}")
