r"""MMD gradient flow with noise injection (Arbel, Korba, Salim & Gretton 2019, sec. 4).

The plain Euler scheme of the MMD flow can stall in a configuration where the witness'
gradient vanishes at every particle although the measures differ. Arbel et al. evaluate
the witness gradient at *noisy* positions (their noise-injection scheme, sec. 4
[ArbelKorbaSalimGretton19]):

.. math::
    X_{n+1}^i = X_n^i - \gamma\, \nabla f_{\mu, \nu_n}\big(X_n^i + \beta_n U_n^i\big),
    \qquad U_n^i \sim \mathcal N(0, I),

with :math:`F = \frac12\mathrm{MMD}^2` and witness
:math:`f_{\mu,\nu}(z) = \int k(x, z)\,d\nu(x) - \int k(x,z)\,d\mu(x)`. Under
:math:`8\lambda^2\beta_n^2 F(\nu_n) \le D_{\beta_n}(\nu_n)` each step decreases ``F``, and
with :math:`\sum_n \beta_n^2 = \infty` it converges to the global minimum (ibid., the
noise-injection proposition).

flowkit's :class:`NoisyMMDFlow` is an objective wrapper, so the unchanged engine runs it:
its first variation is the MMD witness (:class:`flowkit.objectives.KernelWitness`, which
is :math:`2 f_{\mu,\nu}` because the objective is :math:`\mathrm{MMD}^2 = 2F`), and the
potential it returns evaluates the gradient at ``z + beta_k u``. Hence a flowkit step
``eta`` is Arbel's :math:`\gamma = 2\eta`. The noise comes from a seeded generator whose
state is part of the objective's ``state_dict``, so a checkpointed run resumes exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from flowkit.geometry import DEFAULT_MEMORY_BUDGET, PointCloud
from flowkit.kernels import Kernel
from flowkit.objectives.mmd import MMD, KernelWitness
from flowkit.potential import Potential
from flowkit.validation import (
    as_generator,
    check_int,
    check_number,
    check_particles,
    check_seed,
)

__all__ = ["NoisyMMDFlow", "NoisyPotential", "arbel_schedule"]


def arbel_schedule(level: float = 10.0, until: int = 5000) -> Callable[[int], float]:
    r"""The schedule of Arbel et al.'s Gaussian experiment: :math:`\beta_n = ` ``level`` for
    ``n < until``, then 0 (their Gaussian experiment [ArbelKorbaSalimGretton19])."""
    return _Constant(check_number(level, "level", minimum=0.0), check_int(until, "until", 0))


class _Constant:
    # a class, not a closure, so that objectives holding it pickle into checkpoints
    def __init__(self, level: float, until: int | None):
        self.level, self.until = level, until

    def __call__(self, k: int) -> float:
        return self.level if self.until is None or k < self.until else 0.0


class NoisyPotential(Potential):
    r"""A potential whose gradient is taken at noisy points: ``grad(z) = grad psi(z + beta u)``.

    ``forward`` is the clean potential (the noise only moves where the gradient is read,
    as in Arbel et al.'s scheme). Each :meth:`grad` call draws fresh ``u ~ N(0, I)`` from
    ``generator``; with ``beta = 0`` it is the clean gradient and draws nothing.
    """

    def __init__(self, base: Potential, beta: float, generator: torch.Generator):
        super().__init__()
        self.base = base
        self.beta = float(beta)
        self.generator = generator
        self.lipschitz_grad = base.lipschitz_grad

    def forward(self, z: Tensor) -> Tensor:
        return self.base(z)

    def grad(self, z: Tensor, *, create_graph: bool = False) -> Tensor:
        check_particles(z, "z", finite=False)  # before the noise is drawn (the base checks more)
        if self.beta == 0.0:
            return self.base.grad(z, create_graph=create_graph)
        u = torch.randn(z.shape, generator=self.generator, device=z.device, dtype=z.dtype)
        return self.base.grad(z + self.beta * u, create_graph=create_graph)


class NoisyMMDFlow(MMD):
    r"""Squared MMD whose flow reads the witness gradient at noise-injected points.

    Parameters
    ----------
    target : Tensor
        Target sample ``(M, *event)`` (Arbel et al.'s :math:`\mu`).
    kernel : Kernel, default ``Gaussian(1.0)``
        Any radial kernel.
    noise_level : float or callable
        :math:`\beta_n`: a constant, or a schedule ``k -> beta_k`` (e.g.
        :func:`arbel_schedule`, or ``lambda k: b0 / (k + 1) ** 0.5`` for
        :math:`\sum\beta_n^2 = \infty`).
    seed : int or torch.Generator
        Source of the noise; the generator lives on the particles' device (created at the
        first step from an int seed).
    target_weights, block_size, memory_budget, backend
        As in :class:`MMD` (so is a :class:`~flowkit.geometry.PointCloud` as ``target``).

    See Also
    --------
    flowkit.objectives.MMD
        The flow without noise.
    flowkit.flows.Langevin
        Noise layers toward a density instead of a sample.

    Notes
    -----
    The value, minimum and smoothness are those of :class:`MMD`; only the direction is
    perturbed. Step ``k`` is counted by :meth:`after_step`, so the schedule follows the
    engine's steps and is restored from a checkpoint.

    Examples
    --------
    >>> import torch, flowkit as fk
    >>> mu = torch.randn(100, 1, dtype=torch.float64)
    >>> obj = fk.objectives.NoisyMMDFlow(mu, fk.kernels.Gaussian(2.0), noise_level=1.0, seed=0)
    >>> flow = fk.FunctionalGradientDescent(obj, step_size=0.05, progress=False)
    >>> flow.run(10.0 + 0.5 * torch.randn(100, 1, dtype=torch.float64), 5).n_steps
    5
    """

    def __init__(self, target: Tensor | PointCloud, kernel: Kernel | None = None, *,
                 noise_level: float | Callable[[int], float] = 1.0,
                 seed: int | torch.Generator = 0, target_weights: Tensor | None = None,
                 block_size: int | None = None,
                 memory_budget: int = DEFAULT_MEMORY_BUDGET, backend: str = "auto"):
        super().__init__(target, kernel, target_weights=target_weights, block_size=block_size,
                         memory_budget=memory_budget, backend=backend)
        if callable(noise_level):
            self.schedule = noise_level
        else:  # a constant beta >= 0 (a number; schedules are callables)
            self.schedule = _Constant(check_number(noise_level, "noise_level", minimum=0.0),
                                      None)
        self._seed = check_seed(seed)
        self.generator: torch.Generator | None = seed if isinstance(seed, torch.Generator) \
            else None
        self.step = 0

    def noise(self, k: int) -> float:
        """:math:`\\beta_k`, checked."""
        beta = float(self.schedule(k))
        if not beta >= 0:
            raise ValueError(f"noise_level schedule gave beta={beta} at step {k}; need >= 0")
        return beta

    def functional_gradient(self, x: Tensor, weights: Tensor | None = None) -> Tensor:
        self._check(x, weights)
        return self._noisy(x, weights).grad(x)

    def first_variation(self, x: Tensor, weights: Tensor | None = None) -> NoisyPotential:
        self._check(x, weights, finite=False)
        return self._noisy(x, weights)

    def _noisy(self, x: Tensor, weights: Tensor | None) -> NoisyPotential:
        if self.generator is None:
            self.generator = as_generator(self._seed, x.device)
        witness: KernelWitness = self._witness(x, weights)
        return NoisyPotential(witness, self.noise(self.step), self.generator)

    def after_step(self, layer: Any) -> None:
        self.step += 1

    def state_dict(self) -> dict[str, Any]:
        gen = self.generator
        return {"step": self.step, "rng": None if gen is None else gen.get_state(),
                "rng_device": None if gen is None else str(gen.device)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = {"step", "rng", "rng_device"} - set(state)
        if missing:
            raise ValueError(f"state is missing keys {sorted(missing)}")
        self.step = int(state["step"])
        if state["rng"] is not None:
            if self.generator is None:
                self.generator = torch.Generator(device=state["rng_device"])
            self.generator.set_state(state["rng"])
