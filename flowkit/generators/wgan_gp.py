r"""WGAN-GP in parameter space: the baseline that Algorithm 1 is compared with.

Gulrajani et al. (2017), Algorithm 1, as reviewed by Nitanda & Suzuki (2018, sec. 2):
alternate ``n_critic`` critic steps on

.. math:: \frac1b\sum_i f_\tau(g_\theta(z_i)) - f_\tau(x_i) + \lambda R_{f_\tau}(\tilde x_i)

with one generator step on :math:`-\frac1b\sum_i f_\tau(g_\theta(z_i))`, whose gradient is
:math:`-\mathbb E[\nabla_\theta g_\theta(z)^\top \nabla_x f_\tau(g_\theta(z))]` (the
envelope-theorem gradient of sec. 2). The critic is the same :class:`WGANGPCritic` that
Algorithm 1 fits, so both methods can be compared at equal numbers of critic steps.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from flowkit._compat import MISSING, LegacyMapping, renamed_keyword
from flowkit.critics.training import check_betas, make_adam
from flowkit.critics.wgan_gp import WGANGPCritic, critic_values
from flowkit.descent import FlowDivergedError
from flowkit.monitors import Monitor
from flowkit.nn import MLP
from flowkit.validation import (
    as_generator,
    check_int,
    check_number,
    check_particles,
    check_positive,
)

__all__ = ["WGANGP", "WGANGPResult"]


class _MLPGenerator(nn.Module):
    """Latent ``(B, h)`` -> event ``(B, *event)``: an MLP, reshaped, then the output map."""

    def __init__(self, body: nn.Module, event_shape: tuple[int, ...],
                 output_map: Callable[[Tensor], Tensor] | None):
        super().__init__()
        self.body = body
        self.event_shape = event_shape
        self.output_map = output_map

    def forward(self, z: Tensor) -> Tensor:
        x = self.body(z).reshape(z.shape[0], *self.event_shape)
        return x if self.output_map is None else self.output_map(x)


class WGANGP:
    r"""A WGAN-GP trainer with a parametric generator (Gulrajani et al. 2017).

    Parameters
    ----------
    data : Tensor
        Training data ``(M, *event)``.
    critic : WGANGPCritic, optional
        Default: a ``WGANGPCritic`` with ``hidden``, ``depth``, ``penalty``, ``penalty_weight``
        (``lam=`` is a deprecated alias), ``lr``,
        ``betas``, ``batch_size`` of this trainer, seeded from ``seed``.
    generator : nn.Module, optional
        Latent ``(B, latent_dim) -> (B, *event)``, trained in place. Default: an
        :class:`flowkit.nn.MLP` with ``depth`` layers of width ``hidden``, followed by
        ``output_map``.
    latent_dim : int
        Dimension of the latent noise :math:`z \sim \mathcal N(0, \text{noise\_std}^2 I)`.
    n_critic : int
        Critic steps per generator step (5 in WGAN-GP).
    lr, betas : float, (float, float)
        Adam for the generator (the critic's own settings apply to the critic).
    batch_size : int
        Generator minibatch size.
    output_map : callable, optional
        Output non-linearity of the default generator (``torch.tanh``).
    seed : int or torch.Generator
        Source of all randomness (initial weights, latents, critic minibatches).

    Examples
    --------
    >>> import torch, flowkit as fk
    >>> data = 0.5 * torch.randn(200, 2)
    >>> gan = fk.generators.WGANGP(data, hidden=32, seed=0)
    >>> result = gan.train(4)
    >>> result.critic_steps, gan.generator_steps, gan.sample(7).shape
    ([0, 20], 4, torch.Size([7, 2]))
    """

    def __init__(self, data: Tensor, critic: WGANGPCritic | None = None,
                 generator: nn.Module | None = None, *, latent_dim: int = 2, hidden: int = 128,
                 depth: int = 4, n_critic: int = 5, lr: float = 1e-4,
                 betas: tuple[float, float] = (0.5, 0.9), batch_size: int = 50,
                 noise_std: float = 0.5, output_map: Callable[[Tensor], Tensor] | None = torch.tanh,
                 penalty: str = "one-sided", penalty_weight: float = MISSING,
                 seed: int | torch.Generator = 0, lam: float = MISSING):
        self.data = check_particles(data, "data")
        self.latent_dim = check_int(latent_dim, "latent_dim")
        self.n_critic = check_int(n_critic, "n_critic")
        self.batch_size = check_int(batch_size, "batch_size")
        self.noise_std = check_positive(noise_std, "noise_std")
        if output_map is not None and not callable(output_map):
            raise TypeError(f"output_map must be callable, got {type(output_map).__name__}")
        self._rng = as_generator(seed, data.device)
        event = tuple(data.shape[1:])
        if critic is None:
            if penalty_weight is MISSING and lam is MISSING:
                penalty_weight = 10.0
            weight, name = renamed_keyword(penalty_weight, lam, "penalty_weight", "lam", "WGANGP")
            check_number(weight, name, minimum=0.0)
            critic = WGANGPCritic(math.prod(event), hidden, depth, penalty, weight, lr, betas,
                                  batch_size, n_critic, seed=self._child_seed())
        elif not isinstance(critic, WGANGPCritic):
            raise TypeError(f"critic must be a WGANGPCritic, got {type(critic).__name__}")
        critic.check_data(data)
        self.critic = critic
        if generator is None:
            init = torch.Generator().manual_seed(self._child_seed())
            body = MLP(latent_dim, math.prod(event), hidden, depth, generator=init)
            generator = _MLPGenerator(body, event, output_map)
        elif not isinstance(generator, nn.Module):
            raise TypeError(f"generator must be a torch.nn.Module, got {type(generator).__name__}")
        self.generator = generator.to(device=data.device, dtype=data.dtype)
        self.optimizer = make_adam(self.generator.parameters(), check_positive(lr, "lr"),
                                   check_betas(betas))
        self.generator_steps = 0
        self._losses: list[Tensor] = []  # generator losses since the last check, on device

    def _child_seed(self) -> int:
        return int(torch.randint(0, 2**62, (1,), generator=self._rng, device=self._rng.device))

    @property
    def critic_steps(self) -> int:
        """Critic (Adam) steps taken so far: the x-axis of the comparison with Algorithm 1."""
        return self.critic.total_steps

    def latents(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` latent draws from :math:`\\mathcal N(0, \\text{noise\\_std}^2 I)`."""
        g = self._rng if generator is None else generator
        return self.noise_std * torch.randn(n, self.latent_dim, generator=g,
                                            device=self.data.device, dtype=self.data.dtype)

    def sample(self, n: int | Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Generated samples: ``n`` fresh ones, or the generator applied to given latents."""
        if isinstance(n, Tensor):
            z = self._check_latents(n, "n (latents)")
        else:
            z = self.latents(check_int(n, "n"), generator)
        with torch.no_grad():
            return self._generate(z)

    def _check_latents(self, z: Tensor, name: str) -> Tensor:
        check_particles(z, name)
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"{name} must have shape (B, latent_dim={self.latent_dim}), got "
                             f"{tuple(z.shape)}")
        return z

    def _generate(self, z: Tensor) -> Tensor:
        x = self.generator(z)
        if not isinstance(x, Tensor) or x.shape != (len(z), *self.data.shape[1:]):
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"generator maps latents {tuple(z.shape)} to {got}, but data needs "
                             f"(B, *event) = {(len(z), *self.data.shape[1:])}")
        return x

    def _fake_batch(self, k0: int) -> Tensor:
        return self.sample(self.critic.batch_size)

    def _raise_if_diverged(self, samples: Tensor | None = None) -> None:
        # one synchronisation per monitored step: the losses wait on the device until then
        if self._losses:
            ok = torch.isfinite(torch.stack(self._losses)).tolist()
            first = self.generator_steps - len(ok) + 1 + ok.index(False) if not all(ok) \
                else None
            self._losses = []
            if first is not None:
                raise FlowDivergedError(first, "WGAN-GP training diverged: the generator loss "
                                        f"became non-finite (NaN or inf) at generator step "
                                        f"{first}; lower lr or check the data")
        if samples is not None and not bool(torch.isfinite(samples).all()):
            raise FlowDivergedError(self.generator_steps, "WGAN-GP training diverged: the "
                                    "generated samples are non-finite (NaN or inf) at "
                                    f"generator step {self.generator_steps}")

    def step(self) -> None:
        """One WGAN-GP iteration: ``n_critic`` critic steps, then one generator step."""
        self.critic.train(self._fake_batch, self.data, self.n_critic, check=False)
        x = self._generate(self.latents(self.batch_size))
        loss = -critic_values(self.critic.net, x).mean()
        self._losses.append(loss.detach())
        self.optimizer.zero_grad(set_to_none=True)
        # only the generator's gradients: the critic's are reset at its next step anyway
        loss.backward(inputs=list(self.generator.parameters()))
        self.optimizer.step()
        self.generator_steps += 1

    def train(self, generator_steps: int, *, monitors: Sequence[Monitor] = (),
              monitor_every: int = 10, eval_latents: Tensor | None = None,
              progress: bool = False) -> WGANGPResult:
        """Run ``generator_steps`` iterations; monitor generated samples along the way.

        Parameters
        ----------
        generator_steps : int
            Iterations, each ``n_critic`` critic steps and one generator step.
        monitors : sequence of callables
            ``samples -> {name: value}`` (e.g. :class:`flowkit.monitors.W2`), evaluated on
            ``sample(eval_latents)`` at the start, every ``monitor_every`` iterations and at
            the end.
        eval_latents : Tensor, optional
            Fixed latents for the monitors (default: 500 drawn once from the seed).

        Returns
        -------
        WGANGPResult
            Steps, critic steps, elapsed seconds and monitored values at each monitored
            iteration. Training stops with :class:`flowkit.FlowDivergedError` at the first
            monitored iteration after the generator loss or samples became non-finite.
        """
        from tqdm.auto import tqdm

        check_int(generator_steps, "generator_steps", 0)
        check_int(monitor_every, "monitor_every")
        if eval_latents is None and monitors:
            eval_latents = self.latents(500)
        elif eval_latents is not None:
            self._check_latents(eval_latents, "eval_latents")
        result = WGANGPResult()
        start = time.perf_counter()

        def record() -> None:
            samples = self.sample(eval_latents) if monitors else None
            self._raise_if_diverged(samples)  # synchronises: the elapsed time is honest
            result.generator_steps.append(self.generator_steps)
            result.critic_steps.append(self.critic_steps)
            result.elapsed.append(time.perf_counter() - start)
            for monitor in monitors:
                for name, value in monitor(samples).items():
                    # a quantity that appears late is padded, so every list aligns with steps
                    result.metrics.setdefault(
                        name, [None] * (len(result.generator_steps) - 1)).append(value)

        record()
        for i in tqdm(range(1, generator_steps + 1), disable=not progress, desc="wgan-gp",
                      leave=False):
            self.step()
            if i % monitor_every == 0 or i == generator_steps:
                record()
        result.wall_time = time.perf_counter() - start
        return result


@dataclass(eq=False)
class WGANGPResult(LegacyMapping):
    """What :meth:`WGANGP.train` measured, one entry per monitored iteration.

    Attributes
    ----------
    generator_steps, critic_steps : list of int
        Generator and critic (Adam) steps taken at each monitored iteration.
    elapsed : list of float
        Seconds since :meth:`WGANGP.train` started, at each monitored iteration (measured
        after the divergence check, which waits for the device).
    metrics : dict of str to list
        One list per monitored quantity (e.g. ``"W2"``, ``"W2_method"``).
    wall_time : float
        Seconds of the whole call.

    ``result["W2"]``, the dictionary this method returned before, still works for one
    release (deprecated); :meth:`as_dict` gives that dictionary.
    """

    generator_steps: list[int] = field(default_factory=list)
    critic_steps: list[int] = field(default_factory=list)
    elapsed: list[float] = field(default_factory=list)
    metrics: dict[str, list[Any]] = field(default_factory=dict)
    wall_time: float = 0.0

    def as_dict(self) -> dict[str, list[Any]]:
        """``{"generator_steps": ..., "critic_steps": ..., **metrics}``."""
        return {"generator_steps": self.generator_steps, "critic_steps": self.critic_steps,
                **self.metrics}
