"""Gradient layers and their stacks (Nitanda & Suzuki 2018, eq. (1), Algorithms 2-3).

One step of functional gradient descent is the map ``G = id - eta * grad psi``: a
*gradient layer*. Algorithm 3 composes them, ``phi_T = G_T o ... o G_1 o phi_0``, and
Algorithm 2 generates new samples by pushing fresh base samples through the same stack.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from flowkit.potential import Potential
from flowkit.validation import check_positive

__all__ = ["GradientLayer", "GradientLayerStack"]

_FORMAT = "flowkit.GradientLayerStack"
_FORMAT_VERSION = 1


class GradientLayer(nn.Module):
    r"""The map :math:`G_\eta(x) = x - \eta \nabla\psi(x)`.

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
    """

    def __init__(self, potential: Potential, step_size: float):
        super().__init__()
        if not isinstance(potential, Potential):
            raise TypeError(
                f"potential must be a flowkit.Potential, got {type(potential).__name__}"
            )
        self.potential = potential
        self.step_size = check_positive(step_size, "step_size")

    def direction(self, x: Tensor) -> Tensor:
        """The layer's displacement ``-grad psi(x)`` before scaling by ``eta``."""
        return -self.potential.grad(x)

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            # x carries a graph (e.g. a generator's output): keep the layer differentiable so
            # losses reach what x was computed from (NS18, eq. (2)); particles never do this
            return x - self.step_size * self.potential.grad(x, create_graph=True)
        return x - self.step_size * self.potential.grad(x)

    def extra_repr(self) -> str:
        return f"step_size={self.step_size}"


class GradientLayerStack(nn.Module):
    """The composition ``G_T o ... o G_1`` of gradient layers (Algorithm 2).

    Calling the stack on fresh base samples *is* Algorithm 2 of Nitanda & Suzuki (2018):
    it replays the history of first variations. The stack stores every potential, so its
    memory is O(T * size of one potential).
    """

    def __init__(self, layers: Iterable[GradientLayer] = ()):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def append(self, layer: GradientLayer) -> None:
        if not isinstance(layer, GradientLayer):
            raise TypeError(f"layer must be a GradientLayer, got {type(layer).__name__}")
        self.layers.append(layer)

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, idx: int | slice) -> GradientLayer | GradientLayerStack:
        if isinstance(idx, slice):
            return GradientLayerStack(list(self.layers)[idx])
        return self.layers[idx]

    def forward(self, x: Tensor, *, batch_size: int | None = None,
                callback: Callable[[int, Tensor], None] | None = None) -> Tensor:
        """Push ``x`` through every layer in order.

        Parameters
        ----------
        x : Tensor
            Base samples ``(B, *event)``.
        batch_size : int, optional
            Process ``x`` in chunks of this many samples to bound memory.
        callback : callable, optional
            Called as ``callback(k, x_k)`` after layer ``k`` (1-based), e.g. for snapshots.
        """
        if batch_size is not None and x.shape[0] > batch_size:
            if callback is not None:
                raise ValueError("callback cannot be combined with batch_size")
            return torch.cat([self.forward(chunk) for chunk in x.split(batch_size)])
        for k, layer in enumerate(self.layers, start=1):
            x = layer(x)
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
