"""Gradient layers and their stacks (Nitanda & Suzuki 2018, eq. (1), Algorithms 2-3).

One step of functional gradient descent is the map ``G = id - eta * grad psi``: a
*gradient layer*. More generally a layer is any per-sample map ``x -> x - eta v(x)``
(:class:`VelocityLayer`), possibly plus seeded Gaussian noise; the gradient layer is the
case ``v = grad psi``. Algorithm 3 composes them, ``phi_T = G_T o ... o G_1 o phi_0``, and
Algorithm 2 generates new samples by pushing fresh base samples through the same stack.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from flowkit.potential import Potential
from flowkit.validation import check_int, check_positive

__all__ = ["VelocityField", "GradientField", "VelocityLayer", "GradientLayer",
           "GradientLayerStack", "standard_normal"]

_FORMAT = "flowkit.GradientLayerStack"
_FORMAT_VERSION = 1


def standard_normal(like: Tensor, generator: torch.Generator | None = None) -> Tensor:
    r"""Standard Gaussian noise :math:`\xi` shaped like ``like``, in its dtype and device.

    Drawn in float64 from ``generator`` (the global generator if None) and rounded to
    ``like``'s dtype, so one seed gives the same path in every floating dtype: a float32
    and a float64 Langevin run differ by rounding, not by an independent noise draw (a
    draw in float32 consumes the generator differently and gives other numbers).
    """
    xi = torch.randn(like.shape, generator=generator, device=like.device, dtype=torch.float64)
    return xi.to(like.dtype)


class VelocityField(nn.Module):
    """A per-sample velocity ``v : (B, *event) -> (B, *event)``; a flow moves along ``-v``.

    Subclasses implement :meth:`forward`. A field that is not a gradient (SVGD's kernelized
    Stein direction) is given as a ``VelocityField``; a gradient field is
    :class:`GradientField`. Like a potential, a field is an ``nn.Module`` so the data it
    holds moves with ``.to()`` and is saved with the layers.
    """

    def forward(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class GradientField(VelocityField):
    """The field ``grad psi`` of a :class:`~flowkit.potential.Potential`."""

    def __init__(self, potential: Potential):
        super().__init__()
        if not isinstance(potential, Potential):
            raise TypeError(
                f"potential must be a flowkit.Potential, got {type(potential).__name__}"
            )
        self.potential = potential

    def forward(self, x: Tensor) -> Tensor:
        return self.potential.grad(x, create_graph=_tracks_graph(x))


def _tracks_graph(x: Tensor) -> bool:
    # x carries a graph (e.g. a generator's output): keep the layer differentiable so losses
    # reach what x was computed from (NS18, eq. (2)); particles never do this
    return torch.is_grad_enabled() and x.requires_grad


class VelocityLayer(nn.Module):
    r"""The per-sample map :math:`G(x) = x - \eta\, v(x) + \sqrt{2\eta/\beta}\,\xi`.

    The noise term is present only with a ``temperature`` :math:`\beta` (a Langevin-type
    step, :math:`\xi\sim\mathcal N(0, I)`). It is drawn from a generator seeded with the
    layer's own ``seed``, so calling the layer twice on the same batch gives the same output
    and a stack replays its run exactly (Algorithm 2 of Nitanda & Suzuki 2018 [NS18] with
    stochastic layers); pass ``generator=`` to draw fresh noise instead.

    Parameters
    ----------
    field : VelocityField
        ``v``.
    step_size : float
        ``eta > 0``.
    temperature : float, optional
        ``beta > 0``; ``None`` for a deterministic layer.
    seed : int, optional
        Seed of the layer's noise (required with ``temperature``).
    """

    #: sqrt(2 eta / beta), 0 for a deterministic layer (also for files saved before noise)
    noise_scale: float = 0.0
    seed: int | None = None
    temperature: float | None = None

    def __init__(self, field: VelocityField, step_size: float, *,
                 temperature: float | None = None, seed: int | None = None):
        super().__init__()
        if not isinstance(field, VelocityField):
            raise TypeError(f"field must be a flowkit.layers.VelocityField, got "
                            f"{type(field).__name__}")
        self.field = field
        self._set_step(step_size, temperature, seed)

    def _set_step(self, step_size: float, temperature: float | None, seed: int | None) -> None:
        self.step_size = check_positive(step_size, "step_size")
        if temperature is not None:
            self.temperature = check_positive(temperature, "temperature")
            if seed is None:
                raise ValueError("seed is required with temperature: the layer's noise must "
                                 "be reproducible for the stack to replay")
            self.seed = check_int(seed, "seed", 0)
            self.noise_scale = math.sqrt(2.0 * self.step_size / self.temperature)

    def velocity(self, x: Tensor) -> Tensor:
        """``v(x)``."""
        return self.field(x)

    def direction(self, x: Tensor) -> Tensor:
        """The layer's deterministic displacement ``-v(x)`` before scaling by ``eta``."""
        return -self.velocity(x)

    def noise(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor | None:
        """The noise ``sqrt(2 eta / beta) xi`` for a batch like ``x`` (``None`` without)."""
        if self.noise_scale == 0.0:
            return None
        if generator is None:
            generator = torch.Generator(device=x.device).manual_seed(self.seed)
        return self.noise_scale * standard_normal(x, generator)

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        out = x - self.step_size * self.velocity(x)
        xi = self.noise(x, generator)
        return out if xi is None else out + xi

    def extra_repr(self) -> str:
        noise = "" if self.temperature is None else f", temperature={self.temperature}"
        return f"step_size={self.step_size}{noise}"


class GradientLayer(VelocityLayer):
    r"""The map :math:`G_\eta(x) = x - \eta \nabla\psi(x)`: a velocity layer with ``v = grad psi``.

    With ``psi = -f`` for a critic ``f`` this is the paper's layer
    :math:`G_\eta(z) = z + \eta \nabla_z f(z)` (Nitanda & Suzuki 2018, eq. (1)). If
    :math:`\nabla\psi` is ``Lip``-Lipschitz and ``eta * Lip < 1`` the layer is injective,
    indeed bi-Lipschitz with constants ``1 -/+ eta * Lip`` (see :mod:`flowkit.theory`).

    Parameters
    ----------
    potential : Potential
        The first variation followed by the layer.
    step_size : float
        ``eta > 0``.
    temperature, seed
        Optional Gaussian noise, as in :class:`VelocityLayer`.
    """

    def __init__(self, potential: Potential, step_size: float, *,
                 temperature: float | None = None, seed: int | None = None):
        nn.Module.__init__(self)
        if not isinstance(potential, Potential):
            raise TypeError(
                f"potential must be a flowkit.Potential, got {type(potential).__name__}"
            )
        self.potential = potential
        self._set_step(step_size, temperature, seed)

    def velocity(self, x: Tensor) -> Tensor:
        return self.potential.grad(x, create_graph=_tracks_graph(x))


class GradientLayerStack(nn.Module):
    r"""Gradient layers applied in order, :math:`G_T \circ \cdots \circ G_1` (Algorithm 2).

    Calling the stack on fresh base samples *is* Algorithm 2 of Nitanda & Suzuki (2018):
    it replays the history of first variations. The stack stores every potential, so its
    memory is O(T * size of one potential).
    """

    def __init__(self, layers: Iterable[VelocityLayer] = ()):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def append(self, layer: VelocityLayer) -> None:
        if not isinstance(layer, VelocityLayer):
            raise TypeError(f"layer must be a GradientLayer or VelocityLayer, got "
                            f"{type(layer).__name__}")
        self.layers.append(layer)

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, idx: int | slice) -> GradientLayer | GradientLayerStack:
        if isinstance(idx, slice):
            return GradientLayerStack(list(self.layers)[idx])
        return self.layers[idx]

    def forward(self, x: Tensor, *, batch_size: int | None = None,
                callback: Callable[[int, Tensor], None] | None = None,
                generator: torch.Generator | None = None) -> Tensor:
        """Push ``x`` through every layer in order.

        Parameters
        ----------
        x : Tensor
            Base samples ``(B, *event)``.
        batch_size : int, optional
            Process ``x`` in chunks of this many samples to bound memory.
        callback : callable, optional
            Called as ``callback(k, x_k)`` after layer ``k`` (1-based), e.g. for snapshots.
        generator : torch.Generator, optional
            Source of fresh noise for noisy layers (``temperature`` set). Without it each
            noisy layer draws from its own seed, so the same input gives the same output
            and the stack replays its run exactly.
        """
        if batch_size is not None and x.shape[0] > batch_size:
            if callback is not None:
                raise ValueError("callback cannot be combined with batch_size")
            if generator is None and any(getattr(m, "noise_scale", 0.0) for m in self.layers):
                raise ValueError("batch_size with noisy layers needs generator=: each layer's "
                                 "own seeded noise depends on the batch it is drawn for")
            return torch.cat([self.forward(chunk, generator=generator)
                              for chunk in x.split(batch_size)])
        for k, layer in enumerate(self.layers, start=1):
            x = layer(x) if generator is None else layer(x, generator=generator)
            if callback is not None:
                callback(k, x)
        return x

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Save the whole stack (potentials included) to one file.

        Refuses to replace an existing file unless ``overwrite=True``; the write goes to a
        temporary file first, so an interrupted save never corrupts an earlier one.
        """
        from flowkit.checkpoints import atomic_write

        path = Path(path)
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
        with atomic_write(path) as tmp:
            torch.save({"format": _FORMAT, "version": _FORMAT_VERSION, "stack": self}, tmp)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: str | torch.device | None = None, *,
             trusted_classes: Iterable[Any] = (), weights_only: bool = True
             ) -> GradientLayerStack:
        """Load a stack written by :meth:`save`, without running code from the file.

        The file is read with ``torch.load(weights_only=True)`` and only flowkit's own
        layers, potentials, critics and kernels (and torch's ``nn`` layers) are rebuilt
        (:mod:`flowkit.serialization`). A stack holding your own potential class loads when
        you name it in ``trusted_classes``; ``weights_only=False`` unpickles anything, so
        a crafted file can run code: use either only for files you trust.
        """
        from flowkit.serialization import safe_load

        blob = safe_load(path, what=f"layer stack {str(path)!r}", map_location=map_location,
                         trusted_classes=trusted_classes, weights_only=weights_only)
        if not isinstance(blob, dict) or blob.get("format") != _FORMAT:
            raise ValueError(f"{path} is not a flowkit GradientLayerStack file")
        if blob["version"] > _FORMAT_VERSION:
            raise ValueError(
                f"{path} was written by a newer flowkit (format {blob['version']}); upgrade"
            )
        return blob["stack"]


def __getattr__(name: str):
    # Generator insertion lives in flowkit.insertion, which builds on this module; resolving
    # the names lazily keeps ``fk.layers.insert_top`` without an import cycle.
    if name in ("insert_top", "insert_bottom"):
        from flowkit import insertion

        return getattr(insertion, name)
    raise AttributeError(f"module 'flowkit.layers' has no attribute {name!r}")
