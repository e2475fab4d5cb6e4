"""Loading flowkit files without running code from them.

Layer stacks, layer histories and checkpoints hold ``nn.Module``s (potentials, critics,
kernels). ``torch.load(weights_only=False)`` would rebuild them by unpickling, which runs
whatever code a crafted file names. Every flowkit loader instead calls :func:`safe_load`:
``torch.load(weights_only=True)`` inside a ``torch.serialization.safe_globals`` scope that
allows exactly

* flowkit's own modules and kernels (``nn.Module`` and :class:`flowkit.kernels.Kernel`
  subclasses defined in the ``flowkit`` package, except those whose construction touches
  the file system),
* torch's own layers (``torch.nn.modules``), ``torch.Generator`` and numpy scalars
  (monitor values),
* the classes and functions the caller names in ``trusted_classes``.

The unpickler only ever *builds* objects of these classes (``__new__`` plus their state):
no other global can be named by the file. A class outside the list (a user's own
potential) raises :class:`UntrustedFileError` naming it; pass it in ``trusted_classes``
only if you trust the file, or load with ``weights_only=False`` (which trusts everything).
"""

from __future__ import annotations

import io
import os
import pickle
import re
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["safe_load", "safe_globals_for", "UntrustedFileError"]

# Construction has side effects (creates a directory): never built from a file.
_EXCLUDED = {"flowkit.objectives.adversarial.LayerHistory"}


class UntrustedFileError(pickle.UnpicklingError):
    """A file names a class or function that is not on flowkit's allow-list."""


def _subclasses(cls: type) -> Iterable[type]:
    seen: set[type] = set()
    stack = [cls]
    while stack:
        for sub in stack.pop().__subclasses__():
            if sub not in seen:
                seen.add(sub)
                stack.append(sub)
                yield sub


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def safe_globals_for(trusted_classes: Iterable[Any] = ()) -> list[Any]:
    """The allow-list :func:`safe_load` uses: flowkit's and torch's modules, plus yours."""
    import flowkit  # noqa: F401  (makes sure the core and its plug-ins are imported)
    from flowkit.kernels import Kernel

    allowed: list[Any] = []
    for base in (nn.Module, Kernel):
        for cls in _subclasses(base):
            module = cls.__module__
            ours = module == "flowkit" or module.startswith("flowkit.")
            if ours and _qualified(cls) not in _EXCLUDED and "<locals>" not in cls.__qualname__:
                allowed.append(cls)
            elif base is nn.Module and module.startswith("torch.nn.modules."):
                allowed.append(cls)
    # generators (noisy potentials hold one) are rebuilt from a device and a state tensor
    allowed += [set, torch.Generator]
    # numpy scalars and dtypes, as monitors may record them (rebuilt from bytes, no code)
    multiarray = getattr(np, "_core", None) or np.core  # numpy >= 2 renamed the module
    allowed += [multiarray.multiarray.scalar, np.dtype]
    allowed += [type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32", "bool")]
    trusted = list(trusted_classes)
    for obj in trusted:
        if not callable(obj):
            raise TypeError(f"trusted_classes must hold classes or functions, got {obj!r}")
    return allowed + trusted


_GLOBAL_RE = re.compile(r"GLOBAL ([\w.]+)")


def safe_load(source: str | os.PathLike | io.BytesIO, *, what: str,
              trusted_classes: Iterable[Any] = (), weights_only: bool = True,
              map_location: str | torch.device | None = None) -> Any:
    """``torch.load`` restricted to the allow-list of the module docstring.

    Parameters
    ----------
    source : path or buffer
        The file.
    what : str
        How to call the file in errors (e.g. ``"checkpoint run.pt"``).
    trusted_classes : iterable of classes or functions
        Extra globals the file may name (your own potential classes): pass only those of
        files you trust.
    weights_only : bool
        ``False`` unpickles with no allow-list at all, which runs any code the file names:
        only for files you made yourself.
    """
    if not weights_only:
        return torch.load(source, map_location=map_location, weights_only=False)
    with torch.serialization.safe_globals(safe_globals_for(trusted_classes)):
        try:
            return torch.load(source, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as err:
            names = sorted(set(_GLOBAL_RE.findall(str(err))))
            named = ", ".join(names) if names else "a global outside the allow-list"
            raise UntrustedFileError(
                f"{what} names {named}, which is not one of flowkit's own classes, so it "
                "was not loaded (loading it would run code from the file). If you trust "
                "the file, pass the class in trusted_classes=[...] (or weights_only=False)."
            ) from None


# torch's elementwise maps (output maps such as tanh) are saved by name: pickling a torch
# builtin names ``getattr``, which no allow-list may admit
_TORCH_MAPS = ("tanh", "sigmoid", "atan", "erf", "sin", "cos", "exp", "relu", "softmax")


def encode_map(fn: Any) -> Any:
    """``torch.tanh`` -> ``("torch", "tanh")``; anything else unchanged."""
    for name in _TORCH_MAPS:
        if fn is getattr(torch, name):
            return ("torch", name)
    return fn


def decode_map(obj: Any) -> Any:
    """Inverse of :func:`encode_map` (only the names of the fixed list resolve)."""
    if isinstance(obj, tuple) and len(obj) == 2 and obj[0] == "torch" and obj[1] in _TORCH_MAPS:
        return getattr(torch, obj[1])
    return obj


class MapState:
    """Mixin for modules holding plain callables in the attributes ``_map_attributes``."""

    _map_attributes: tuple[str, ...] = ()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for name in self._map_attributes:
            if name in state:
                state[name] = encode_map(state[name])
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        for name in self._map_attributes:
            if name in state:
                state[name] = decode_map(state[name])
        super().__setstate__(state)  # type: ignore[misc]
