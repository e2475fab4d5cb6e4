"""The toy data sets of Nitanda & Suzuki (2018, sec. 7), generated from a seed.

The scalings follow the usual WGAN-GP toy code: the 8 modes sit on a circle of radius
``sqrt(2)``, the 25 modes on a 5 x 5 grid spanning ``[-sqrt(2), sqrt(2)]^2`` and the swiss
roll fits in about ``[-1.7, 2]^2``. Everything is float32 on the CPU unless asked.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from flowkit.validation import as_generator, check_int, check_number

__all__ = ["eight_gaussians", "twenty_five_gaussians", "twenty_five_gaussians_centers",
           "twenty_five_gaussians_score", "mixture_score", "swiss_roll", "digits", "DATASETS"]


def _generator(seed: int | torch.Generator) -> torch.Generator:
    return as_generator(seed, "cpu")  # the points are drawn on the CPU, then moved


def _check_output(dtype: object, device: object) -> None:
    """A floating dtype and a device torch knows (checked before anything is drawn)."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    try:
        torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must name a torch device ('cpu', 'cuda', ...), got "
                         f"{device!r}") from err


def eight_gaussians(n: int = 500, seed: int | torch.Generator = 0, *, radius: float = math.sqrt(2),
                    std: float = 0.02 / math.sqrt(2), dtype: torch.dtype = torch.float32,
                    device: str | torch.device = "cpu") -> Tensor:
    """``n`` points from 8 Gaussians with centres evenly spaced on a circle, shape ``(n, 2)``."""
    check_int(n, "n")
    check_number(radius, "radius", minimum=0.0, strict_minimum=True)
    check_number(std, "std", minimum=0.0)
    _check_output(dtype, device)
    g = _generator(seed)
    angles = torch.arange(8, dtype=torch.float64) * (math.pi / 4)
    centers = radius * torch.stack([angles.cos(), angles.sin()], 1)
    idx = torch.randint(0, 8, (n,), generator=g)
    x = centers[idx] + std * torch.randn(n, 2, generator=g, dtype=torch.float64)
    return x.to(device=device, dtype=dtype)


def twenty_five_gaussians(n: int = 1000, seed: int | torch.Generator = 0, *,
                          half_width: float = math.sqrt(2), std: float = 0.05 / (2 * math.sqrt(2)),
                          dtype: torch.dtype = torch.float32,
                          device: str | torch.device = "cpu") -> Tensor:
    """``n`` points from 25 Gaussians on a 5 x 5 grid, shape ``(n, 2)``."""
    check_int(n, "n")
    check_number(half_width, "half_width", minimum=0.0, strict_minimum=True)
    check_number(std, "std", minimum=0.0)
    _check_output(dtype, device)
    g = _generator(seed)
    centers = twenty_five_gaussians_centers(half_width)
    idx = torch.randint(0, 25, (n,), generator=g)
    x = centers[idx] + std * torch.randn(n, 2, generator=g, dtype=torch.float64)
    return x.to(device=device, dtype=dtype)


def twenty_five_gaussians_centers(half_width: float = math.sqrt(2)) -> Tensor:
    """The 25 modes of :func:`twenty_five_gaussians`, a 5 x 5 grid, float64 ``(25, 2)``."""
    check_number(half_width, "half_width", minimum=0.0, strict_minimum=True)
    ticks = torch.linspace(-half_width, half_width, 5, dtype=torch.float64)
    return torch.cartesian_prod(ticks, ticks)


def mixture_score(x: Tensor, centers: Tensor, std: float) -> Tensor:
    r"""Score :math:`\nabla\log\pi(x)` of the equal-weight mixture
    :math:`\pi = \frac1K\sum_k \mathcal N(c_k, \mathrm{std}^2 I)`, in closed form.

    :math:`\nabla\log\pi(x) = \sum_k r_k(x)\,(c_k - x)/\mathrm{std}^2` with the
    responsibilities :math:`r_k \propto e^{-|x - c_k|^2 / (2\,\mathrm{std}^2)}` (a softmax,
    stable however far ``x`` is from every centre). ``x`` is ``(N, d)``, ``centers``
    ``(K, d)``; the result has the dtype and device of ``x``.
    """
    if not isinstance(x, Tensor) or x.dim() != 2:
        raise ValueError(f"x must be a tensor (N, d), got "
                         f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
    if not isinstance(centers, Tensor) or centers.dim() != 2 or centers.shape[1] != x.shape[1]:
        raise ValueError(f"centers must be a tensor (K, {x.shape[1]}) like x's points, got "
                         f"{tuple(centers.shape) if isinstance(centers, Tensor) else centers!r}")
    std = check_number(std, "std", minimum=0.0, strict_minimum=True)
    diff = centers.to(dtype=x.dtype, device=x.device)[None] - x[:, None]  # (N, K, d)
    resp = torch.softmax(-diff.pow(2).sum(-1) / (2 * std**2), 1)
    return torch.einsum("nk,nkd->nd", resp, diff) / std**2


def twenty_five_gaussians_score(x: Tensor, *, half_width: float = math.sqrt(2),
                                std: float = 0.05 / (2 * math.sqrt(2))) -> Tensor:
    """The score of the law :func:`twenty_five_gaussians` samples (same ``half_width`` and
    ``std``), for the flows that need a target's score (:mod:`flowkit.flows`)."""
    return mixture_score(x, twenty_five_gaussians_centers(half_width), std)


def swiss_roll(n: int = 500, seed: int | torch.Generator = 0, *, noise: float = 0.25,
               scale: float = 7.5, dtype: torch.dtype = torch.float32,
               device: str | torch.device = "cpu") -> Tensor:
    """``n`` points of the 2-D swiss roll ``t (cos t, sin t)``, ``t ~ U[1.5 pi, 4.5 pi]``,
    with Gaussian noise, divided by ``scale`` (shape ``(n, 2)``)."""
    check_int(n, "n")
    check_number(noise, "noise", minimum=0.0)
    check_number(scale, "scale", minimum=0.0, strict_minimum=True)
    _check_output(dtype, device)
    g = _generator(seed)
    t = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=g, dtype=torch.float64))
    x = torch.stack([t * t.cos(), t * t.sin()], 1) + noise * torch.randn(
        n, 2, generator=g, dtype=torch.float64)
    return (x / scale).to(device=device, dtype=dtype)


def digits(n: int | None = None, seed: int | torch.Generator = 0, *,
           dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> Tensor:
    """scikit-learn's bundled 8 x 8 digits scaled to [-1, 1], shape ``(n, 1, 8, 8)``.

    Needs scikit-learn (not a dependency of flowkit); ``n`` draws a seeded subset of the
    1797 images (without replacement, so ``n <= 1797``).
    """
    if n is not None:
        check_int(n, "n")
    g = _generator(seed)
    _check_output(dtype, device)
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("digits() needs scikit-learn: pip install scikit-learn") from err
    images = torch.as_tensor(load_digits().images, dtype=torch.float64) / 8.0 - 1.0
    if n is not None:
        check_int(n, "n", maximum=len(images))
        idx = torch.randperm(len(images), generator=g)[:n]
        images = images[idx]
    return images[:, None].to(device=device, dtype=dtype)


#: Dataset name (the ``--dataset`` choices of the command line) -> sampler ``(n, seed=...)``.
DATASETS = {
    "8gaussians": eight_gaussians,
    "25gaussians": twenty_five_gaussians,
    "swissroll": swiss_roll,
}
