r"""Inserting gradient layers into a generator (Nitanda & Suzuki 2018, sec. 3.1 and 3.3).

Split a generator as :math:`g = g_1 \circ g_2`. A gradient layer inserted between the two
parts moves :math:`z' = g_2(z)` along the critic seen through the upper part (eq. (1)),

.. math:: G_\eta(z') = z' + \eta \nabla_{z'} f(g_1(z')) = z' - \eta \nabla_{z'} \psi(z'),
          \qquad \psi = -f \circ g_1 .

*Top insertion* (sec. 3.3, the paper's main usage): :math:`g_1` is a fixed output map such
as ``tanh`` and the layers sit just below it, so samples are
:math:`g_1(G_T \circ \dots \circ G_1(g_2(z)))`; "since tanh is a fixed function, it is no
problem to combine tanh with critics". *Bottom insertion*: :math:`g_2 = \mathrm{id}` on the
latent space, :math:`G_\eta(z) = z + \eta \nabla_z f(g(z))`, and samples are
:math:`g(G_T \circ \dots \circ G_1(z))`.

In both cases a layer's potential is the critic *pulled back* through the map above it,
:class:`PulledBackPotential`. :class:`flowkit.objectives.AdversarialObjective` builds such
layers directly with ``output_map=`` (``torch.tanh`` for the top, the generator for the
bottom); :func:`pull_back` converts layers whose potentials live on the data space.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from flowkit.potential import Potential
from flowkit.serialization import MapState

if TYPE_CHECKING:  # flowkit.layers re-exports this module's functions: import it lazily
    from flowkit.layers import GradientLayer, GradientLayerStack

__all__ = [
    "PulledBackPotential",
    "pull_back",
    "TopInsertion",
    "BottomInsertion",
    "insert_top",
    "insert_bottom",
]

OutputMap = Callable[[Tensor], Tensor]


def _check_map(fn: object, name: str, allow_none: bool = False) -> None:
    if fn is None and allow_none:
        return
    if not callable(fn):
        raise TypeError(f"{name} must be a callable or torch.nn.Module mapping tensors to "
                        f"tensors, got {type(fn).__name__}")


def _check_layers(layers: object) -> None:
    if not isinstance(layers, nn.Module):
        raise TypeError("layers must be a torch.nn.Module (a GradientLayerStack, one "
                        f"GradientLayer or an on-disk history), got {type(layers).__name__}")


class PulledBackPotential(MapState, Potential):
    r"""The potential :math:`\psi \circ h`: a potential seen through a fixed map ``h``.

    With :math:`\psi = -f` a critic snapshot and ``h`` the part of the generator above the
    layer (``tanh`` for top insertion, the generator for bottom insertion), its layer is
    eq. (1) of Nitanda & Suzuki (2018). The gradient is
    :math:`J_h(x)^\top \nabla\psi(h(x))`, by autograd.

    Parameters
    ----------
    potential : Potential
        :math:`\psi` on the output space of ``h``.
    inner : callable or nn.Module
        ``h``. A module is registered (it moves with ``.to()`` and is saved with the layer;
        the same module shared by many layers is stored once per file). Plain functions
        must be importable (picklable) for the stack to be saved: ``torch.tanh`` is.
    """

    def __init__(self, potential: Potential, inner: OutputMap):
        super().__init__()
        if not isinstance(potential, Potential):
            raise TypeError(f"potential must be a flowkit.Potential, got "
                            f"{type(potential).__name__}")
        _check_map(inner, "inner")
        self.potential = potential
        self.inner = inner

    _map_attributes = ("inner",)

    def forward(self, x: Tensor) -> Tensor:
        return self.potential(self.inner(x))


def pull_back(layers: Iterable[GradientLayer], inner: OutputMap) -> GradientLayerStack:
    """Layers with every potential pulled back through ``inner`` (same step sizes).

    Use it on layers whose potentials were built on the data space, to insert them below
    ``inner`` (the output map, or the whole generator for bottom insertion).
    """
    from flowkit.layers import GradientLayer, GradientLayerStack

    _check_map(inner, "inner")
    out = GradientLayerStack()
    for layer in layers:
        if not isinstance(layer, GradientLayer):
            raise TypeError(f"layers must hold GradientLayers, got {type(layer).__name__}")
        out.append(GradientLayer(PulledBackPotential(layer.potential, inner), layer.step_size))
    return out


class TopInsertion(MapState, nn.Module):
    r"""``output_map(layers(generator(z)))``: gradient layers below a fixed output map.

    The layers' potentials must act on the generator's pre-``output_map`` values, i.e. be
    critics composed with ``output_map`` (:class:`PulledBackPotential`), which is what
    ``AdversarialObjective(..., output_map=output_map)`` produces.
    """

    def __init__(self, generator: nn.Module | OutputMap | None, layers: nn.Module,
                 output_map: OutputMap | None = torch.tanh):
        super().__init__()
        _check_map(generator, "generator", allow_none=True)
        _check_layers(layers)
        _check_map(output_map, "output_map", allow_none=True)
        self.generator = generator
        self.layers = layers
        self.output_map = output_map

    _map_attributes = ("generator", "output_map")

    def forward(self, z: Tensor) -> Tensor:
        x = z if self.generator is None else self.generator(z)
        x = self.layers(x)
        return x if self.output_map is None else self.output_map(x)


class BottomInsertion(MapState, nn.Module):
    r"""``generator(layers(z))``: gradient layers on the latent input of a generator.

    Each layer is :math:`z + \eta \nabla_z f(g(z))`; the potentials act on latents
    (critics pulled back through the generator, e.g. ``AdversarialObjective(...,
    output_map=generator)`` run on latent particles).
    """

    def __init__(self, generator: nn.Module | OutputMap, layers: nn.Module):
        super().__init__()
        _check_map(generator, "generator")
        _check_layers(layers)
        self.generator = generator
        self.layers = layers

    _map_attributes = ("generator",)

    def forward(self, z: Tensor) -> Tensor:
        return self.generator(self.layers(z))


def insert_top(generator: nn.Module | OutputMap | None, layers: nn.Module,
               output_map: OutputMap | None = torch.tanh) -> TopInsertion:
    r"""Top insertion (sec. 3.3): :math:`g_1(G_T \circ\dots\circ G_1(g_2(z)))`.

    Parameters
    ----------
    generator : nn.Module or callable or None
        :math:`g_2`, the generator *without* its output map; ``None`` for ``g = id``.
    layers : nn.Module
        The stack (e.g. ``result.layers`` of a run), potentials on :math:`g_2`'s outputs.
    output_map : callable or None
        :math:`g_1`, default ``torch.tanh``; ``None`` for no output map.

    Examples
    --------
    >>> import torch, flowkit as fk
    >>> top = fk.layers.insert_top(torch.nn.Linear(4, 2), fk.GradientLayerStack(),
    ...                            output_map=torch.tanh)
    >>> top(torch.zeros(5, 4)).shape
    torch.Size([5, 2])
    """
    return TopInsertion(generator, layers, output_map)


def insert_bottom(generator: nn.Module | OutputMap, layers: nn.Module) -> BottomInsertion:
    r"""Bottom insertion: :math:`g(G_T \circ \dots \circ G_1(z))` with latent-space layers.

    Each layer is :math:`G_\eta(z) = z + \eta \nabla_z f(g(z))` (Nitanda & Suzuki 2018,
    eq. (1) with :math:`g_2 = \mathrm{id}`, :math:`g_1 = g`).
    """
    return BottomInsertion(generator, layers)
