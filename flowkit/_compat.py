"""Deprecated names kept for one release: keyword aliases and module-level class aliases."""

from __future__ import annotations

import warnings
from collections.abc import ItemsView, Iterator, Mapping, ValuesView
from typing import Any

__all__ = ["MISSING", "renamed_keyword", "deprecated_module_attribute", "LegacyMapping"]


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


#: Default of a deprecated keyword, to tell "not passed" from ``None``.
MISSING: Any = _Missing()


def renamed_keyword(new_value: Any, old_value: Any, new: str, old: str, owner: str
                    ) -> tuple[Any, str]:
    """``(value, name)`` of keyword ``new``, accepting its deprecated alias ``old`` (warned).

    ``new_value`` / ``old_value`` are ``MISSING`` when the caller did not pass them; the
    returned name is the one the caller used, for error messages.
    """
    if old_value is MISSING:
        if new_value is MISSING:
            raise TypeError(f"{owner}() missing required argument {new!r}")
        return new_value, new
    if new_value is not MISSING:
        raise TypeError(f"{owner} got both {new}= and its deprecated alias {old}=; pass {new}=")
    warnings.warn(f"{owner}({old}=...) is deprecated and will be removed in the next release; "
                  f"use {new}=...", DeprecationWarning, stacklevel=3)
    return old_value, old


def deprecated_module_attribute(module: str, name: str, aliases: dict[str, tuple[str, Any]]
                                ) -> Any:
    """For a module's ``__getattr__``: the object an old name points to, with a warning."""
    if name in aliases:
        new, obj = aliases[name]
        warnings.warn(f"{module}.{name} is deprecated and will be removed in the next release; "
                      f"use {new if '.' in new else f'{module}.{new}'}", DeprecationWarning,
                      stacklevel=3)
        return obj
    raise AttributeError(f"module {module!r} has no attribute {name!r}")


class LegacyMapping(Mapping):
    """Read-only dict-style access to a typed result, kept for one release.

    A subclass defines :meth:`as_dict` (the dictionary the method used to return);
    ``result[key]`` warns, iteration, ``len``, ``keys`` and ``items`` (what serialisers use)
    do not.
    """

    def as_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def __getitem__(self, key: str) -> Any:
        warnings.warn(f"{type(self).__name__}[{key!r}] is deprecated and will be removed in the "
                      "next release; use the attributes (or .as_dict())", DeprecationWarning,
                      stacklevel=2)
        return self.as_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.as_dict())

    def __len__(self) -> int:
        return len(self.as_dict())

    def items(self) -> ItemsView[str, Any]:
        return self.as_dict().items()

    def values(self) -> ValuesView[Any]:
        return self.as_dict().values()
