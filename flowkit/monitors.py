r"""Monitors: what a run records at its monitored steps.

A monitor is a callable ``state -> {name: value}`` (``state`` a
:class:`flowkit.descent.FlowState`, or simply a tensor of particles). Wasserstein
distances go through POT (Flamary et al. 2021 [FlamaryEtAl21]): the exact network simplex
``ot.emd2`` up to a size limit, exact solves between random subsamples above it (the same
quantity), the sliced distance only when asked, and the result always says which one it is.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from flowkit._compat import deprecated_module_attribute
from flowkit.geometry import PointCloud
from flowkit.kernels import Gaussian, Kernel
from flowkit.validation import (
    as_generator,
    check_choice,
    check_compatible,
    check_finite,
    check_int,
    check_particles,
    check_seed,
    check_weights,
    numpy_seed,
)

__all__ = [
    "WassersteinEstimate",
    "OTSolverError",
    "wasserstein",
    "W1",
    "W2",
    "MMD",
    "Monitor",
    "ObjectiveValue",
    "GradNorm",
    "WallTime",
]

#: A monitor: ``state -> {name: value}``, with ``state`` a :class:`flowkit.FlowState` (what
#: the engine passes) or a tensor of particles (what the parameter-space trainers pass).
Monitor = Callable[[Any], dict[str, Any]]

EXACT_MAX = 4096  # above this many points on either side, exact EMD takes many seconds
ESTIMATORS = ("auto", "exact", "subsample", "sliced")


class OTSolverError(RuntimeError):
    """The exact OT solver stopped before optimality: its value would be wrong."""


@dataclass(frozen=True)
class WassersteinEstimate:
    """A Wasserstein distance with how it was obtained.

    ``estimator`` is ``"exact"`` (network simplex on all points), ``"subsample"`` (exact
    solves between random subsamples of both clouds, averaged: the same quantity, slightly
    biased upward) or ``"sliced"`` (the sliced distance, a *different*, smaller quantity, a
    lower bound of W_p). ``method`` adds the sizes: ``"exact"``, ``"subsample(Kxr)"`` (``r``
    solves on ``K`` points), ``"sliced(K)"`` (``K`` projections). ``spread`` is the
    standard deviation over the subsample solves (0 for an exact value, ``None`` for the
    sliced one). ``converged`` is ``False`` only when an exact solve hit its iteration
    limit (with ``on_failure="flag"``).
    """

    value: float
    p: int
    method: str
    converged: bool = True
    estimator: str = "exact"
    spread: float | None = 0.0


def _as_numpy64(x: Tensor) -> np.ndarray:
    return x.detach().flatten(1).to("cpu", torch.float64).numpy()


def _check_options(p: object, estimator: object, exact_max: object, n_repeats: object,
                   n_projections: object, seed: object, num_iter_max: object,
                   on_failure: object) -> int:
    """Check :func:`wasserstein`'s options (also at a monitor's construction); ``p``."""
    if isinstance(p, bool) or p not in (1, 2):
        raise ValueError(f"p must be 1 or 2, got {p!r}")
    check_choice(estimator, "estimator", ESTIMATORS)
    check_int(exact_max, "exact_max")
    check_int(n_repeats, "n_repeats")
    check_int(n_projections, "n_projections")
    check_seed(seed)
    if num_iter_max is not None:
        check_int(num_iter_max, "num_iter_max")
    check_choice(on_failure, "on_failure", ("raise", "flag"))
    return int(p)


def wasserstein(x: Tensor, y: Tensor, p: int = 2, *, estimator: str = "auto",
                exact_max: int = EXACT_MAX, n_repeats: int = 3, n_projections: int = 500,
                seed: int | torch.Generator = 0, num_iter_max: int | None = None,
                on_failure: str = "raise", weights: Tensor | None = None,
                target_weights: Tensor | None = None) -> WassersteinEstimate:
    r"""Wasserstein-``p`` distance between the empirical measures of ``x`` and ``y``.

    Parameters
    ----------
    x, y : Tensor
        Samples ``(N, *event)`` and ``(M, *event)``, finite.
    weights, target_weights : Tensor, optional
        Probability weights ``(N,)`` of ``x`` and ``(M,)`` of ``y`` (default uniform):
        ``ot.emd2(a, b, C)`` and the sliced distance take them; the subsample estimator
        needs uniform weights (``ValueError`` otherwise: use ``"exact"`` or ``"sliced"``).
    p : {1, 2}
        The order; the cost is :math:`\|x-y\|^p` and the result its ``p``-th root.
    estimator : {"auto", "exact", "subsample", "sliced"}
        ``"exact"``: ``ot.emd2`` in float64 on all points. ``"subsample"``: the mean of
        ``n_repeats`` exact solves between random subsamples (without replacement) of at
        most ``exact_max`` points of each cloud, with their standard deviation as
        ``spread``; it estimates the same W_p, with an upward bias of at most
        :math:`W_p(\hat x, x) + W_p(\hat y, y)` (triangle inequality), small when the
        subsamples hold most of the points. ``"sliced"``: the sliced distance
        (``ot.sliced_wasserstein_distance``, Bonneel et al. 2015 [Bonneel15]) with
        ``n_projections`` directions, a different quantity (at most W_p; about
        :math:`W_2/\sqrt d` for a translation). ``"auto"`` (default) is exact up to
        ``exact_max`` points on either side and subsample above, so the reported quantity
        does not change with the number of particles.
    exact_max : int
        Largest cloud solved exactly (an exact solve of 4096 points takes seconds).
    n_repeats : int
        Subsample solves averaged by ``"subsample"``.
    n_projections : int
        Directions of the sliced estimate.
    seed : int or torch.Generator
        Draws the subsamples (CPU) and the sliced directions.
    num_iter_max : int, optional
        Iteration limit of the network simplex.
    on_failure : {"raise", "flag"}
        What an exact solve that stops before optimality does.

    Notes
    -----
    POT's default ``numItermax=100000`` stops the simplex early from about 4000 points and
    returns a wrong value with only a warning; here the limit grows with ``N * M`` and a
    solve that still stops early raises :class:`OTSolverError` (or, with
    ``on_failure="flag"``, returns ``converged=False``).
    """
    p = _check_options(p, estimator, exact_max, n_repeats, n_projections, seed, num_iter_max,
                       on_failure)
    check_particles(x, "x")
    check_particles(y, "y")
    for value, name in ((x, "x"), (y, "y")):
        if value.device.type == "meta":
            raise ValueError(f"{name} is a meta tensor: it has no values to transport")
    if x.shape[1:] != y.shape[1:]:
        raise ValueError(f"x and y must share an event shape, got {tuple(x.shape[1:])} and "
                         f"{tuple(y.shape[1:])}")
    a = _weights64(weights, x, "weights")
    b = _weights64(target_weights, y, "target_weights")
    return _estimate(_as_numpy64(x), _as_numpy64(y), p, estimator, exact_max, n_repeats,
                     n_projections, seed, num_iter_max, on_failure, a, b)


def _weights64(weights: Tensor | None, x: Tensor, name: str) -> np.ndarray | None:
    """Checked probability weights of ``x`` as float64 numpy (``None``: uniform)."""
    if weights is None:
        return None
    check_weights(weights.detach(), x.shape[0], name, like=x)
    w = weights.detach().to("cpu", torch.float64).numpy()
    return w / w.sum()  # exactly normalised in float64, as POT's solvers check


def _estimate(xs: np.ndarray, ys: np.ndarray, p: int, estimator: str, exact_max: int,
              n_repeats: int, n_projections: int, seed: int | torch.Generator,
              num_iter_max: int | None, on_failure: str, a: np.ndarray | None = None,
              b: np.ndarray | None = None) -> WassersteinEstimate:
    n, m = len(xs), len(ys)
    if estimator == "auto":
        estimator = "exact" if max(n, m) <= exact_max else "subsample"
    if estimator == "sliced":
        import ot

        sw = ot.sliced_wasserstein_distance(xs, ys, a, b, n_projections=n_projections, p=p,
                                            seed=numpy_seed(seed))
        return WassersteinEstimate(float(sw), p, f"sliced({n_projections})", True, "sliced",
                                   None)
    if estimator == "exact" or max(n, m) <= exact_max:
        value, converged = _exact(xs, ys, p, num_iter_max, on_failure, a, b)
        if estimator == "exact":
            return WassersteinEstimate(value, p, "exact", converged, "exact", 0.0)
        # every subsample is the whole cloud: one solve is the r identical ones
        return WassersteinEstimate(value, p, f"subsample({max(n, m)}x{n_repeats})",
                                   converged, "subsample", 0.0)
    if a is not None or b is not None:
        raise ValueError(f"the subsample estimator needs uniform weights (subsamples of a "
                         f"weighted measure are not its samples), and {max(n, m)} points exceed "
                         f"exact_max={exact_max}: pass estimator='exact' (slow) or "
                         f"estimator='sliced', or raise exact_max")
    values, converged = [], True
    for ix, iy in subsample_rows(n, m, exact_max, n_repeats, seed):
        value, ok = _exact(xs[ix], ys[iy], p, num_iter_max, on_failure)
        values.append(value)
        converged = converged and ok
    spread = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    size = min(max(n, m), exact_max)
    return WassersteinEstimate(float(np.mean(values)), p, f"subsample({size}x{n_repeats})",
                               converged, "subsample", spread)


def subsample_rows(n: int, m: int, exact_max: int, n_repeats: int,
                seed: int | torch.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    """The rows ``(ix, iy)`` of each of the subsample estimator's ``n_repeats`` solves.

    The one place they are drawn: a sharded monitor
    (:class:`flowkit.distributed.ShardedWasserstein`) gathers exactly these rows.
    """
    g = as_generator(seed, "cpu")
    return [(torch.randperm(n, generator=g, device=g.device)[:exact_max].cpu().numpy(),
             torch.randperm(m, generator=g, device=g.device)[:exact_max].cpu().numpy())
            for _ in range(n_repeats)]


def _exact(xs: np.ndarray, ys: np.ndarray, p: int, num_iter_max: int | None,
           on_failure: str, a: np.ndarray | None = None, b: np.ndarray | None = None
           ) -> tuple[float, bool]:
    import ot

    n, m = len(xs), len(ys)
    cost = ot.dist(xs, ys, metric="sqeuclidean" if p == 2 else "euclidean")
    a = np.full(n, 1.0 / n) if a is None else a
    b = np.full(m, 1.0 / m) if b is None else b
    iters = num_iter_max or max(100_000, 50 * n * m)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the result code below is checked instead
        value, log = ot.emd2(a, b, cost, numItermax=iters, log=True)
    converged = log["result_code"] == 1
    if not converged and on_failure == "raise":
        raise OTSolverError(
            f"ot.emd2 stopped before optimality (result code {log['result_code']}: "
            f"{log.get('warning')}) with numItermax={iters} on {n} x {m} points; pass a larger "
            "num_iter_max or on_failure='flag'"
        )
    return float(max(value, 0.0)) ** (1.0 / p), converged


def _particles(state: Any, transform: Callable[[Tensor], Tensor] | None,
               target: Tensor) -> Tensor:
    """The particles a monitor compares with ``target``: checked, after ``transform``."""
    if isinstance(state, Tensor):
        x = state
    elif isinstance(getattr(state, "particles", None), Tensor):
        x = state.particles
    elif hasattr(state, "__array__") or isinstance(state, (list, tuple)):
        x = check_particles(state, "particles")  # raises, with a conversion hint
    else:
        raise TypeError("state must be a flowkit.FlowState or a tensor of particles "
                        f"(N, *event), got {type(state).__name__}")
    if isinstance(x, Tensor) and transform is not None:
        x = transform(x)
    check_particles(x, "particles", finite=False)
    if x.device.type == "meta":
        raise ValueError("particles is a meta tensor: it has no values to compare")
    if x.shape[1:] != target.shape[1:]:
        raise ValueError(f"particles has event shape {tuple(x.shape[1:])} but target has event "
                         f"shape {tuple(target.shape[1:])}")
    check_finite(x, "particles")
    return x


def _state_weights(state: Any) -> Tensor | None:
    """The particles' weights a FlowState carries (``None``: uniform, or a bare tensor)."""
    w = getattr(state, "weights", None)
    return w if isinstance(w, Tensor) else None


def _flow_state(state: Any, who: str, needs: str) -> Any:
    if isinstance(state, Tensor) or not hasattr(state, needs):
        raise TypeError(f"state must be a flowkit.FlowState (the engine's monitor argument, "
                        f"with .{needs}): {who} cannot be computed from "
                        f"{type(state).__name__}")
    return state


def _check_transform(transform: object) -> None:
    if transform is not None and not callable(transform):
        raise TypeError(f"transform must be callable, got {type(transform).__name__}")


class _Wasserstein:
    p = 2

    def __init__(self, target: Tensor, *, estimator: str = "auto", exact_max: int = EXACT_MAX,
                 n_repeats: int = 3, n_projections: int = 500,
                 seed: int | torch.Generator = 0, on_failure: str = "raise",
                 name: str | None = None, transform: Callable[[Tensor], Tensor] | None = None,
                 target_weights: Tensor | None = None):
        self.target = check_particles(target, "target")
        self._b64 = _weights64(target_weights, target, "target_weights")
        _check_transform(transform)
        self.transform = transform
        self.name = name or f"W{self.p}"
        self._kw = {"estimator": estimator, "exact_max": exact_max, "n_repeats": n_repeats,
                    "n_projections": n_projections, "seed": seed, "num_iter_max": None,
                    "on_failure": on_failure}
        _check_options(self.p, **self._kw)
        self._target64 = _as_numpy64(target)  # converted once, not at every monitored step

    def __call__(self, state: Any) -> dict[str, Any]:
        x = _particles(state, self.transform, self.target)
        a = _weights64(_state_weights(state), x, "weights")
        est = _estimate(_as_numpy64(x), self._target64, self.p, **self._kw, a=a, b=self._b64)
        out: dict[str, Any] = {self.name: est.value, f"{self.name}_method": est.method}
        if est.estimator == "subsample":
            out[f"{self.name}_spread"] = est.spread
        if not est.converged:
            out[f"{self.name}_converged"] = False
        return out


class W1(_Wasserstein):
    """Wasserstein-1 distance to a fixed target sample, through POT (see :func:`wasserstein`).

    As :class:`W2` (weights included)."""

    p = 1


class W2(_Wasserstein):
    """Wasserstein-2 distance to a fixed target sample, through POT (see :func:`wasserstein`).

    ``transform`` maps the particles before the comparison (e.g. ``torch.tanh`` when the
    particles live below a fixed output map). Records ``"W2"`` and ``"W2_method"`` (which
    estimator produced it: ``"exact"``, ``"subsample(Kxr)"`` above ``exact_max`` points, or
    ``"sliced(K)"`` when asked with ``estimator="sliced"``); with the subsample estimator
    also ``"W2_spread"``, and with ``on_failure="flag"`` ``"W2_converged": False`` for a
    failed solve. Non-finite particles raise ``ValueError``. The particles' weights are
    read from ``state.weights`` (the engine's :class:`~flowkit.descent.FlowState`; ``None``
    or a bare tensor of particles: uniform) and ``target_weights`` weights the target.
    """

    p = 2


class MMD:
    """MMD (the square root of the V-statistic MMD^2) to a target sample, as ``"MMD"``.

    Weighted on both sides: the particles' weights are read from ``state.weights`` (as in
    :class:`W2`), the target's are ``target_weights`` (default uniform). Monitors are named
    after the quantity they record (``W1``, ``W2``, ``MMD``); the former name
    ``MMDMonitor`` is a deprecated alias.
    """

    def __init__(self, target: Tensor, kernel: Kernel | None = None, name: str = "MMD",
                 transform: Callable[[Tensor], Tensor] | None = None, *,
                 target_weights: Tensor | None = None):
        self.target = check_particles(target, "target")
        self.target_weights = None if target_weights is None else check_weights(
            target_weights, target.shape[0], "target_weights", like=target)
        _check_transform(transform)
        self.transform = transform
        self.kernel = Gaussian(1.0) if kernel is None else kernel
        if not isinstance(self.kernel, Kernel):
            raise TypeError(f"kernel must be a flowkit.kernels.Kernel, got "
                            f"{type(kernel).__name__}")
        self.name = name

    def __call__(self, state: Any) -> dict[str, float]:
        x = _particles(state, self.transform, self.target)
        check_compatible(x, self.target, "particles", "target")
        w = _state_weights(state)
        if w is not None:
            check_weights(w, x.shape[0], "weights", like=x)
        geom = PointCloud(x, self.target, a=w, b=self.target_weights, kernel=self.kernel,
                          names=("particles", "target", "weights", "target_weights"))
        return {self.name: math.sqrt(max(float(geom.mmd2()), 0.0))}


class ObjectiveValue:
    """The objective's value at the particles, as ``"objective"``."""

    name = "objective"

    def __call__(self, state: Any) -> dict[str, float]:
        state = _flow_state(state, "ObjectiveValue", "objective")
        return {self.name: float(state.objective.value(state.particles))}


class GradNorm:
    r"""Squared :math:`L^2(\mu)` norm of the functional gradient: mean of ``||grad psi(x_i)||^2``.

    Uses the gradient the engine already computed at this step when there is one.
    """

    name = "grad_norm2"

    def __call__(self, state: Any) -> dict[str, float]:
        state = _flow_state(state, "GradNorm", "objective")
        g = state.grad
        if g is None:
            g = state.objective.functional_gradient(state.particles)
        from flowkit.distributed import engine_seam

        # sharded: the global mean over every rank's particles (a collective)
        sq = g.pow(2).flatten(1).sum(1)
        return {self.name: float(engine_seam(state.objective).grad_norm2(sq, None))}


class WallTime:
    """Seconds since the run started, as ``"wall_time"``.

    Reads the engine's clock (``FlowState.elapsed``); a bare tensor of particles carries no
    clock, so it is refused rather than answered with an arbitrary time.
    """

    name = "wall_time"

    def __call__(self, state: Any) -> dict[str, float]:
        state = _flow_state(state, "WallTime", "elapsed")
        return {self.name: float(state.elapsed)}


_DEPRECATED = {"MMDMonitor": ("MMD", MMD)}


def __getattr__(name: str) -> Any:
    return deprecated_module_attribute(__name__, name, _DEPRECATED)
