"""Running a dynamics, and its local linear rate: predicted from the spectrum, measured
from the distances.

Near an equilibrium ``z*`` each dynamics of :mod:`flowkit.games.dynamics` is, to first
order, a linear map ``M`` on its stacked state; the distance to ``z*`` then behaves like
``rho(M)^t`` with ``rho`` the spectral radius (Gelfand's formula). Liang & Stokes (2019)
read their local rates off exactly this linearization (closed form, docs/games.md).
:func:`predicted_rate` computes ``rho(M)`` by differentiating the dynamics' own update;
:func:`measured_rate` fits ``d_t ~ c rho^t`` to a run; :func:`bilinear_rate` is the
closed form on ``U = x^T C y``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from flowkit.games.dynamics import Dynamics
from flowkit.games.game import Game

__all__ = [
    "Trajectory",
    "run",
    "measured_rate",
    "predicted_rate",
    "linearization",
    "spectral_radius",
    "bilinear_rate",
]

# A run stops once the distance has grown by this factor: the rate is long measurable by
# then, and going on would only overflow.
_BLOWUP = 1e12
# Distances below FLOOR_FACTOR * eps * ||z*|| are rounding noise of the field near z*
# (and below FLOOR_FACTOR * tiny, float64 has no precision left).
_FLOOR_FACTOR = 1e3


@dataclass(frozen=True)
class Trajectory:
    """The record of :func:`run`.

    Attributes
    ----------
    distances : Tensor
        ``||z_t - z*||`` for ``t = 0, 1, ...`` in float64; shorter than ``n_steps + 1``
        when the run stopped on a blow-up.
    final : Tensor
        The last iterate recorded before any blow-up.
    diverged : bool
        The iterates blew up (non-finite, or ``_BLOWUP`` times farther than at the start)
        or ended more than ``divergence_factor`` times farther from ``z*`` than they began.
    stopped_at : int or None
        The step at which a blow-up stopped the run.
    floor : float
        Distances below this are rounding noise and not fitted: ``1e3 eps ||z*||`` in the
        game's dtype (a field evaluated near ``z*`` carries an absolute error of order
        ``eps ||z*||``), and at least ``1e3`` times the smallest normal float64.
    dynamics : str
        ``repr`` of the dynamics.
    iterates : Tensor or None
        All iterates, shape ``(len(distances), dim)``, when recorded.
    """

    distances: Tensor
    final: Tensor
    diverged: bool
    stopped_at: int | None
    dynamics: str
    floor: float
    iterates: Tensor | None = None

    @property
    def rate(self) -> float:
        """:func:`measured_rate` with its defaults."""
        return measured_rate(self)


def run(game: Game, dyn: Dynamics, z0: Tensor | Sequence[float], n_steps: int, *,
        z_star: Tensor | None = None, divergence_factor: float = 10.0,
        record_iterates: bool = False) -> Trajectory:
    """Run ``dyn`` on ``game`` for ``n_steps`` steps from ``z0`` and record the distance to
    the equilibrium at every step.

    Parameters
    ----------
    game : Game
    dyn : Dynamics
        Bound to ``game`` and reset first.
    z0 : Tensor
        Starting point, a 1-D tensor of size ``game.dim`` in the game's dtype.
    n_steps : int
    z_star : Tensor, optional
        The equilibrium; defaults to ``game.equilibrium`` (required when that is unknown).
    divergence_factor : float
        A run that ends farther than ``divergence_factor * ||z0 - z*||`` from ``z*`` is
        flagged ``diverged``.
    record_iterates : bool
        Keep every iterate (memory ``O(n_steps * dim)``).

    Returns
    -------
    Trajectory
        A diverging run is not an error: it stops at the blow-up and is reported with
        ``diverged=True`` and its measured rate.
    """
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 0:
        raise ValueError(f"n_steps must be an int >= 0, got {n_steps!r}")
    if not isinstance(dyn, Dynamics):
        raise TypeError(f"dyn must be a flowkit.games.Dynamics, got {type(dyn).__name__}")
    if not (divergence_factor > 1):
        raise ValueError(f"divergence_factor must be > 1, got {divergence_factor}")
    z = game.check_point(z0, "z0")
    if z_star is None:
        z_star = game.equilibrium
        if z_star is None:
            raise ValueError(f"{type(game).__name__} has no known equilibrium: pass z_star")
    z_star = game.check_point(z_star, "z_star")
    dyn.bind(game)
    iterates = [z] if record_iterates else None
    d0 = float(torch.linalg.vector_norm(z - z_star))
    distances = [d0]
    limit = _BLOWUP * d0 if d0 > 0 else _BLOWUP
    final, stopped_at = z, None
    with torch.no_grad():
        for t in range(1, n_steps + 1):
            z = dyn.step(z)
            d = float(torch.linalg.vector_norm(z - z_star))
            if not math.isfinite(d) or d > limit:
                stopped_at = t
                if math.isfinite(d):
                    distances.append(d)
                break
            distances.append(d)
            final = z
            if iterates is not None:
                iterates.append(z)
    grew = d0 > 0 and distances[-1] > divergence_factor * d0
    floor = _FLOOR_FACTOR * max(torch.finfo(game.dtype).eps * float(z_star.norm()),
                                torch.finfo(torch.float64).tiny)
    return Trajectory(
        distances=torch.tensor(distances, dtype=torch.float64),
        final=final.detach(),
        diverged=stopped_at is not None or grew,
        stopped_at=stopped_at,
        dynamics=repr(dyn),
        floor=floor,
        iterates=None if iterates is None else torch.stack(iterates).detach(),
    )


def measured_rate(traj: Trajectory | Tensor | Sequence[float], tail: float = 0.5,
                  floor: float | None = None) -> float:
    """Observed per-step contraction factor: ``exp`` of the least-squares slope of
    ``log d_t`` against ``t`` over the tail of the run.

    The fit uses only the usable prefix of the distances, up to the first one that is not
    finite or not above ``floor`` (rounding noise lives below it); of that prefix, the
    last ``tail`` fraction, which skips the transient of the sub-dominant modes. A
    least-squares slope averages out the bounded oscillation of rotating or non-normal
    dynamics, where a ratio of two distances would not. A Jordan block (a repeated
    eigenvalue) makes ``d_t ~ t rho^t``; the fitted rate then exceeds ``rho`` by about
    ``rho / t`` at the window's centre ``t``, so long windows matter there.

    Parameters
    ----------
    traj : Trajectory or 1-D sequence of distances
    tail : float
        Fraction in ``(0, 1]`` of the usable prefix to fit.
    floor : float, optional
        Absolute floor; default ``traj.floor`` for a :class:`Trajectory`, else 0.

    Returns
    -------
    float
        ``> 1`` for a diverging run, ``0.0`` when the distance hit exactly zero at once.
    """
    d = traj.distances if isinstance(traj, Trajectory) else torch.as_tensor(traj)
    d = d.detach().to("cpu", torch.float64).reshape(-1)
    if not 0 < tail <= 1:
        raise ValueError(f"tail must be in (0, 1], got {tail}")
    if floor is None:
        floor = traj.floor if isinstance(traj, Trajectory) else 0.0
    finite = torch.isfinite(d)
    if d.numel() == 0 or not bool(finite[0]) or float(d[0]) < 0:
        raise ValueError("distances must start with a finite value >= 0")
    bad = (~(finite & (d > floor))).nonzero()
    n = int(bad[0]) if bad.numel() else d.numel()
    if n == 0:  # started at the equilibrium
        return 0.0
    if n == 1:  # left the usable range after one step: one ratio is all there is
        if d.numel() == 1:
            raise ValueError("measuring a rate needs at least two distances")
        return float(d[1] / d[0]) if bool(finite[1]) else math.inf
    start = min(n - 2, int(math.floor((1 - tail) * n)))
    t = torch.arange(start, n, dtype=torch.float64)
    logd = d[start:n].log()
    tc = t - t.mean()
    slope = float((tc * (logd - logd.mean())).sum() / (tc * tc).sum())
    return math.exp(slope)


def linearization(game: Game, dyn: Dynamics, z_star: Tensor | None = None) -> Tensor:
    """The Jacobian of ``dyn``'s stacked update at the equilibrium (see
    :meth:`Dynamics.linearization`); ``z_star`` defaults to ``game.equilibrium``."""
    if z_star is None:
        z_star = game.equilibrium
        if z_star is None:
            raise ValueError(f"{type(game).__name__} has no known equilibrium: pass z_star")
    return dyn.linearization(game, z_star)


def spectral_radius(matrix: Tensor) -> float:
    """``max |lambda|`` over the eigenvalues of a square matrix (computed in float64)."""
    return float(torch.linalg.eigvals(matrix.detach().to(torch.float64)).abs().max())


def predicted_rate(game: Game, dyn: Dynamics, z_star: Tensor | None = None) -> float:
    """Predicted local linear rate: the spectral radius of the linearized update of
    ``dyn`` at ``z_star`` (closed forms in docs/games.md). Below 1 the equilibrium is
    locally attracting with ``||z_t - z*|| = O((rho + eps)^t)``; above 1 the dynamics leaves it."""
    return spectral_radius(linearization(game, dyn, z_star))


def bilinear_rate(dyn: Dynamics, sigmas: Iterable[float] | Tensor) -> float:
    """Closed-form rate of ``dyn`` on ``U = x^T C y`` from the singular values ``sigmas``
    of ``C`` (zeros included for a non-square ``C``): the worst per-singular-value factor
    of docs/games.md, e.g. ``sqrt(1 + eta^2 s^2)`` for SGA."""
    values = [float(s) for s in (sigmas.tolist() if isinstance(sigmas, Tensor) else sigmas)]
    if not values:
        raise ValueError("sigmas must hold at least one singular value")
    if any(s < 0 or not math.isfinite(s) for s in values):
        raise ValueError(f"singular values must be finite and >= 0, got {values}")
    return max(dyn.bilinear_factor(s) for s in values)
