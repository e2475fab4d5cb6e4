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

With :math:`\eta_w = 0` the weights are not touched and the transport step is flowkit's
plain MMD flow (:class:`flowkit.objectives.MMD` under the engine), bit for bit.
The weight step keeps the weights non-negative and summing to one (up to rounding).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from flowkit.flows._common import uniform_or_checked_weights
from flowkit.kernels import (
    DEFAULT_MEMORY_BUDGET,
    Gaussian,
    Kernel,
    kernel_grad_sum,
    kernel_sum,
)
from flowkit.potential import Potential
from flowkit.validation import (
    check_compatible,
    check_int,
    check_nonnegative,
    check_particles,
    check_positive,
)

__all__ = ["WeightedWitness", "weighted_mmd2", "wfr_step", "wfr_mmd_flow", "WFRResult"]


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


# ENGINE HOOK (weights): with weighted particles in the engine, the transport half is the
# engine step on MMD's weighted witness and the weight half is this multiplicative update.
def wfr_step(x: Tensor, weights: Tensor, target: Tensor, kernel: Kernel, step_size: float,
             weight_step: float, **kw) -> tuple[Tensor, Tensor]:
    """One WFR step from ``(x, weights)``: returns the new particles and weights."""
    psi = WeightedWitness(x, weights, target, kernel, **kw)
    x_new = x - step_size * psi.grad(x)
    if weight_step == 0.0:
        return x_new, weights
    v = psi(x)
    logits = -weight_step * (v - weights @ v)
    # a softmax in the log domain: exp never overflows whatever eta_w * psi is
    w_new = torch.softmax(torch.log(weights) + logits, 0)
    return x_new, w_new


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
    Engine hook (not wired): with weighted particles in the engine's contract, the
    transport part is the engine on :class:`flowkit.objectives.MMD`'s weighted first
    variation, and the weight step is a per-step weight update fed by ``psi(x_i)``.
    """
    kernel = Gaussian(1.0) if kernel is None else kernel
    _check(x0, target, kernel)
    eta = check_positive(eta, "eta")
    eta_w = check_nonnegative(eta_w, "eta_w")
    n_steps = check_int(n_steps, "n_steps", minimum=0)
    monitor_every = check_int(monitor_every, "monitor_every")
    kw = {"block_size": block_size, "memory_budget": memory_budget, "backend": backend}
    x = x0.detach().clone()
    w = uniform_or_checked_weights(weights0, x, "weights0")
    res = WFRResult(x, w, n_steps, 0.0)
    t0 = time.perf_counter()
    for k in range(n_steps + 1):
        if k % monitor_every == 0 or k == n_steps:
            res.history["step"].append(k)
            res.history["mmd2"].append(float(weighted_mmd2(x, w, target, kernel, **kw)))
        if k < n_steps:
            x, w = wfr_step(x, w, target, kernel, eta, eta_w, **kw)
    res.particles, res.weights, res.wall_time = x, w, time.perf_counter() - t0
    return res
