"""The abstract objective over probability measures that Algorithm 3 minimizes."""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Any

from torch import Tensor

from flowkit.potential import Potential

if TYPE_CHECKING:  # the layers module imports potentials only; no cycle at run time
    from flowkit.layers import GradientLayer

__all__ = ["FunctionalObjective"]


class FunctionalObjective(abc.ABC):
    r"""An objective :math:`\mathcal{L}(\mu)` on probability measures, seen through particles.

    A measure is represented by particles ``x`` of shape ``(N, *event)`` with uniform weights,
    :math:`\mu = \frac1N \sum_i \delta_{x_i}`. A subclass gives only the first variation
    :math:`\psi = \frac{\delta \mathcal L}{\delta \mu}(\mu)`; the functional gradient at
    particle :math:`x_i` is then :math:`\nabla \psi(x_i)` (Nitanda & Suzuki 2018, sec. 4:
    :math:`\nabla_\phi \mathcal L(\phi) = \nabla_x \psi \circ \phi`). This is the gradient in
    :math:`L^2(\mu)`, so with a value defined,

    .. math:: \nabla \psi(x_i) = N \, \partial \mathcal L / \partial x_i ,

    and step sizes do not depend on the number of particles.

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

    @abc.abstractmethod
    def first_variation(self, x: Tensor) -> Potential:
        """The first variation ``psi = dL/dmu`` at the particles ``x``, as a Potential."""

    def functional_gradient(self, x: Tensor) -> Tensor:
        """``grad psi(x_i)`` at every particle: the :math:`L^2(\\mu)` gradient, shape of ``x``."""
        return self.first_variation(x).grad(x)

    def value(self, x: Tensor) -> Tensor:
        """The objective at the empirical measure of ``x``, a 0-dim tensor (if defined)."""
        raise NotImplementedError(f"{type(self).__name__} defines no value")

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
