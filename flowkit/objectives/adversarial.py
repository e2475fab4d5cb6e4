r"""Algorithm 1 of Nitanda & Suzuki (2018): a critic refitted at every step of Algorithm 3.

The objective is the penalised WGAN loss of the particles' measure :math:`\mu = \phi\sharp\mu_g`,

.. math::
    \mathcal L(\phi) = \max_\tau \; \mathbb E_{x\sim\mu_D} f_\tau(x)
        - \mathbb E_{z\sim\mu_g} f_\tau(\phi(z)) - \lambda R_{f_\tau},

whose functional gradient is :math:`\nabla_\phi\mathcal L(\phi) = -\nabla_x f^*_\phi\circ\phi`
(sec. 4), i.e. first variation :math:`\psi = -f^*`. :class:`AdversarialObjective`
approximates :math:`f^*` by the warm-started critic of Algorithm 1's inner loop, so the
core engine running it *is* Algorithm 1:

.. code-block:: text

    for k = 0..T-1:                              # FunctionalGradientDescent.run
        psi_k = -fit(critic, T_0 steps)          # first_variation (this module)
        stack G_k = id - eta grad psi_k          # engine; after_step records it

and Algorithm 2 is the returned stack applied to fresh base samples.

Two ways to draw the generated minibatches :math:`\{z_i\}` of the inner loop:

``mode="paper"``
    Algorithm 1 as printed: every critic step uses fresh base samples pushed through all
    :math:`k` layers so far, :math:`O(T^2 T_0 b)` sample-layer evaluations in total. The
    :math:`k` layers are frozen while the critic trains, so the :math:`T_0 b` fresh samples
    of an outer step are drawn and pushed together (same distribution, one batched pass
    instead of :math:`T_0` small ones).
``mode="pool"`` (default)
    A fixed pool of particles (the engine's particles) is pushed once per layer, as the
    engine already does; the critic draws its minibatches i.i.d. from the pool's empirical
    measure: :math:`O(T N)` evaluations.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from flowkit.checkpoints import atomic_write
from flowkit.insertion import PulledBackPotential
from flowkit.layers import GradientLayer, GradientLayerStack, VelocityLayer
from flowkit.objective import FunctionalObjective
from flowkit.potential import Potential
from flowkit.serialization import safe_load
from flowkit.validation import (
    as_generator,
    check_compatible,
    check_int,
    check_particles,
    check_seed,
)

__all__ = ["AdversarialObjective", "Critic", "LayerHistory", "gaussian_base"]

BaseSampler = Callable[[int, torch.Generator], Tensor]


@runtime_checkable
class Critic(Protocol):
    """What :class:`AdversarialObjective` needs from a critic (e.g. ``WGANGPCritic``).

    ``fit`` accepts a pool tensor or a callable ``k0 -> batch`` (fresh samples per step);
    ``batch_size`` and ``steps`` (:math:`T_0`) size the fresh samples of ``mode="paper"``.
    """

    batch_size: int
    steps: int

    def fit(self, particles: Any, data: Tensor, steps: int | None = None) -> Potential: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def gaussian_base(std: float = 0.5, shape: tuple[int, ...] = (2,), *,
                  dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
                  ) -> BaseSampler:
    r"""A base sampler ``(n, generator) -> n`` draws of :math:`\mathcal N(0, \mathrm{std}^2 I)`.

    The paper's toy base measure is ``gaussian_base(0.5)`` (sec. 7).
    """
    return _GaussianBase(float(std), tuple(shape), dtype, torch.device(device))


class _GaussianBase:
    # A class rather than a closure so that objectives holding it can be pickled.
    def __init__(self, std: float, shape: tuple[int, ...], dtype: torch.dtype,
                 device: torch.device):
        self.std, self.shape, self.dtype, self.device = std, shape, dtype, device

    def __call__(self, n: int, generator: torch.Generator) -> Tensor:
        return self.std * torch.randn((n, *self.shape), generator=generator, dtype=self.dtype,
                                      device=self.device)


class LayerHistory(nn.Module):
    """Gradient layers kept on disk, one file per layer: Algorithm 2 in O(one layer) memory.

    The stack of a long run needs memory O(T * critic size); with a history the engine can
    run with ``keep_layers=False`` while :meth:`append` writes ``layer_00001.pt``, ... and
    :meth:`forward` streams them back one at a time.

    Parameters
    ----------
    directory : str or Path
        Created if needed. A layer file already there is never overwritten, except from
        the position :meth:`truncate` (or resuming a checkpoint) rewinds to: continue an
        existing history with :meth:`open`.
    trusted_classes : sequence of classes or functions
        Your own classes the layer files may hold. Files are read with
        ``torch.load(weights_only=True)`` and only flowkit's own classes plus these are
        rebuilt (:mod:`flowkit.serialization`): name a class only if you trust the files.
    """

    def __init__(self, directory: str | os.PathLike, *, trusted_classes: Sequence[Any] = ()):
        super().__init__()
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.trusted_classes = tuple(trusted_classes)
        self._n = 0
        self._rewound = False

    def _file(self, k: int) -> Path:
        return self.directory / f"layer_{k:05d}.pt"

    def n_files(self) -> int:
        """How many layer files the directory holds (from this or an earlier history)."""
        return sum(1 for _ in self.directory.glob("layer_*.pt"))

    def append(self, layer: VelocityLayer) -> Path:
        if not isinstance(layer, VelocityLayer):
            raise TypeError(f"layer must be a GradientLayer or VelocityLayer, got "
                            f"{type(layer).__name__}")
        path = self._file(self._n + 1)
        if path.exists() and not self._rewound:
            raise FileExistsError(
                f"{path} already holds a layer of an earlier history; continue that history "
                "with LayerHistory.open(directory), or use a new directory")
        with atomic_write(path) as tmp:  # never leave a half-written layer behind
            torch.save(layer, tmp)
        self._n += 1
        return path

    def truncate(self, n: int) -> None:
        """Forget layers after the ``n``-th (their files are overwritten by later appends)."""
        self._n = check_int(n, "n", 0)
        self._rewound = True

    def __len__(self) -> int:
        return self._n

    def layer(self, k: int, map_location: str | torch.device | None = None) -> GradientLayer:
        """The ``k``-th layer (1-based), loaded without running code from the file."""
        if not 1 <= k <= self._n:
            raise IndexError(f"layer {k} out of range 1..{self._n}")
        file = self._file(k)
        return safe_load(file, what=f"layer file {str(file)!r}", map_location=map_location,
                         trusted_classes=self.trusted_classes)

    def forward(self, x: Tensor) -> Tensor:
        for k in range(1, self._n + 1):
            x = self.layer(k, map_location=x.device)(x)
        return x

    def load_stack(self) -> GradientLayerStack:
        """All layers in memory, as a :class:`GradientLayerStack`."""
        return GradientLayerStack(self.layer(k) for k in range(1, self._n + 1))

    @classmethod
    def open(cls, directory: str | os.PathLike, *, trusted_classes: Sequence[Any] = ()
             ) -> LayerHistory:
        """An existing history, with as many layers as consecutive files from ``layer_00001``."""
        history = cls(directory, trusted_classes=trusted_classes)
        while history._file(history._n + 1).exists():
            history._n += 1
        return history


class AdversarialObjective(FunctionalObjective):
    r"""The WGAN-GP objective whose first variation is a freshly fitted critic (Algorithm 1).

    At outer step ``k`` :meth:`first_variation` trains the critic :math:`T_0` steps
    (warm-started from :math:`\tau_k`) on data minibatches and on generated minibatches
    pushed through the ``k`` layers so far, and returns the frozen snapshot
    :math:`\psi_{k+1} = -f_{\tau_{k+1}} \circ h`, with ``h = output_map``; the engine stacks
    :math:`G_{k+1} = \mathrm{id} - \eta\nabla\psi_{k+1}` (Nitanda & Suzuki 2018, Algorithm 1
    and eq. (1)).

    Parameters
    ----------
    critic : Critic
        e.g. :class:`flowkit.critics.WGANGPCritic`; trained in place.
    data : Tensor
        Data ``(M, *event)`` in the data space (after ``output_map``).
    mode : {"pool", "paper"}
        How generated minibatches are drawn (module docstring).
    base_sampler : callable, optional
        ``(n, generator) -> (n, *particle_event)``: fresh base samples :math:`z\sim\mu_g` in
        the particle space (before ``output_map``). Required for ``mode="paper"``; see
        :func:`gaussian_base`.
    output_map : callable or nn.Module, optional
        Fixed map ``h`` from particles to the data space. ``torch.tanh`` gives the paper's
        top insertion with layers below the tanh (sec. 3.3); a generator ``g`` applied to
        latent particles gives bottom insertion. ``None`` is the identity.
    seed : int or torch.Generator
        Source of the base samples in ``mode="paper"``.
    push_batch_size : int, optional
        Chunk size when pushing fresh samples through the layers (bounds memory).
    history_dir : str or Path, optional
        Also write every layer to this directory (:class:`LayerHistory`), so a long run can
        use ``keep_layers=False`` and still replay Algorithm 2 from disk. A run refuses a
        directory that already holds layer files, unless it resumes from a checkpoint.

    Notes
    -----
    Memory: ``mode="paper"`` keeps the ``k`` layers (each a copy of the critic), O(T * critic
    size), as does the engine's stack; they are the same objects, stored once.
    The critic's gradient is bounded only softly (by the penalty), so no smoothness constant
    is claimed. Checkpoints (``run(..., checkpoint=)``) hold the critic weights, Adam state,
    the critic's and the sampler's RNG states and the recorded layers, so a resumed run is
    bit-identical on CPU.

    Examples
    --------
    >>> import torch, flowkit as fk
    >>> data = 0.7 * torch.tanh(fk.datasets.eight_gaussians(200, seed=0))
    >>> critic = fk.critics.WGANGPCritic(dim=2, hidden=32, steps=5, seed=0)
    >>> obj = fk.objectives.AdversarialObjective(critic, data, output_map=torch.tanh)
    >>> flow = fk.FunctionalGradientDescent(obj, step_size=0.1, progress=False)
    >>> result = flow.run(0.5 * torch.randn(200, 2), n_steps=3)
    >>> fresh = torch.tanh(result.layers(0.5 * torch.randn(1000, 2)))   # Algorithm 2
    >>> fresh.shape, critic.total_steps
    (torch.Size([1000, 2]), 15)
    """

    MODES = ("pool", "paper")

    def __init__(self, critic: Critic, data: Tensor, mode: str = "pool",
                 base_sampler: BaseSampler | None = None, *,
                 output_map: Callable[[Tensor], Tensor] | None = None,
                 seed: int | torch.Generator = 0, push_batch_size: int | None = None,
                 history_dir: str | os.PathLike | None = None):
        if not all(hasattr(critic, a) for a in ("fit", "state_dict", "load_state_dict")):
            raise TypeError("critic must have fit(particles, data, steps), state_dict() and "
                            f"load_state_dict() (e.g. WGANGPCritic), got {type(critic).__name__}")
        self.critic = critic
        self.data = check_particles(data, "data")
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}, got {mode!r}")
        self.mode = mode
        if mode == "paper":
            if base_sampler is None:
                raise ValueError("base_sampler is required for mode='paper': a callable "
                                 "(n, generator) -> fresh base samples, e.g. gaussian_base(0.5)")
            for attr in ("batch_size", "steps"):
                if not isinstance(getattr(critic, attr, None), int):
                    raise TypeError(f"critic needs an int attribute {attr!r} for mode='paper'")
        if base_sampler is not None and not callable(base_sampler):
            raise TypeError(f"base_sampler must be callable (n, generator) -> Tensor, got "
                            f"{type(base_sampler).__name__}")
        self.base_sampler = base_sampler
        if output_map is not None and not callable(output_map):
            raise TypeError(f"output_map must be callable, got {type(output_map).__name__}")
        self.output_map = output_map
        if push_batch_size is not None:
            check_int(push_batch_size, "push_batch_size")
        self.push_batch_size = push_batch_size
        self._seed = check_seed(seed)
        self._generator: torch.Generator | None = None
        self.layers = GradientLayerStack()  # the recorded history (mode="paper" only)
        self.history = None if history_dir is None else LayerHistory(history_dir)

    # ------------------------------------------------------------------ objective
    def validate(self, x: Tensor) -> None:
        check_particles(x, "x")
        with torch.no_grad():
            mapped = self.to_data_space(x[:2])
        if mapped.shape[1:] != self.data.shape[1:]:
            raise ValueError(f"x maps to event shape {tuple(mapped.shape[1:])} through "
                             f"output_map but data has {tuple(self.data.shape[1:])}")
        check_compatible(mapped, self.data, "output_map(x)", "data")

    def to_data_space(self, x: Tensor) -> Tensor:
        """``output_map(x)``: particles seen in the data space."""
        return x if self.output_map is None else self.output_map(x)

    def first_variation(self, x: Tensor) -> Potential:
        r"""Fit the critic (Algorithm 1's inner loop) and return :math:`-f \circ h`."""
        if self.mode == "pool":
            with torch.no_grad():
                fake: Any = self.to_data_space(x.detach())
        else:
            fake = self._fresh_batches()
        psi = self.critic.fit(fake, self.data)
        return psi if self.output_map is None else PulledBackPotential(psi, self.output_map)

    def _fresh_batches(self) -> Callable[[int], Tensor]:
        b, steps = self.critic.batch_size, self.critic.steps
        if self._generator is None:
            self._generator = as_generator(self._seed, self.data.device)
        z = self.base_sampler(b * steps, self._generator)
        pushed = self.layers(z, batch_size=self.push_batch_size)
        with torch.no_grad():
            fake = self.to_data_space(pushed)
        check_compatible(fake, self.data, "output_map(base_sampler(n))", "data")
        return _Slices(fake, b)

    def on_run_start(self, *, resumed: bool) -> None:
        # a second run writing into the same history would overwrite layers 1..k, and
        # Algorithm 2 would then replay a mix of both runs
        if self.history is not None and not resumed and self.history.n_files():
            raise ValueError(
                f"history_dir {str(self.history.directory)!r} already holds "
                f"{self.history.n_files()} layer file(s) from an earlier run; pass an empty "
                "or new directory, or continue that run with flow.resume(checkpoint)")

    def after_step(self, layer: GradientLayer) -> None:
        if self.mode == "paper":
            self.layers.append(layer)
        if self.history is not None:
            self.history.append(layer)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        gen = self._generator
        return {
            "critic": self.critic.state_dict(),
            "rng": None if gen is None else gen.get_state(),
            "rng_device": None if gen is None else str(gen.device),
            # layers are frozen: sharing them (not copying) is safe and, inside one
            # checkpoint file, stores them once alongside the engine's stack
            "layers": list(self.layers),
            "history_len": None if self.history is None else len(self.history),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = {"critic", "rng", "layers", "history_len"} - set(state)
        if missing:
            raise ValueError(f"state is missing keys {sorted(missing)}")
        self.critic.load_state_dict(state["critic"])
        if state["rng"] is not None:
            self._generator = torch.Generator(device=state["rng_device"])
            self._generator.set_state(state["rng"])
        self.layers = GradientLayerStack(state["layers"])
        if self.history is not None and state["history_len"] is not None:
            self.history.truncate(state["history_len"])


class _Slices:
    """``k0 -> fake[k0 b : (k0 + 1) b]``: one fresh minibatch per critic step."""

    def __init__(self, fake: Tensor, b: int):
        self.fake, self.b = fake, b

    def __call__(self, k0: int) -> Tensor:
        return self.fake[k0 * self.b:(k0 + 1) * self.b]
