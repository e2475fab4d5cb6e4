"""What every trainable critic carries between fits: a network, its Adam state and an RNG.

Algorithm 1 warm-starts the critic at each outer step (Nitanda & Suzuki 2018, sec. 3.1), so
this state *is* the critic's history. Saving and restoring it exactly is what lets a
checkpointed run resume bit for bit.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from flowkit.validation import (
    as_generator,
    check_compatible,
    check_int,
    check_particles,
    check_positive,
    check_seed,
)

__all__ = ["CriticTrainingState", "Batches", "make_adam", "check_betas"]

#: A critic trains on a fixed pool of particles, or on fresh batches ``k0 -> (b, *event)``.
Batches = Tensor | Callable[[int], Tensor]


def _fresh_batch(sampler: Callable[[int], Tensor], k0: int, real: Tensor) -> Tensor:
    fake = sampler(k0)
    if not isinstance(fake, Tensor) or fake.shape[1:] != real.shape[1:] or fake.shape[0] == 0:
        got = tuple(fake.shape) if isinstance(fake, Tensor) else type(fake).__name__
        raise ValueError(f"particles({k0}) must return a batch (b, {tuple(real.shape[1:])}), "
                         f"got {got}")
    return fake.detach()


class CriticTrainingState:
    """Mixin for critics with a trained module, an ``optimizer`` and a seeded generator.

    Subclasses set ``_module_key`` (the attribute holding the trained ``nn.Module``) and
    ``self.optimizer``, ``self._seed``, ``self._generator``, ``self.total_steps``,
    ``self.n_fits``, ``self.batch_size``, ``self.steps``, and the loss of one step,
    ``_loss(real, fake, generator)``; they may add entries with :meth:`_extra_state`.
    """

    _module_key = "net"
    #: Set by :class:`flowkit.distributed.DDPCritic`: ``(fake, real, points) -> (module,
    #: rows, factor)``, this rank's rows of a minibatch whose randomness every rank drew
    #: alike, the DDP-wrapped module, and the factor that makes DDP's gradient average the
    #: global batch mean. ``None``: one process, the whole batch.
    data_parallel: Any = None

    def _configure_training(self, *, lr: float, betas: Sequence[float], batch_size: int,
                            steps: int, seed: int | torch.Generator,
                            perturbation: float | None, min_batch: int = 1) -> None:
        """Check and store the optimiser, batch and seed settings; reset the counters."""
        self.lr = check_positive(lr, "lr")
        self.betas = check_betas(betas)
        self.batch_size = check_int(batch_size, "batch_size", min_batch)
        self.steps = check_int(steps, "steps", 0)
        if perturbation is not None:
            check_positive(perturbation, "perturbation")
        self.perturbation = perturbation
        self._seed = check_seed(seed)
        self._generator: torch.Generator | None = seed if isinstance(seed, torch.Generator) \
            else None
        self.last_losses: Tensor | None = None
        self.total_steps = 0
        self.n_fits = 0

    def _init_stream(self) -> torch.Generator:
        """The CPU generator that initialises a default network, derived from the seed."""
        seed = self._seed
        return as_generator(seed, "cpu") if isinstance(seed, int) else _cpu_child(seed)

    def _attach(self, module: nn.Module) -> None:
        """Install the trained module and its Adam optimiser."""
        setattr(self, self._module_key, module)
        self.optimizer = make_adam(module.parameters(), self.lr, self.betas)

    def _trained(self) -> nn.Module:
        return getattr(self, self._module_key)

    def _ready(self, data: Tensor) -> torch.Generator:
        # Follow the data's device and dtype; done once per fit, never inside the step loop.
        module = self._trained()
        p = next(module.parameters(), None)
        if p is not None and (p.device != data.device or p.dtype != data.dtype):
            module.to(device=data.device, dtype=data.dtype)
            # re-loading casts Adam's moment buffers onto the parameters' device and dtype
            self.optimizer.load_state_dict(self.optimizer.state_dict())
        if self._generator is None:
            self._generator = as_generator(self._seed, data.device)
        elif self._generator.device.type != data.device.type:
            raise ValueError(f"seed is a generator on {self._generator.device} but data is on "
                             f"{data.device}; pass a generator on the data's device or an int")
        return self._generator

    def train(self, particles: Batches, data: Tensor, steps: int | None = None, *,
              check: bool = True) -> Tensor:
        """The inner loop of Algorithm 1 without a snapshot; the per-step losses ``(steps,)``.

        Each step draws ``batch_size`` data points and ``batch_size`` particles (from the
        pool, or one fresh batch ``particles(k0)``) and takes one optimizer step on
        :meth:`_loss`. Parameter-space trainers (:class:`flowkit.generators.WGANGP`) that
        interleave critic and generator steps validate ``data`` once and pass
        ``check=False``, since the finiteness check synchronises with the device.
        """
        steps = self.steps if steps is None else check_int(steps, "steps", 0)
        if check:
            check_particles(data, "data")
        if isinstance(particles, Tensor):
            if check:
                check_particles(particles, "particles")
                check_compatible(particles, data, "particles", "data")
            pool: Tensor | None = particles.detach()
        elif callable(particles):
            pool = None
        else:
            raise TypeError("particles must be a tensor (N, *event) or a callable k0 -> batch, "
                            f"got {type(particles).__name__}")
        g = self._ready(data)
        module, opt, b = self._trained(), self.optimizer, self.batch_size
        module.train()
        module.requires_grad_(True)
        losses = torch.zeros(steps, device=data.device, dtype=data.dtype)
        fresh: list[Tensor] = []
        for k0 in range(steps):
            real = data[torch.randint(len(data), (b,), generator=g, device=data.device)]
            if pool is not None:
                fake = pool[torch.randint(len(pool), (b,), generator=g, device=pool.device)]
            else:
                fake = _fresh_batch(particles, k0, real)
                fresh = [*fresh[-3:], fake]
            loss = self._loss(real, fake, g)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses[k0] = loss.detach()  # stays on the device: no per-step synchronisation
        self._after_train(fresh)
        self.total_steps += steps
        self.last_losses = losses
        return losses

    def _loss(self, real: Tensor, fake: Tensor, g: torch.Generator) -> Tensor:
        raise NotImplementedError

    def _after_train(self, fresh: list[Tensor]) -> None:
        """Called with the last (up to four) fresh batches of a :meth:`train` call."""

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`_extra_state` added (default: nothing)."""

    def state_dict(self) -> dict[str, Any]:
        """Weights, Adam state and RNG state: enough to continue training bit-identically."""
        gen = self._generator
        return {
            self._module_key: copy.deepcopy(self._trained().state_dict()),
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "rng": None if gen is None else gen.get_state(),
            "rng_device": None if gen is None else str(gen.device),
            "total_steps": self.total_steps,
            "n_fits": self.n_fits,
            **self._extra_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        missing = {self._module_key, "optimizer", "rng", "total_steps", "n_fits"} - set(state)
        if missing:
            raise ValueError(f"state is missing keys {sorted(missing)}")
        module, weights = self._trained(), state[self._module_key]
        saved = next((t for t in weights.values() if t.is_floating_point()), None)
        p = next(module.parameters(), None)
        if saved is not None and p is not None and p.dtype != saved.dtype:
            # a network that had followed float64 data: loading its weights into the
            # fresh float32 one first would round them
            module.to(dtype=saved.dtype)
        module.load_state_dict(weights)
        self.optimizer.load_state_dict(state["optimizer"])
        if state["rng"] is not None:
            if self._generator is None:
                self._generator = torch.Generator(device=state["rng_device"])
            self._generator.set_state(state["rng"])
        self.total_steps = int(state["total_steps"])
        self.n_fits = int(state["n_fits"])
        self._load_extra_state(state)


def make_adam(params: Iterable[Tensor], lr: float, betas: tuple[float, float]
              ) -> torch.optim.Adam:
    """Adam, fused into one kernel where torch supports it for these parameters.

    The per-parameter Python loop of the default implementation is about a fifth of a small
    critic's step on CPU; the fused kernel computes the same update.
    """
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, betas=betas, fused=True)
    except (RuntimeError, ValueError, TypeError):  # device or dtype without a fused kernel
        return torch.optim.Adam(params, lr=lr, betas=betas)


def check_betas(betas: Sequence[float]) -> tuple[float, float]:
    try:
        b1, b2 = (float(b) for b in betas)
    except (TypeError, ValueError):
        raise TypeError(f"betas must be a pair of floats, got {betas!r}") from None
    if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
        raise ValueError(f"betas must lie in [0, 1), got {betas!r}")
    return b1, b2


def _cpu_child(gen: torch.Generator) -> torch.Generator:
    # Default networks are built on the CPU; derive their init stream from the caller's generator.
    seed = int(torch.randint(0, 2**62, (1,), generator=gen, device=gen.device))
    return torch.Generator().manual_seed(seed)
