r"""Particle optimizers beyond a fixed step, for objectives with a value.

Each takes a :class:`flowkit.FunctionalObjective` with ``value`` and
``functional_gradient`` (the :math:`L^2(\mu)` gradient ``g_i = N dL/dx_i``) and particles
``x0``, and returns an :class:`OptimResult`. They are standalone loops; the engine option
comes with the generalized contract.

* :func:`armijo_descent`: gradient steps ``x - eta g`` with backtracking until Armijo's
  sufficient decrease :math:`L(x - \eta g) \le L(x) - c\,\eta\,\|g\|^2_{L^2(\mu)}`
  (Nocedal & Wright 2006 [NocedalWright06], Algorithm 3.1), where
  :math:`\|g\|^2_{L^2(\mu)} = \frac1N\sum_i\|g_i\|^2` is the slope of ``L`` along ``-g``.
  Each step starts from the last accepted step times ``grow``.
* :func:`momentum_descent`: heavy ball (Polyak 1964 [Polyak64]),
  :math:`v \leftarrow \beta v - \eta g(x)`, :math:`x \leftarrow x + v`; with
  ``nesterov=True`` the gradient is read at :math:`x + \beta v` (Nesterov 1983
  [Nesterov83], in its momentum form). ``beta = 0`` is plain descent.
* :func:`lbfgs`: L-BFGS with a strong-Wolfe line search ([NocedalWright06], Algorithm 7.5;
  ``torch.optim.LBFGS``) on the flattened particles, with the value's own gradient
  ``g / N``: what ``ksddescent.ksdd_lbfgs`` does with scipy, here on the particles' device
  and dtype.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from flowkit.objective import FunctionalObjective
from flowkit.validation import check_int, check_number, check_positive

__all__ = ["OptimResult", "armijo_descent", "momentum_descent", "lbfgs"]


@dataclass
class OptimResult:
    """Final particles, the value after every iteration (``values[0]`` at ``x0``), the
    iterations, the objective evaluations the method itself needs (each value or gradient
    call counts one; values recorded only for ``values`` do not count) and seconds."""

    particles: Tensor
    values: list[float]
    n_steps: int
    n_evals: int
    wall_time: float
    step_sizes: list[float] = field(default_factory=list)


def _check_objective(objective: object, x0: Tensor) -> FunctionalObjective:
    if not isinstance(objective, FunctionalObjective):
        raise TypeError(f"objective must be a flowkit.FunctionalObjective, got "
                        f"{type(objective).__name__}")
    objective.validate(x0)
    return objective


def _mean_sq(g: Tensor) -> Tensor:
    return g.pow(2).flatten(1).sum(1).mean()


def armijo_descent(objective: FunctionalObjective, x0: Tensor, n_steps: int, *,
                   step_size: float = 1.0, shrink: float = 0.5, c: float = 1e-4,
                   grow: float = 2.0, max_backtracks: int = 30) -> OptimResult:
    r"""Gradient descent with backtracking (Armijo) line search (module docstring).

    Parameters
    ----------
    objective : FunctionalObjective
        With ``value``.
    x0 : Tensor
        Initial particles.
    n_steps : int
        Accepted steps.
    step_size : float
        First trial step.
    shrink : float
        Factor in (0, 1) applied on each rejection.
    c : float
        Armijo constant in (0, 1).
    grow : float
        Factor >= 1 on the last accepted step to start the next search.
    max_backtracks : int
        Rejections allowed per step; past them the run stops (no sufficient decrease is
        measurable: stationary to rounding) and ``n_steps`` counts the accepted steps.
    """
    objective = _check_objective(objective, x0)
    n_steps = check_int(n_steps, "n_steps", minimum=0)
    eta = check_positive(step_size, "step_size")
    shrink = check_number(shrink, "shrink", minimum=0.0, maximum=1.0, strict_minimum=True)
    if shrink == 1.0:
        raise ValueError("shrink must be < 1")
    c = check_number(c, "c", minimum=0.0, maximum=1.0, strict_minimum=True)
    grow = check_number(grow, "grow", minimum=1.0)
    max_backtracks = check_int(max_backtracks, "max_backtracks")
    t0 = time.perf_counter()
    x = x0.detach().clone()
    value = float(objective.value(x))
    values, etas, evals, k = [value], [], 1, 0
    while k < n_steps:
        g = objective.functional_gradient(x)
        slope = float(_mean_sq(g))
        evals += 1
        for _ in range(max_backtracks + 1):
            trial = x - eta * g
            new = float(objective.value(trial))
            evals += 1
            if new <= value - c * eta * slope:
                break
            eta *= shrink
        else:
            break  # no sufficient decrease within max_backtracks: stationary to precision
        x, value = trial, new
        values.append(value)
        etas.append(eta)
        eta *= grow
        k += 1
    return OptimResult(x, values, k, evals, time.perf_counter() - t0, etas)


def momentum_descent(objective: FunctionalObjective, x0: Tensor, n_steps: int, *,
                     step_size: float, momentum: float = 0.9, nesterov: bool = False
                     ) -> OptimResult:
    r"""Heavy-ball or Nesterov momentum on particles (module docstring).

    ``values`` are recorded only when the objective has a value.
    """
    objective = _check_objective(objective, x0)
    n_steps = check_int(n_steps, "n_steps", minimum=0)
    eta = check_positive(step_size, "step_size")
    beta = check_number(momentum, "momentum", minimum=0.0)
    if beta >= 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {beta}")
    t0 = time.perf_counter()
    x = x0.detach().clone()
    v = torch.zeros_like(x)

    def record() -> float | None:
        try:
            return float(objective.value(x))
        except NotImplementedError:
            return None

    values = [record()]
    for _ in range(n_steps):
        g = objective.functional_gradient(x + beta * v if nesterov else x)
        v = beta * v - eta * g
        x = x + v
        values.append(record())
    values = [v for v in values if v is not None]
    return OptimResult(x, values, n_steps, n_steps, time.perf_counter() - t0,
                       [eta] * n_steps)


def lbfgs(objective: FunctionalObjective, x0: Tensor, max_iter: int = 100, *,
          history_size: int = 10, tol: float = 1e-10,
          callback: Callable[[int, Tensor], None] | None = None) -> OptimResult:
    """L-BFGS on the flattened particles with a strong-Wolfe line search (module docstring).

    One L-BFGS iteration per ``torch.optim.LBFGS.step`` (its curvature history persists
    across steps), so ``values`` has one entry per iteration and ``callback(k, x)``, if
    given, sees the particles after iteration ``k``. Stops early once the value's gradient
    ``g / N`` has max entry ``<= tol`` or an iteration leaves the particles unchanged.
    """
    objective = _check_objective(objective, x0)
    max_iter = check_int(max_iter, "max_iter", minimum=0)
    history_size = check_int(history_size, "history_size")
    tol = check_number(tol, "tol", minimum=0.0)
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable (k, x) -> None, got "
                        f"{type(callback).__name__}")
    t0 = time.perf_counter()
    n = x0.shape[0]
    param = x0.detach().clone().requires_grad_(True)
    # max_eval bounds the line search's evaluations per iteration (torch's default,
    # 1.25 * max_iter, would allow a single one here)
    opt = torch.optim.LBFGS([param], lr=1.0, max_iter=1, max_eval=25,
                            history_size=history_size, tolerance_grad=tol,
                            tolerance_change=0.0, line_search_fn="strong_wolfe")
    evals = [0]

    def closure() -> Tensor:
        x = param.detach()
        param.grad = objective.functional_gradient(x) / n  # the value's own gradient
        evals[0] += 1
        return objective.value(x).detach()

    values = [float(objective.value(param.detach()))]
    k = 0
    while k < max_iter:
        before = param.detach().clone()
        opt.step(closure)
        k += 1
        values.append(float(objective.value(param.detach())))
        if callback is not None:
            callback(k, param.detach())
        if float(param.grad.abs().max()) <= tol or torch.equal(before, param.detach()):
            break  # stationary, or the line search found no decrease
    return OptimResult(param.detach(), values, k, 2 * evals[0],
                       time.perf_counter() - t0)
