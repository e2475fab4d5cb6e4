r"""Flows of :math:`\mathrm{KL}(\mu\,|\,\pi)` for a target known through its score.

The Wasserstein gradient flow of :math:`\mathrm{KL}(\mu\,|\,\pi)`, :math:`\pi \propto e^{-V}`,
is the Fokker-Planck equation :math:`\partial_t\mu = \nabla\cdot(\mu\nabla V) + \Delta\mu`
(Jordan, Kinderlehrer & Otto 1998 [JKO98]), whose first variation
:math:`V + \log\mu + 1` cannot be evaluated on an empirical measure. Two particle versions:

(a) **Unadjusted Langevin** ([JKO98]'s diffusion, discretized by Euler-Maruyama; Roberts &
    Tweedie 1996 [RobertsTweedie96]):
    :math:`x \leftarrow x + \eta\nabla\log\pi(x) + \sqrt{2\eta/\beta}\,\xi`,
    :math:`\xi\sim\mathcal N(0, I)`; ``beta`` is the inverse temperature (1: the KL
    flow). In the engine this is :class:`Langevin`: first variation :math:`V = -\log\pi`
    and ``temperature = beta``, so every layer adds the seeded noise
    :math:`\sqrt{2\eta/\beta}\,\xi` and the stack replays; :func:`langevin_step` is the
    reference step (one generator, tested step by step against the engine) and
    :func:`langevin` its standalone loop.

(b) **The blob method** (Carrillo, Craig & Patacchini 2019 [CCP19], sec. 1): the
    entropy is regularized by a mollifier :math:`\varphi_\delta` (here the Gaussian density
    of variance :math:`\delta^2 I`),

    .. math::
        \mathrm{KL}_\delta(\mu\,|\,\pi) = \int V\,d\mu + \int \log(\varphi_\delta * \mu)\,d\mu,
        \qquad
        \frac{\delta\,\mathrm{KL}_\delta}{\delta\mu}(z) = V(z) + \log(\varphi_\delta*\mu)(z)
            + \Big(\varphi_\delta * \frac{\mu}{\varphi_\delta*\mu}\Big)(z),

    which has a value and a first variation on particles, so :class:`BlobKL` is a
    :class:`flowkit.FunctionalObjective` the engine runs today (deterministic particles).

Known answer (:func:`ou_moments`): for :math:`\pi = \mathcal N(m, \Sigma)` and a Gaussian
start the Fokker-Planck solution is Gaussian (the Ornstein-Uhlenbeck process) with
:math:`m_t = m + e^{-At}(m_0 - m)` and :math:`C_t = \Sigma + e^{-At}(C_0 - \Sigma)e^{-At}`,
:math:`A = \Sigma^{-1}` (from :math:`\dot m = -A(m_t - m)`, :math:`\dot C = -AC - CA + 2I`).
The moments depend only on the initial mean and covariance, so a sample's own empirical
moments can be plugged in.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from flowkit.backends import check_blocking
from flowkit.flows._common import Score, checked_score, resolve_score, uniform_or_checked_weights
from flowkit.kernels import (
    DEFAULT_MEMORY_BUDGET,
    Gaussian,
    kernel_grad_sum,
    kernel_sum,
)
from flowkit.layers import standard_normal
from flowkit.objective import FunctionalObjective
from flowkit.potential import Potential
from flowkit.validation import (
    as_generator,
    check_int,
    check_nonnegative,
    check_particles,
    check_positive,
)

__all__ = ["langevin_step", "langevin", "LangevinResult", "Langevin", "ScorePotential",
           "ou_moments", "ula_moments", "BlobPotential", "BlobKL"]


def langevin_step(x: Tensor, score: Tensor, step_size: float, generator: torch.Generator,
                  beta: float = 1.0) -> Tensor:
    r"""One ULA step :math:`x + \eta\, s + \sqrt{2\eta/\beta}\,\xi` given the score ``s`` at
    ``x``; ``xi`` is drawn from ``generator`` (on the device of ``x``) in float64 and
    rounded to the dtype of ``x`` (:func:`flowkit.layers.standard_normal`): float32 and
    float64 runs from one seed follow the same path."""
    xi = standard_normal(x, generator)
    return x + step_size * score + math.sqrt(2.0 * step_size / beta) * xi


@dataclass
class LangevinResult:
    """Outcome of :func:`langevin`: final particles, snapshots (every ``snapshot_every``)."""

    particles: Tensor
    n_steps: int
    wall_time: float
    snapshots: list[Tensor] = field(default_factory=list)


def langevin(x0: Tensor, step_size: float, n_steps: int, *, score: Score | None = None,
             log_density: Callable[[Tensor], Tensor] | None = None, beta: float = 1.0,
             seed: int | torch.Generator = 0, snapshot_every: int | None = None
             ) -> LangevinResult:
    r"""The unadjusted Langevin algorithm from ``x0`` (not modified).

    Parameters
    ----------
    x0 : Tensor
        Initial particles ``(N, *event)``.
    step_size : float
        :math:`\eta > 0`.
    n_steps : int
        Number of steps.
    score, log_density : callable
        The target's score ``x -> grad log pi(x)``, or its log-density (exactly one).
    beta : float
        Inverse temperature: noise :math:`\sqrt{2\eta/\beta}\,\xi`.
    seed : int or torch.Generator
        Source of the noise; an int seeds a new generator on ``x0``'s device.
    snapshot_every : int, optional
        Keep the particles every that many steps (and at step 0).

    Notes
    -----
    The reference loop, one generator for all steps. :class:`Langevin` under
    :class:`flowkit.FunctionalGradientDescent` takes the same steps with per-layer seeded
    noise (monitors, checkpoints, replayable layers).
    """
    check_particles(x0, "x0")
    eta = check_positive(step_size, "step_size")
    n_steps = check_int(n_steps, "n_steps", minimum=0)
    beta = check_positive(beta, "beta")
    if snapshot_every is not None:
        snapshot_every = check_int(snapshot_every, "snapshot_every")
    score_fn = resolve_score(score, log_density)
    gen = as_generator(seed, x0.device)
    t0 = time.perf_counter()
    x = x0.detach().clone()
    snaps = [x] if snapshot_every else []
    for k in range(n_steps):
        s = checked_score(score_fn, x) if k == 0 else score_fn(x)
        x = langevin_step(x, s.detach(), eta, gen, beta)
        if snapshot_every and (k + 1) % snapshot_every == 0:
            snaps.append(x)
    return LangevinResult(x, n_steps, time.perf_counter() - t0, snaps)


class ScorePotential(Potential):
    r""":math:`V = -\log\pi`: value from ``log_density`` (if given), gradient ``-score``."""

    def __init__(self, score: Score, log_density: Callable[[Tensor], Tensor] | None):
        super().__init__()
        self.score, self.log_density = score, log_density

    def forward(self, z: Tensor) -> Tensor:
        if self.log_density is None:
            raise NotImplementedError("V = -log pi needs log_density; this target was given "
                                      "by its score only")
        return -self.log_density(z)

    def grad(self, z: Tensor, *, create_graph: bool = False) -> Tensor:
        if create_graph:
            return super().grad(z, create_graph=True)
        return -self.score(z)


class Langevin(FunctionalObjective):
    r"""Unadjusted Langevin toward :math:`\pi` as an engine objective (noise layers).

    The first variation is :math:`V = -\log\pi` (the potential-energy part of
    :math:`\mathrm{KL}(\mu\,|\,\pi)`, whose entropy part the noise supplies) and
    ``temperature = beta``: each engine step is
    :math:`x - \eta\nabla V(x) + \sqrt{2\eta/\beta}\,\xi`, i.e. :func:`langevin_step`
    with the layer's seeded generator. It has no value (the KL of an empirical measure is
    not defined), so no descent property: the law of the particles, not the particles,
    follows the flow (:func:`ou_moments`, :func:`ula_moments`). Weights are accepted and do
    not change :math:`V`.

    Parameters
    ----------
    score, log_density : callable
        The target's score or log-density (exactly one needed; both allowed).
    beta : float
        Inverse temperature :math:`\beta > 0`.

    See Also
    --------
    flowkit.flows.BlobKL
        The deterministic (blob) flow of the same KL objective.
    flowkit.flows.SVGD
        A deterministic interacting-particle sampler.
    flowkit.objectives.NoisyMMDFlow
        Noise injection in an MMD flow.

    Examples
    --------
    >>> import torch, flowkit as fk, flowkit.flows
    >>> flow = fk.FunctionalGradientDescent(fk.flows.Langevin(score=lambda x: -x), 0.01,
    ...                                     progress=False, noise_seed=0)
    >>> len(flow.run(torch.randn(100, 1) + 2.0, 5).layers)
    5
    """

    def __init__(self, score: Score | None = None, *,
                 log_density: Callable[[Tensor], Tensor] | None = None, beta: float = 1.0):
        if log_density is not None and not callable(log_density):
            raise TypeError(f"log_density must be callable, got {type(log_density).__name__}")
        self.score = resolve_score(score, None if score is not None else log_density)
        self.log_density = log_density
        self.temperature = check_positive(beta, "beta")

    def validate(self, x: Tensor) -> None:
        check_particles(x, "x")
        checked_score(self.score, x.detach())  # once per run, not per step

    def first_variation(self, x: Tensor, weights: Tensor | None = None) -> ScorePotential:
        return ScorePotential(self.score, self.log_density)


def _check_gaussian(mean: Tensor, cov: Tensor, name: str) -> None:
    d = mean.shape[-1]
    if mean.dim() != 1 or cov.shape != (d, d):
        raise ValueError(f"{name}: mean must be (d,) and cov (d, d), got {tuple(mean.shape)} "
                         f"and {tuple(cov.shape)}")


def ou_moments(mean0: Tensor, cov0: Tensor, target_mean: Tensor, target_cov: Tensor,
               t: float) -> tuple[Tensor, Tensor]:
    r"""Mean and covariance at time ``t`` of the KL flow to :math:`\mathcal N(m, \Sigma)` from a
    start of mean ``mean0`` and covariance ``cov0`` (Ornstein-Uhlenbeck, closed form)."""
    _check_gaussian(mean0, cov0, "mean0/cov0")
    _check_gaussian(target_mean, target_cov, "target_mean/target_cov")
    t = check_nonnegative(t, "t")
    E = torch.linalg.matrix_exp(-t * torch.linalg.inv(target_cov))
    return target_mean + E @ (mean0 - target_mean), target_cov + E @ (cov0 - target_cov) @ E.T


def ula_moments(mean0: Tensor, cov0: Tensor, target_mean: Tensor, target_cov: Tensor,
                step_size: float, n_steps: int, beta: float = 1.0) -> tuple[Tensor, Tensor]:
    r"""Exact mean and covariance after ``n_steps`` of ULA on :math:`\mathcal N(m, \Sigma)`:
    :math:`m_{k+1} = m + B(m_k - m)`, :math:`C_{k+1} = B C_k B^\top + (2\eta/\beta) I`,
    :math:`B = I - \eta\Sigma^{-1}` (the scheme's own law; its bias against
    :func:`ou_moments` is :math:`O(\eta)`)."""
    _check_gaussian(mean0, cov0, "mean0/cov0")
    _check_gaussian(target_mean, target_cov, "target_mean/target_cov")
    eta = check_positive(step_size, "step_size")
    n_steps = check_int(n_steps, "n_steps", minimum=0)
    eye = torch.eye(len(mean0), dtype=cov0.dtype, device=cov0.device)
    B = eye - eta * torch.linalg.inv(target_cov)
    m, C = mean0, cov0
    for _ in range(n_steps):
        m, C = target_mean + B @ (m - target_mean), B @ C @ B.T + (2.0 * eta / beta) * eye
    return m, C


class BlobPotential(Potential):
    r""":math:`\psi(z) = V(z) + \log\rho(z) + \sum_j (w_j/\rho_j)\,\varphi_\delta(z - x_j)`,
    :math:`\rho = \varphi_\delta*\mu`, :math:`\rho_j = \rho(x_j)`, frozen at one step.

    ``V`` enters through ``log_density`` (for the value; ``None`` when only the score is
    known, then :meth:`forward` raises) and through ``score`` for the gradient.
    """

    def __init__(self, particles: Tensor, weights: Tensor, bandwidth: float, score: Score,
                 log_density: Callable[[Tensor], Tensor] | None, kw: dict):
        super().__init__()
        self.register_buffer("particles", particles.detach())
        self.register_buffer("weights", weights.detach())
        self.kernel = Gaussian(bandwidth)
        d = particles[0].numel()
        self.log_norm = -0.5 * d * math.log(2.0 * math.pi * bandwidth**2)
        self.score, self.log_density, self._kw = score, log_density, kw
        rho = kernel_sum(particles, particles, self.kernel, weights, **kw).detach()
        self.register_buffer("inv_rho_weights", weights.detach() / rho)

    def _tiny(self, t: Tensor) -> float:
        return torch.finfo(t.dtype).tiny

    def forward(self, z: Tensor) -> Tensor:
        if self.log_density is None:
            raise NotImplementedError("the blob potential's value needs V = -log pi: build "
                                      "BlobKL with log_density")
        x, kw = self.particles, self._kw
        k_rho = kernel_sum(z, x, self.kernel, self.weights, **kw)
        k_inv = kernel_sum(z, x, self.kernel, self.inv_rho_weights, **kw)
        # the normalization 1/rho_j absorbs phi's constant: phi * (mu / rho) is unitless
        return (-self.log_density(z) + torch.log(k_rho.clamp_min(self._tiny(z)))
                + self.log_norm + k_inv)

    def grad(self, z: Tensor, *, create_graph: bool = False) -> Tensor:
        if create_graph:
            return super().grad(z, create_graph=True)
        x, kw = self.particles, self._kw
        k_rho = kernel_sum(z, x, self.kernel, self.weights, **kw)
        g_rho = kernel_grad_sum(z, x, self.kernel, self.weights, **kw)
        g_inv = kernel_grad_sum(z, x, self.kernel, self.inv_rho_weights, **kw)
        # far from every particle rho underflows; the entropy pull is then 0, not 0/0
        return -self.score(z) + g_rho / k_rho.clamp_min(self._tiny(z)).unsqueeze(-1) + g_inv


class BlobKL(FunctionalObjective):
    r""":math:`\mathrm{KL}_\delta(\mu\,|\,\pi)`, the blob-regularized KL ([CCP19]).

    Parameters
    ----------
    log_density : callable, optional
        ``x -> log pi(x)`` up to a constant (the value is then KL up to that constant).
    score : callable, optional
        ``x -> grad log pi(x)``; give it instead of (or with) ``log_density`` when known in
        closed form. With ``score`` alone the flow runs but has no value.
    bandwidth : float
        :math:`\delta`, the mollifier's standard deviation. [CCP19]'s convergence needs it
        to shrink more slowly than the particle spacing; too small and the entropy sees single
        particles, too large and it sees :math:`\mu*\varphi_\delta` (a covariance bias of
        order :math:`\delta^2`).

    See Also
    --------
    flowkit.flows.Langevin
        The stochastic flow of the same KL objective.
    flowkit.flows.SVGD
        A kernelized velocity field toward the same density.

    Examples
    --------
    >>> import torch, flowkit as fk, flowkit.flows
    >>> obj = fk.flows.BlobKL(log_density=lambda x: -0.5 * (x**2).sum(1), bandwidth=0.3)
    >>> flow = fk.FunctionalGradientDescent(obj, 0.05, progress=False)
    >>> flow.run(torch.randn(100, 1) + 2.0, 5).particles.shape
    torch.Size([100, 1])
    """

    def __init__(self, log_density: Callable[[Tensor], Tensor] | None = None, *,
                 score: Score | None = None, bandwidth: float = 0.3,
                 block_size: int | None = None, memory_budget: int = DEFAULT_MEMORY_BUDGET):
        if log_density is None and score is None:
            raise ValueError("give log_density (x -> log pi(x)) or score (x -> grad log pi(x))")
        if log_density is not None and not callable(log_density):
            raise TypeError(f"log_density must be callable, got {type(log_density).__name__}")
        self.log_density = log_density
        self.score = resolve_score(score, None) if score is not None else \
            resolve_score(None, log_density)
        self.bandwidth = check_positive(bandwidth, "bandwidth")
        check_blocking(block_size, memory_budget)
        self._kw = {"block_size": block_size, "memory_budget": memory_budget}

    def first_variation(self, x: Tensor, weights: Tensor | None = None) -> BlobPotential:
        w = uniform_or_checked_weights(weights, x)
        return BlobPotential(x, w, self.bandwidth, self.score, self.log_density, self._kw)

    def value(self, x: Tensor, weights: Tensor | None = None) -> Tensor:
        if self.log_density is None:
            raise NotImplementedError("BlobKL has no value without log_density")
        w = uniform_or_checked_weights(weights, x)
        rho = kernel_sum(x, x, Gaussian(self.bandwidth), w, **self._kw)
        d = x[0].numel()
        log_norm = -0.5 * d * math.log(2.0 * math.pi * self.bandwidth**2)
        return (w * (torch.log(rho) + log_norm - self.log_density(x))).sum()
