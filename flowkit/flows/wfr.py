r"""Wasserstein-Fisher-Rao (birth-death) MMD flow.

Particles carry weights, :math:`\mu = \sum_i w_i\delta_{x_i}`, and the objective is
:math:`\mathrm{MMD}^2(\mu, \nu)` to a target sample :math:`\nu = \frac1M\sum_m\delta_{y_m}`,
with first variation the weighted witness

.. math::
    \psi(z) = 2\Big(\sum_j w_j k(z, x_j) - \frac1M\sum_m k(z, y_m)\Big).

The Wasserstein-Fisher-Rao gradient flow :math:`\partial_t\mu = \nabla\cdot(\mu\nabla\psi)
- \alpha\,\mu\,(\psi - \int\psi\,d\mu)` (Lu, Lu & Nolen 2019 [LuLuNolen19];
Rotskoff, Jelassi, Bruna & Vanden-Eijnden 2019 [RotskoffEtAl19]; Yan, Wang & Rigollet
2023 [YanWangRigollet23]) is discretized as one transport step and one
multiplicative (mirror / birth-death) weight step, both at the current :math:`(x, w)`:

.. math::
    x_i \leftarrow x_i - \eta\nabla\psi(x_i), \qquad
    w_i \leftarrow \frac{w_i\, e^{-\eta_w(\psi(x_i) - \langle w, \psi\rangle)}}
                      {\sum_j w_j\, e^{-\eta_w(\psi(x_j) - \langle w, \psi\rangle)}} .

In flowkit's engine this is :class:`WFR`: the transport half is the engine's step on the
weighted witness (its ``first_variation(x, weights)``) and the weight half is its
``update_weights`` hook, so :class:`flowkit.FunctionalGradientDescent` runs it with
monitors, checkpoints (weights included) and Algorithm 2 replay of the transport layers.
With :math:`\eta_w = 0` the weights are not touched and the transport step is flowkit's
plain MMD flow (:class:`flowkit.objectives.MMD` under the engine), bit for bit.
The weight step keeps the weights non-negative and summing to one (up to rounding).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from flowkit.descent import FunctionalGradientDescent
from flowkit.flows._common import uniform_or_checked_weights
from flowkit.kernels import (
    DEFAULT_MEMORY_BUDGET,
    Gaussian,
    Kernel,
    kernel_grad_sum,
    kernel_sum,
)
from flowkit.objective import FunctionalObjective
from flowkit.potential import Potential
from flowkit.validation import (
    check_compatible,
    check_int,
    check_nonnegative,
    check_particles,
    check_positive,
)

__all__ = ["WFR", "WeightedWitness", "weighted_mmd2", "wfr_step", "wfr_mmd_flow", "WFRResult"]


class WeightedWitness(Potential):
    r""":math:`\psi(z) = 2(\sum_j w_j k(z, x_j) - \frac1M\sum_m k(z, y_m))`, one reduction
    over ``[x; y]`` with signed weights ``[2 w; -2/M]`` (as
    :class:`flowkit.objectives.KernelWitness`, which it equals for ``w = 1/N``)."""

    def __init__(self, particles: Tensor, weights: Tensor, target: Tensor, kernel: Kernel,
                 **kw):
        super().__init__()
        m = target.shape[0]
        self.register_buffer("points", torch.cat([particles.detach(), target]))
        self.register_buffer("signed", torch.cat([2.0 * weights.detach(),
                                                  target.new_full((m,), -2.0 / m)]))
        self.kernel, self._kw = kernel, kw
        self.lipschitz_grad = 4.0 * kernel.hessian_bound()

    def forward(self, z: Tensor) -> Tensor:
        return kernel_sum(z, self.points, self.kernel, self.signed, **self._kw)

    def grad(self, z: Tensor, *, create_graph: bool = False) -> Tensor:
        return kernel_grad_sum(z, self.points, self.kernel, self.signed, **self._kw)


def _check(x: Tensor, target: Tensor, kernel: Kernel) -> None:
    check_particles(x, "x")
    check_particles(target, "target")
    check_compatible(x, target, "x", "target")
    if not isinstance(kernel, Kernel):
        raise TypeError(f"kernel must be a flowkit.kernels.Kernel, got {type(kernel).__name__}")


def weighted_mmd2(x: Tensor, weights: Tensor | None, target: Tensor, kernel: Kernel,
                  **kw) -> Tensor:
    r""":math:`\mathrm{MMD}^2(\sum_i w_i\delta_{x_i}, \frac1M\sum_m\delta_{y_m})` (V-statistic);
    ``kw`` are the blocking/backend options of :func:`flowkit.kernels.kernel_sum`."""
    _check(x, target, kernel)
    w = uniform_or_checked_weights(weights, x)
    m = target.shape[0]
    points = torch.cat([x, target])
    signed = torch.cat([w, target.new_full((m,), -2.0 / m)])
    cross = w @ kernel_sum(x, points, kernel, signed, **kw)
    return cross + kernel_sum(target, target, kernel, **kw).mean()


class WFR(FunctionalObjective):
    r"""The Wasserstein-Fisher-Rao MMD flow (module docstring) as an engine objective.

    The value is the weighted :math:`\mathrm{MMD}^2` (:func:`weighted_mmd2`), the first
    variation the weighted witness (:class:`WeightedWitness`), and :meth:`update_weights`
    the multiplicative birth-death step with rate ``weight_step`` :math:`\eta_w` (not
    scaled by the transport step ``eta``).

    Parameters
    ----------
    target : Tensor
        Target sample ``(M, *event)``.
    kernel : Kernel, default ``Gaussian(1.0)``
    weight_step : float
        :math:`\eta_w \ge 0`; 0 is the plain MMD flow.
    block_size, memory_budget, backend
        As in :class:`flowkit.objectives.MMD`.

    See Also
    --------
    flowkit.objectives.MMD
        The transport-only flow (``weight_step=0`` here).
    flowkit.flows.SVGD
        A transport-only flow toward a density.

    Examples
    --------
    >>> import torch, flowkit as fk, flowkit.flows
    >>> y = torch.randn(40, 2)
    >>> flow = fk.FunctionalGradientDescent(fk.flows.WFR(y, weight_step=1.0), 0.5,
    ...                                     progress=False)
    >>> res = flow.run(torch.randn(30, 2) + 2.0, 10)
    >>> round(float(res.weights.sum()), 6)
    1.0
    """

    minimum = 0.0

    def __init__(self, target: Tensor, kernel: Kernel | None = None, *,
                 weight_step: float = 1.0, block_size: int | None = None,
                 memory_budget: int = DEFAULT_MEMORY_BUDGET, backend: str = "auto"):
        self.kernel = Gaussian(1.0) if kernel is None else kernel
        _check(target, target, self.kernel)
        self.target = target
        self.weight_step = check_nonnegative(weight_step, "weight_step")
        self._kw = {"block_size": block_size, "memory_budget": memory_budget,
                    "backend": backend}

    def validate(self, x: Tensor) -> None:
        _check(x, self.target, self.kernel)

    def first_variation(self, x: Tensor, weights: Tensor | None = None) -> WeightedWitness:
        w = uniform_or_checked_weights(weights, x)
        return WeightedWitness(x, w, self.target, self.kernel, **self._kw)

    def value(self, x: Tensor, weights: Tensor | None = None) -> Tensor:
        return weighted_mmd2(x, weights, self.target, self.kernel, **self._kw)

    def update_weights(self, x: Tensor, weights: Tensor, potential: Potential | None,
                       step_size: float) -> Tensor:
        r""":math:`w_i e^{-\eta_w(\psi(x_i) - \langle w, \psi\rangle)}`, normalised."""
        if self.weight_step == 0.0:
            return weights
        psi = self.first_variation(x, weights) if potential is None else potential
        v = psi(x)
        logits = -self.weight_step * (v - weights @ v)
        # a softmax in the log domain: exp never overflows whatever eta_w * psi is
        return torch.softmax(torch.log(weights) + logits, 0)


def wfr_step(x: Tensor, weights: Tensor, target: Tensor, kernel: Kernel, step_size: float,
             weight_step: float, **kw) -> tuple[Tensor, Tensor]:
    """One WFR step from ``(x, weights)``: returns the new particles and weights.

    The engine's step on :class:`WFR` spelled out (transport along the witness at
    ``(x, weights)``, then :meth:`WFR.update_weights` at the same point).
    """
    obj = WFR(target, kernel, weight_step=weight_step, **kw)
    psi = obj.first_variation(x, weights)
    return x - step_size * psi.grad(x), obj.update_weights(x, weights, psi, step_size)


@dataclass
class WFRResult:
    """Outcome of :func:`wfr_mmd_flow`.

    ``history`` holds ``step`` and ``mmd2`` (the weighted MMD^2) at the monitored steps;
    ``weights`` are the final weights (non-negative, summing to 1).
    """

    particles: Tensor
    weights: Tensor
    n_steps: int
    wall_time: float
    history: dict[str, list] = field(default_factory=lambda: {"step": [], "mmd2": []})


def wfr_mmd_flow(x0: Tensor, target: Tensor, kernel: Kernel | None = None, eta: float = 1.0,
                 eta_w: float = 1.0, n_steps: int = 100, *, weights0: Tensor | None = None,
                 monitor_every: int = 10, block_size: int | None = None,
                 memory_budget: int = DEFAULT_MEMORY_BUDGET, backend: str = "auto"
                 ) -> WFRResult:
    r"""Run the Wasserstein-Fisher-Rao MMD flow (module docstring) for ``n_steps``.

    Parameters
    ----------
    x0 : Tensor
        Initial particles ``(N, *event)``.
    target : Tensor
        Target sample ``(M, *event)``.
    kernel : Kernel, default ``Gaussian(1.0)``
    eta : float
        Transport step :math:`\eta > 0` (flowkit's step on MMD^2: Arbel's gamma is 2 eta).
    eta_w : float
        Weight (birth-death) step :math:`\eta_w \ge 0`; 0 is the plain MMD flow.
    n_steps : int
    weights0 : Tensor, optional
        Initial weights ``(N,)`` summing to 1; default uniform.
    monitor_every : int
        Steps between MMD^2 records (also at the first and last step).
    block_size, memory_budget, backend
        As in :class:`flowkit.objectives.MMD`.

    Notes
    -----
    A shortcut for :class:`flowkit.FunctionalGradientDescent` on :class:`WFR` without
    layers (use the engine for layers, checkpoints and other monitors).
    """
    kernel = Gaussian(1.0) if kernel is None else kernel
    _check(x0, target, kernel)
    eta = check_positive(eta, "eta")
    eta_w = check_nonnegative(eta_w, "eta_w")
    n_steps = check_int(n_steps, "n_steps", minimum=0)
    monitor_every = check_int(monitor_every, "monitor_every")
    kw = {"block_size": block_size, "memory_budget": memory_budget, "backend": backend}
    w = uniform_or_checked_weights(weights0, x0, "weights0")
    obj = WFR(target, kernel, weight_step=eta_w, **kw)

    def mmd2(state) -> dict[str, float]:
        return {"mmd2": float(obj.value(state.particles, state.weights))}

    engine = FunctionalGradientDescent(obj, eta, monitors=[mmd2], monitor_every=monitor_every,
                                       keep_layers=False, progress=False, max_growth=None)
    res = engine.run(x0, n_steps, weights=w)
    return WFRResult(res.particles, res.weights, n_steps, res.wall_time,
                     {"step": res.history["step"], "mmd2": res.history["mmd2"]})
