r"""Checks of the theory a researcher wants to hold numbers against.

* Theorem 1 of Nitanda & Suzuki (2018) [NS18]: for an ``L``-smooth objective and a constant
  step ``eta <= 1/L``, Algorithm 3 satisfies
  :math:`\min_{k<T} \|\nabla_\phi \mathcal L(\phi_k)\|^2_{L^2(\mu)} \le 2(\mathcal L(\phi_0) -
  \mathcal L_*)/(\eta T)`.
* Injectivity of a layer ([NS18], sec. 3.2, stated for the gradient of the critic): if
  :math:`\nabla\psi` is ``Lip``-Lipschitz and ``eta * Lip < 1``, then
  :math:`(1-\eta\,\mathrm{Lip})\|x-y\| \le \|G(x)-G(y)\| \le (1+\eta\,\mathrm{Lip})\|x-y\|`.
* Energy dissipation along the flow ([NS18], eq. (6)): :math:`\frac{d}{dt}\mathcal L(\phi_t) =
  -\|\nabla_\phi\mathcal L(\phi_t)\|^2`; one Euler step decreases the objective by
  :math:`\eta\|\nabla\|^2 + O(\eta^2)`.

Every result here says how much it can be trusted: a *guaranteed* number follows from a
constant the objective proves, an *estimate* from samples, and a certificate whose
hypotheses the run itself contradicts reports the contradiction instead of holding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from flowkit.layers import GradientLayer
from flowkit.potential import Potential
from flowkit.validation import check_int, check_number, check_particles, check_positive

__all__ = [
    "Theorem1Certificate",
    "theorem1_bound",
    "theorem1_certificate",
    "descent_slack",
    "LipschitzBound",
    "lipschitz_bound",
    "InjectivityMargin",
    "injectivity_margin",
    "dissipation_residuals",
]

# Relative slack granted to the per-step descent inequality for rounding: values recorded
# in float32 carry ~1e-7 relative error, so a violation must exceed this to count.
_DESCENT_RTOL = 1e-6


def theorem1_bound(initial_value: float, minimum: float, step_size: float, n_steps: int) -> float:
    r"""Right-hand side of Theorem 1: :math:`2(\mathcal L(\phi_0) - \mathcal L_*)/(\eta T)`.

    Raises
    ------
    ValueError
        If ``minimum > initial_value`` (no objective starts below its infimum: one of the two
        is wrong, and the bound would be negative), or ``step_size``/``n_steps`` are not
        positive.
    """
    initial_value = check_number(initial_value, "initial_value")
    minimum = check_number(minimum, "minimum")
    step_size = check_positive(step_size, "step_size")
    n_steps = check_int(n_steps, "n_steps", minimum=1)
    if minimum > initial_value:
        raise ValueError(
            f"minimum ({minimum}) must be <= initial_value ({initial_value}): an objective "
            "cannot start below its infimum"
        )
    return 2.0 * (initial_value - minimum) / (step_size * n_steps)


def descent_slack(values: Sequence[float], grad_norm2: Sequence[float], step_size: float,
                  smoothness: float) -> list[float]:
    r"""Per-step slack of the descent lemma, :math:`\mathcal L_k - \eta(1 - L\eta/2)\|g_k\|^2
    - \mathcal L_{k+1}`.

    An ``L``-smooth objective makes every entry ``>= 0`` ([NS18], proof of Theorem 1); a
    clearly negative entry proves the declared ``smoothness`` wrong for this run.
    ``values`` holds the objective at every step (``len(grad_norm2) + 1`` entries).
    """
    step_size = check_positive(step_size, "step_size")
    smoothness = check_positive(smoothness, "smoothness")
    if len(values) != len(grad_norm2) + 1:
        raise ValueError(
            f"values must have len(grad_norm2) + 1 = {len(grad_norm2) + 1} entries (the "
            f"objective at every step), got {len(values)}"
        )
    factor = step_size * (1.0 - smoothness * step_size / 2.0)
    return [float(values[k]) - factor * float(grad_norm2[k]) - float(values[k + 1])
            for k in range(len(grad_norm2))]


@dataclass(frozen=True)
class Theorem1Certificate:
    r"""The two sides of Theorem 1 ([NS18]) for one run, and whether its hypotheses held.

    Attributes
    ----------
    min_grad_norm2 : float
        Left-hand side, :math:`\min_{k<T}\|\nabla_\phi\mathcal L(\phi_k)\|^2`.
    bound : float
        Right-hand side, :math:`2(\mathcal L(\phi_0) - \mathcal L_*)/(\eta T)`.
    step_size : float
        The constant step ``eta``.
    smoothness : float or None
        The declared constant ``L``; ``None`` when none was given.
    step_condition : bool
        ``eta <= 1/L`` for the declared ``L`` (``False`` when ``L`` is unknown).
    contradiction : str or None
        Evidence from the run that the declared ``L`` is wrong (a violated per-step descent
        inequality, or a sampled curvature above ``L``); ``None`` when nothing contradicts it.
    min_descent_slack : float or None
        Smallest per-step slack of :func:`descent_slack` when the values were given.
    """

    min_grad_norm2: float
    bound: float
    step_size: float
    smoothness: float | None
    step_condition: bool
    contradiction: str | None = None
    min_descent_slack: float | None = None

    @property
    def bound_met(self) -> bool:
        """The inequality itself, whatever the hypotheses: ``min_grad_norm2 <= bound``."""
        return self.min_grad_norm2 <= self.bound

    @property
    def holds(self) -> bool:
        """Theorem 1 certifies this run: ``L`` declared, ``eta <= 1/L``, nothing in the run
        contradicts ``L``, and the inequality is met. A met inequality without its
        hypotheses is :attr:`bound_met`, not a certificate."""
        return self.step_condition and self.contradiction is None and self.bound_met

    def __repr__(self) -> str:
        extra = "" if self.min_descent_slack is None else \
            f", min_descent_slack={self.min_descent_slack:.3g}"
        return (f"Theorem1Certificate(holds={self.holds}, min_grad_norm2="
                f"{self.min_grad_norm2:.6g}, bound={self.bound:.6g}, step_size={self.step_size}"
                f", smoothness={self.smoothness}, step_condition={self.step_condition}, "
                f"contradiction={self.contradiction!r}{extra})")


def theorem1_certificate(grad_norm2: Sequence[float], initial_value: float, minimum: float,
                         step_size: float, smoothness: float | None = None, *,
                         values: Sequence[float] | None = None,
                         sampled_curvature: float | None = None) -> Theorem1Certificate:
    r"""Evaluate Theorem 1 on a run's per-step squared gradient norms (``result.trace``).

    The declared ``smoothness`` is not trusted blindly: with ``values`` (the objective at
    every step, e.g. ``ObjectiveValue`` monitored at ``monitor_every=1``) each step must
    satisfy the descent inequality :math:`\mathcal L_{k+1} \le \mathcal L_k - \eta(1 - L\eta/2)
    \|g_k\|^2` (:func:`descent_slack`); with ``sampled_curvature`` (a sampled lower bound of
    the true constant, e.g. a Hessian-norm estimate from :func:`lipschitz_bound` for a
    potential energy) it must not exceed ``L``. Either failure is reported in
    ``contradiction`` and the certificate does not hold.

    Parameters
    ----------
    grad_norm2 : sequence of float
        ``result.trace["grad_norm2"]``, one entry per step taken.
    initial_value, minimum : float
        :math:`\mathcal L(\phi_0)` and the infimum :math:`\mathcal L_*`.
    step_size : float
        The constant ``eta`` of the run.
    smoothness : float, optional
        The declared ``L``.
    values : sequence of float, optional
        The objective at steps ``0..T`` (``len(grad_norm2) + 1`` entries).
    sampled_curvature : float, optional
        A sampled lower bound of the true smoothness constant.
    """
    T = len(grad_norm2)
    if T == 0:
        raise ValueError("grad_norm2 is empty: run at least one step")
    step_size = check_positive(step_size, "step_size")
    if smoothness is not None:
        smoothness = check_positive(smoothness, "smoothness")
    bound = theorem1_bound(initial_value, minimum, step_size, T)
    contradiction, min_slack = None, None
    if values is not None and smoothness is not None:
        slack = descent_slack(values, grad_norm2, step_size, smoothness)
        k = min(range(T), key=slack.__getitem__)
        min_slack = slack[k]
        scale = abs(float(values[k])) + abs(float(values[k + 1]))
        if min_slack < -_DESCENT_RTOL * scale - 1e-300:
            contradiction = (
                f"the descent inequality fails at step {k} (slack {min_slack:.3g} < 0): the "
                f"objective is not {smoothness}-smooth along this run"
            )
    if sampled_curvature is not None and smoothness is not None and contradiction is None:
        sampled_curvature = check_number(sampled_curvature, "sampled_curvature", minimum=0.0)
        if sampled_curvature > smoothness * (1 + _DESCENT_RTOL):
            contradiction = (
                f"a sampled curvature {sampled_curvature:.6g} exceeds the declared smoothness "
                f"{smoothness}"
            )
    cond = smoothness is not None and step_size <= 1.0 / smoothness
    return Theorem1Certificate(float(min(grad_norm2)), bound, step_size, smoothness, cond,
                               contradiction, min_slack)


@dataclass(frozen=True)
class LipschitzBound:
    """A Lipschitz constant of ``grad psi``: ``kind`` is ``"guaranteed"`` or ``"estimate"``.

    An estimate is a lower bound of the true constant (a maximum over sampled points of the
    Hessian's spectral norm by power iteration), so a margin computed from it is optimistic.
    ``method`` says how the number was obtained.
    """

    value: float
    kind: str
    method: str = ""


def lipschitz_bound(potential: Potential, x: Tensor | None = None, *, n_iter: int = 30,
                    seed: int = 0) -> LipschitzBound:
    """A Lipschitz constant of ``grad psi``: the potential's own bound when it has one,
    else a power-iteration estimate on Hessian-vector products at the points ``x``
    (``n_iter >= 1`` iterations). Every argument is checked, whichever path answers."""
    if not isinstance(potential, Potential):
        raise TypeError(f"potential must be a flowkit.Potential, got {type(potential).__name__}")
    if x is not None:
        check_particles(x, "x")
    n_iter = check_int(n_iter, "n_iter", minimum=1)
    known = getattr(potential, "lipschitz_grad", None)
    if known is not None and math.isfinite(known):
        return LipschitzBound(float(known), "guaranteed",
                              f"the bound {type(potential).__name__}.lipschitz_grad proves")
    if x is None:
        raise ValueError(
            "this potential has no known Lipschitz bound; pass sample points x to estimate one"
        )
    gen = torch.Generator(device=x.device).manual_seed(seed)
    v = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
    norms = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    for _ in range(n_iter):
        v = v / v.flatten(1).norm(dim=1).clamp_min(1e-30).view(-1, *[1] * (x.dim() - 1))
        hv = potential.hvp(x, v)
        norms = hv.flatten(1).norm(dim=1)
        v = hv
    return LipschitzBound(float(norms.max()), "estimate",
                          f"max over {x.shape[0]} sample points of the Hessian norm, "
                          f"{n_iter} power iterations")


class InjectivityMargin(float):
    """``1 - eta * Lip(grad psi)`` with its provenance: a float that says what it is.

    It behaves as a number (``round``, comparisons, arithmetic give plain floats) but its
    ``repr`` and attributes tell a guaranteed margin from an optimistic estimate:
    ``kind`` is ``"guaranteed"`` or ``"estimate"`` and ``method`` how ``Lip`` was obtained.
    """

    kind: str
    method: str
    lipschitz: float

    def __new__(cls, value: float, kind: str, method: str, lipschitz: float):
        self = super().__new__(cls, value)
        self.kind, self.method, self.lipschitz = kind, method, lipschitz
        return self

    @property
    def value(self) -> float:
        """The margin as a plain float."""
        return float(self)

    @property
    def guaranteed(self) -> bool:
        """Whether the margin is proved (``kind == "guaranteed"``), not sampled."""
        return self.kind == "guaranteed"

    def __repr__(self) -> str:
        return (f"InjectivityMargin(value={float(self)!r}, kind={self.kind!r}, "
                f"method={self.method!r})")

    __str__ = __repr__

    def __reduce__(self):
        return (InjectivityMargin, (float(self), self.kind, self.method, self.lipschitz))


def injectivity_margin(layer: GradientLayer, x: Tensor | None = None, **kwargs
                       ) -> InjectivityMargin:
    r"""``1 - eta * Lip(grad psi)``: the layer is injective (bi-Lipschitz) when it is > 0.

    Uses :func:`lipschitz_bound`, so the margin is guaranteed when the potential knows its
    constant and an (optimistic) estimate at the points ``x`` otherwise; the result says
    which (:class:`InjectivityMargin`).
    """
    if not isinstance(layer, GradientLayer):
        raise TypeError(f"layer must be a flowkit.GradientLayer, got {type(layer).__name__}")
    lip = lipschitz_bound(layer.potential, x, **kwargs)
    return InjectivityMargin(1.0 - layer.step_size * lip.value, lip.kind, lip.method, lip.value)


def dissipation_residuals(values: Sequence[float], grad_norm2: Sequence[float],
                          step_sizes: Sequence[float]) -> list[float]:
    r"""Per-step ``(L_k - L_{k+1}) / (eta_k ||grad_k||^2) - 1``: zero to first order in eta.

    ``values`` must hold the objective at every step (``len(grad_norm2) + 1`` entries).
    Where the gradient vanishes the ratio is undefined and the entry is ``nan`` (the flow
    is at a critical point; there is nothing to dissipate).
    """
    if len(values) != len(grad_norm2) + 1 or len(step_sizes) != len(grad_norm2):
        raise ValueError("need len(values) == len(grad_norm2) + 1 == len(step_sizes) + 1")
    out = []
    for k in range(len(grad_norm2)):
        rate = float(step_sizes[k]) * float(grad_norm2[k])
        out.append((values[k] - values[k + 1]) / rate - 1.0 if rate > 0 else math.nan)
    return out
