"""Argument checks shared by the public entry points.

Each check raises a ``ValueError`` or ``TypeError`` that names the argument and says what
was expected, so that a wrong call fails at the door rather than deep inside a kernel.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "check_particles",
    "check_compatible",
    "check_positive",
    "check_nonnegative",
    "check_number",
    "check_finite",
    "check_step_size",
    "check_int",
    "check_choice",
    "check_seed",
    "check_weights",
    "check_signed_weights",
    "as_generator",
    "numpy_seed",
    "rng_state",
    "set_rng_state",
]


def check_particles(x: object, name: str = "x", *, allow_empty: bool = False,
                    finite: bool = True) -> Tensor:
    """A floating tensor of shape ``(N, *event)``, with finite entries if ``finite``.

    Values are not inspected on the ``meta`` device (there are none); shapes still are.
    """
    if not isinstance(x, Tensor):
        hint = (f"; convert it with torch.as_tensor({name}, dtype=torch.float32)"
                if hasattr(x, "__array__") or isinstance(x, (list, tuple)) else "")
        raise TypeError(
            f"{name} must be a torch.Tensor of shape (N, *event), got {type(x).__name__}{hint}"
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
    """Raise if ``x`` holds a NaN or an infinity (one device sync; call outside hot loops).

    A ``meta`` tensor has no values, so it passes.
    """
    if x.device.type == "meta":
        return
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


def check_number(value: object, name: str, *, minimum: float | None = None,
                 maximum: float | None = None, strict_minimum: bool = False,
                 allow_inf: bool = False) -> float:
    """A real number (not a bool; a 0-dim tensor or numpy scalar is read), within bounds.

    ``minimum`` is inclusive unless ``strict_minimum``; ``maximum`` is inclusive. NaN is
    always refused, infinities unless ``allow_inf``.
    """
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0 and not isinstance(
            value, bool):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if math.isnan(value) or (math.isinf(value) and not allow_inf):
        raise ValueError(f"{name} must be a finite number, got {value}")
    if minimum is not None and (value < minimum or (strict_minimum and value == minimum)):
        op = ">" if strict_minimum else ">="
        raise ValueError(f"{name} must be {op} {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def check_positive(value: float, name: str) -> float:
    """A finite real number > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a positive number, got {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return float(value)


def check_nonnegative(value: float, name: str) -> float:
    """A finite real number >= 0."""
    return check_number(value, name, minimum=0.0)


def check_choice(value: object, name: str, options: Sequence[str]) -> str:
    """One of a fixed set of option strings."""
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"{name} must be one of {tuple(options)}, got {value!r}")
    return value


def check_step_size(step_size: float | Callable[[int], float]) -> Callable[[int], float]:
    """A constant step size > 0, or a schedule ``k -> eta_k``; returned as a schedule."""
    if callable(step_size):
        return step_size
    eta = check_positive(step_size, "step_size")
    return lambda k: eta


def check_int(value: object, name: str, minimum: int = 1, maximum: int | None = None) -> int:
    """An ``int`` (not a bool; numpy integers are accepted) with ``minimum <= value``.

    Raises ``ValueError`` for every failure (wrong type included), so callers that catch
    ``ValueError`` for a bad count keep working.
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    value = int(value)
    if value < minimum or (maximum is not None and value > maximum):
        upper = f" and <= {maximum}" if maximum is not None else ""
        raise ValueError(f"{name} must be an int >= {minimum}{upper}, got {value!r}")
    return value


def check_seed(seed: object, name: str = "seed") -> int | torch.Generator:
    """A non-negative ``int`` (not a bool) or a ``torch.Generator``, returned unchanged."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer, torch.Generator)):
        raise TypeError(f"{name} must be an int or a torch.Generator, got {type(seed).__name__}")
    if not isinstance(seed, torch.Generator):
        if not 0 <= int(seed) < 2**64:
            raise ValueError(f"{name} must be an int in [0, 2**64), got {seed}")
        return int(seed)
    return seed


def check_weights(weights: object, n: int, name: str = "weights", *, like: Tensor | None = None,
                  normalized: bool = True, atol: float = 1e-5) -> Tensor:
    """Particle weights: a tensor ``(n,)`` of finite, non-negative entries (summing to 1).

    ``like``, when given, fixes the device and dtype the weights must share. With
    ``normalized`` the sum must be 1 within ``atol`` (relative to the dtype's precision the
    default suits float32 and float64).
    """
    # the shape, dtype, device and finiteness checks are those of any weight vector
    check_signed_weights(weights, n, name, like=like)
    if weights.device.type == "meta":
        return weights
    if bool((weights < 0).any()):
        raise ValueError(f"{name} must be non-negative, got a minimum of "
                         f"{float(weights.min()):.3g}")
    if normalized:
        total = float(weights.sum())
        if abs(total - 1.0) > atol:
            raise ValueError(f"{name} must sum to 1, got {total:.6g}; divide by their sum")
    return weights


def as_generator(seed: int | torch.Generator, device: torch.device | str, name: str = "seed"
                 ) -> torch.Generator:
    """A ``torch.Generator`` on ``device`` from a seed (or the caller's own generator)."""
    seed = check_seed(seed, name)
    if isinstance(seed, torch.Generator):
        return seed
    return torch.Generator(device=device).manual_seed(seed)


def numpy_seed(seed: int | torch.Generator, name: str = "seed") -> int:
    """A 32-bit integer seed for numpy / POT from a seed or a ``torch.Generator``.

    A generator is advanced by one draw, so successive calls give fresh seeds; an integer
    is reduced modulo ``2**32`` because numpy's ``RandomState`` takes 32-bit seeds.
    """
    seed = check_seed(seed, name)
    if isinstance(seed, torch.Generator):
        return int(torch.randint(0, 2**31 - 1, (1,), generator=seed, device=seed.device))
    return int(seed) % (2**32)


def rng_state(device: torch.device | str | None = None) -> dict[str, Tensor]:
    """The global torch RNG state (CPU, plus the device's when it is CUDA), to checkpoint."""
    state = {"cpu": torch.get_rng_state()}
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda" and torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Tensor] | Tensor,
                  device: torch.device | str | None = None) -> None:
    """Restore what :func:`rng_state` returned (a bare CPU state tensor is accepted too)."""
    if isinstance(state, Tensor):
        state = {"cpu": state}
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and device is not None and torch.device(device).type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], torch.device(device))


def check_signed_weights(weights: object, n: int, name: str = "weights", *,
                         like: Tensor | None = None, finite: bool = True) -> Tensor:
    """Signed weights (e.g. the ``+1/N, -1/M`` of a witness): a floating tensor ``(n,)``, with
    finite entries if ``finite``, on ``like``'s device with its dtype when ``like`` is given."""
    if not isinstance(weights, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape ({n},), got "
                        f"{type(weights).__name__}")
    if weights.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), one weight per sample, got "
                         f"{tuple(weights.shape)}")
    if not weights.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {weights.dtype}")
    if like is not None and weights.device != like.device:
        raise ValueError(f"{name} is on {weights.device} but the samples are on "
                         f"{like.device}; move them with {name}.to(x.device)")
    if like is not None and weights.dtype != like.dtype:
        raise TypeError(f"{name} has dtype {weights.dtype} but the samples have {like.dtype}; "
                        f"cast them with {name}.to(x.dtype)")
    if finite:
        check_finite(weights, name)
    return weights
