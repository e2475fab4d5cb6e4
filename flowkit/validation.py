"""Argument checks shared by the public entry points.

Each check raises a ``ValueError`` or ``TypeError`` that names the argument and says what
was expected, so that a wrong call fails at the door rather than deep inside a kernel.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = [
    "check_particles",
    "check_compatible",
    "check_positive",
    "check_finite",
    "check_step_size",
    "check_int",
    "as_generator",
]


def check_particles(x: object, name: str = "x", *, allow_empty: bool = False,
                    finite: bool = True) -> Tensor:
    """A floating tensor of shape ``(N, *event)``, with finite entries if ``finite``."""
    if not isinstance(x, Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor of shape (N, *event), got {type(x).__name__}"
        )
    if x.dim() < 2:
        raise ValueError(
            f"{name} must have shape (N, *event) with at least 2 dimensions, got shape "
            f"{tuple(x.shape)}; reshape a batch of scalars to (N, 1)"
        )
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.shape[0] == 0 and not allow_empty:
        raise ValueError(
            f"{name} is empty: expected at least one sample, got shape {tuple(x.shape)}"
        )
    if finite:
        check_finite(x, name)
    return x


def check_finite(x: Tensor, name: str) -> None:
    """Raise if ``x`` holds a NaN or an infinity (one device sync; call outside hot loops)."""
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} contains {bad} non-finite value(s) (NaN or inf)")


def check_compatible(x: Tensor, ref: Tensor, name: str = "x", ref_name: str = "target") -> None:
    """Same event shape, device and dtype as the reference sample."""
    if x.shape[1:] != ref.shape[1:]:
        raise ValueError(
            f"{name} has event shape {tuple(x.shape[1:])} but {ref_name} has event shape "
            f"{tuple(ref.shape[1:])}; particles and {ref_name} must live in the same space"
        )
    if x.device != ref.device:
        raise ValueError(
            f"{name} is on {x.device} but {ref_name} is on {ref.device}; move one of them "
            f"(e.g. {name}.to({ref_name}.device))"
        )
    if x.dtype != ref.dtype:
        raise TypeError(
            f"{name} has dtype {x.dtype} but {ref_name} has dtype {ref.dtype}; cast one of them"
        )


def check_positive(value: float, name: str) -> float:
    """A finite real number > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a positive number, got {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return float(value)


def check_step_size(step_size: float | Callable[[int], float]) -> Callable[[int], float]:
    """A constant step size > 0, or a schedule ``k -> eta_k``; returned as a schedule."""
    if callable(step_size):
        return step_size
    eta = check_positive(step_size, "step_size")
    return lambda k: eta


def check_int(value: object, name: str, minimum: int = 1) -> int:
    """An ``int`` (not a bool) ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def check_seed(seed: object, name: str = "seed") -> int | torch.Generator:
    """An ``int`` (not a bool) or a ``torch.Generator``, returned unchanged."""
    if isinstance(seed, bool) or not isinstance(seed, (int, torch.Generator)):
        raise TypeError(f"{name} must be an int or a torch.Generator, got {type(seed).__name__}")
    return seed


def as_generator(seed: int | torch.Generator, device: torch.device | str, name: str = "seed"
                 ) -> torch.Generator:
    """A ``torch.Generator`` on ``device`` from a seed (or the caller's own generator)."""
    if isinstance(check_seed(seed, name), torch.Generator):
        return seed
    return torch.Generator(device=device).manual_seed(seed)
