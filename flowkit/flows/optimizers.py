r"""Particle optimizers beyond a fixed step: the engine's step rules.

Each rule is an object passed as ``step_rule=`` to :class:`flowkit.FunctionalGradientDescent`;
the engine computes the functional gradient ``g`` (the :math:`L^2(\mu)` gradient,
``g_i = (1/w_i) dL/dx_i``) and hands the step to the rule, keeping its monitors,
callbacks, divergence rules and checkpoints (the rule's own state included, so a resumed
run is bit-identical). There is one implementation of each rule: the standalone functions
below are thin wrappers that run the engine.

* :class:`Armijo`: gradient steps ``x - eta g`` with backtracking until Armijo's
  sufficient decrease :math:`L(x - \eta g) \le L(x) - c\,\eta\,\|g\|^2_{L^2(\mu)}`
  (Nocedal & Wright 2006 [NocedalWright06], Algorithm 3.1), where
  :math:`\|g\|^2_{L^2(\mu)} = \sum_i w_i\|g_i\|^2` is the slope of ``L`` along ``-g``.
  The first trial is the engine's ``step_size``, each later one the last accepted step times
  ``grow``. The accepted step is a gradient layer's ``eta``, so layers are kept and replay.
* :class:`Momentum`: heavy ball (Polyak 1964 [Polyak64]),
  :math:`v \leftarrow \beta v - \eta g(x)`, :math:`x \leftarrow x + v`; with
  ``nesterov=True`` the gradient is read at :math:`x + \beta v` (Nesterov 1983
  [Nesterov83], in its momentum form; one more gradient per step, as the engine's own
  ``g`` at ``x`` feeds its monitors). ``beta = 0`` is plain descent, bit for bit.
* :class:`LBFGS`: L-BFGS with a strong-Wolfe line search ([NocedalWright06], Algorithm
  7.5; ``torch.optim.LBFGS``) on the flattened particles, one iteration per engine step,
  with the value's own gradient ``w_i g_i``: what ``ksddescent.ksdd_lbfgs`` does with scipy,
  here on the particles' device and dtype. The engine's ``step_size`` is its ``lr``.

Momentum and L-BFGS are not per-sample maps of the current particles (the velocity, the
curvature pairs and the line search couple all particles and steps), so they cannot be
stacked as layers: with them the engine refuses ``keep_layers=True``.

Theorem 1 of Nitanda & Suzuki 2018 [NS18] (and :func:`flowkit.theory.theorem1_certificate`)
is stated for the fixed step ``eta <= 1/L``; it certifies none of these rules' runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from flowkit.objective import FunctionalObjective, call_weighted
from flowkit.validation import check_int, check_number, check_positive

__all__ = ["StepRule", "Armijo", "Momentum", "LBFGS", "OptimResult", "armijo_descent",
           "momentum_descent", "lbfgs"]


def _sq_norm(g: Tensor, w: Tensor | None) -> Tensor:
    r""":math:`\|g\|^2_{L^2(\mu)}`: the mean (uniform) or ``w``-weighted sum of ``|g_i|^2``."""
    sq = g.pow(2).flatten(1).sum(1)
    return sq.mean() if w is None else (w * sq).sum()


class StepRule:
    """How the engine turns the functional gradient into a step (base class).

    Subclasses implement :meth:`step`; ``keeps_layers`` says whether the update is a
    per-sample map ``x -> x - eta v(x)`` (then the engine stacks it as a layer), and
    ``needs_value`` whether the rule evaluates the objective's value.
    """

    keeps_layers: bool = True
    #: why the update is not a per-sample map (the engine's error when keeps_layers is False)
    no_layers_reason: str = ""
    needs_value: bool = False
    #: the run's stop reason when :meth:`step` returns None
    stop_reason: str = "step_rule"

    def reset(self) -> None:
        """Forget any state: called by the engine before a run's first step."""

    def step(self, objective: FunctionalObjective, x: Tensor, weights: Tensor | None,
             grad: Tensor, step_size: float) -> tuple[Tensor, float] | None:
        """New particles and the step actually taken, from ``x`` with gradient ``grad``;
        ``None`` stops the run (with :attr:`stop_reason`)."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """State carried between steps (saved in checkpoints)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""

    def _value(self, objective: FunctionalObjective, x: Tensor, w: Tensor | None) -> float:
        self.n_evals += 1
        return float(call_weighted(objective.value, x, w))


class Armijo(StepRule):
    """Backtracking (Armijo) line search on the engine's gradient step (module docstring).

    Parameters
    ----------
    shrink : float
        Factor in (0, 1) applied on each rejection.
    c : float
        Armijo constant in (0, 1).
    grow : float
        Factor >= 1 on the last accepted step to start the next search.
    max_backtracks : int
        Rejections allowed per step; past them the run stops with ``stop_reason
        "line_search"`` (no sufficient decrease is measurable: stationary to rounding).

    Attributes
    ----------
    n_evals : int
        Value evaluations so far (reset with the run).
    last_value : float or None
        The value at the last accepted particles.
    """

    needs_value = True
    stop_reason = "line_search"

    def __init__(self, shrink: float = 0.5, c: float = 1e-4, grow: float = 2.0,
                 max_backtracks: int = 30):
        self.shrink = check_number(shrink, "shrink", minimum=0.0, maximum=1.0,
                                   strict_minimum=True)
        if self.shrink == 1.0:
            raise ValueError("shrink must be < 1")
        self.c = check_number(c, "c", minimum=0.0, maximum=1.0, strict_minimum=True)
        self.grow = check_number(grow, "grow", minimum=1.0)
        self.max_backtracks = check_int(max_backtracks, "max_backtracks", minimum=0)
        self.reset()

    def __repr__(self) -> str:
        return (f"Armijo(shrink={self.shrink}, c={self.c}, grow={self.grow}, "
                f"max_backtracks={self.max_backtracks})")

    def reset(self) -> None:
        self.trial: float | None = None
        self.n_evals = 0
        self.last_value: float | None = None
        self._at: tuple[Tensor, Tensor | None] | None = None  # where last_value was taken

    def step(self, objective, x, weights, grad, step_size):
        eta = step_size if self.trial is None else self.trial
        at = self._at
        if at is not None and at[0] is x and at[1] is weights:
            value = self.last_value  # the previous accepted trial: no second evaluation
        else:
            value = self._value(objective, x, weights)
        slope = float(_sq_norm(grad, weights))
        for _ in range(self.max_backtracks + 1):
            trial = x - eta * grad
            new = self._value(objective, trial, weights)
            if new <= value - self.c * eta * slope:
                break
            eta *= self.shrink
        else:
            return None
        self.trial, self.last_value, self._at = eta * self.grow, new, (trial, weights)
        return trial, eta

    def state_dict(self) -> dict[str, Any]:
        return {"trial": self.trial, "n_evals": self.n_evals}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.trial, self.n_evals = state["trial"], state["n_evals"]


class Momentum(StepRule):
    """Heavy-ball or Nesterov momentum on particles (module docstring).

    Parameters
    ----------
    momentum : float
        :math:`\\beta \\in [0, 1)`.
    nesterov : bool
        Read the gradient at ``x + beta v``.
    """

    keeps_layers = False
    no_layers_reason = ("each particle's velocity, accumulated over the previous steps, is "
                        "state outside the particles")

    def __init__(self, momentum: float = 0.9, nesterov: bool = False):
        beta = check_number(momentum, "momentum", minimum=0.0)
        if beta >= 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {beta}")
        self.momentum, self.nesterov = beta, bool(nesterov)
        self.reset()

    def __repr__(self) -> str:
        return f"Momentum(momentum={self.momentum}, nesterov={self.nesterov})"

    def reset(self) -> None:
        self.velocity: Tensor | None = None
        self.n_evals = 0

    def step(self, objective, x, weights, grad, step_size):
        beta = self.momentum
        v = torch.zeros_like(x) if self.velocity is None else self.velocity
        if self.nesterov:
            grad = call_weighted(objective.functional_gradient, x + beta * v, weights)
        self.n_evals += 1
        self.velocity = beta * v - step_size * grad
        return x + self.velocity, step_size

    def state_dict(self) -> dict[str, Any]:
        return {"velocity": self.velocity, "n_evals": self.n_evals}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.velocity, self.n_evals = state["velocity"], state["n_evals"]


class LBFGS(StepRule):
    """L-BFGS on the flattened particles, one iteration per engine step (module docstring).

    Parameters
    ----------
    history_size : int
        Curvature pairs kept.
    max_eval : int
        Evaluations allowed to one iteration's line search.
    tol : float
        Stop (``stop_reason "converged"``) once the value's gradient has max entry
        ``<= tol`` or an iteration leaves the particles unchanged.

    Attributes
    ----------
    n_evals : int
        Objective evaluations (a value and a gradient count two).
    """

    keeps_layers = False
    no_layers_reason = ("its curvature pairs and line search couple all particles and all "
                        "previous steps")
    needs_value = True
    stop_reason = "converged"

    def __init__(self, history_size: int = 10, max_eval: int = 25, tol: float = 1e-10):
        self.history_size = check_int(history_size, "history_size")
        self.max_eval = check_int(max_eval, "max_eval")
        self.tol = check_number(tol, "tol", minimum=0.0)
        self.reset()

    def __repr__(self) -> str:
        return (f"LBFGS(history_size={self.history_size}, max_eval={self.max_eval}, "
                f"tol={self.tol})")

    def reset(self) -> None:
        self._opt: torch.optim.LBFGS | None = None
        self._param: Tensor | None = None
        self._pending: dict[str, Any] | None = None
        self.done = False
        self.n_evals = 0

    def _optimizer(self, x: Tensor, lr: float) -> torch.optim.LBFGS:
        if self._opt is None:
            self._param = x.detach().clone().requires_grad_(True)
            self._opt = torch.optim.LBFGS(
                [self._param], lr=lr, max_iter=1, max_eval=self.max_eval,
                history_size=self.history_size, tolerance_grad=self.tol,
                tolerance_change=0.0, line_search_fn="strong_wolfe")
            if self._pending is not None:
                self._opt.load_state_dict(self._pending)
                self._pending = None
        else:
            with torch.no_grad():
                self._param.copy_(x)
        return self._opt

    def step(self, objective, x, weights, grad, step_size):
        if self.done:
            return None
        opt = self._optimizer(x, step_size)
        param, n = self._param, x.shape[0]
        first = [True]

        def closure() -> Tensor:
            z = param.detach()
            # the first call is at x, where the engine already has the gradient
            g = grad if first[0] else call_weighted(objective.functional_gradient, z, weights)
            first[0] = False
            param.grad = g / n if weights is None else weights.view(-1, *[1] * (g.dim() - 1)) * g
            self.n_evals += 2
            return call_weighted(objective.value, z, weights).detach()

        opt.step(closure)
        new = param.detach().clone()
        self.done = float(param.grad.abs().max()) <= self.tol or torch.equal(new, x)
        return new, step_size

    def state_dict(self) -> dict[str, Any]:
        opt = None if self._opt is None else self._opt.state_dict()
        return {"optimizer": opt, "done": self.done, "n_evals": self.n_evals}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._opt, self._param = None, None
        self._pending, self.done = state["optimizer"], state["done"]
        self.n_evals = state["n_evals"]


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


def _run(objective: FunctionalObjective, x0: Tensor, n_steps: int, step_size: float,
         rule: StepRule, record: Callable[[Tensor], float | None]) -> OptimResult:
    """The engine with ``rule``, no layers; ``record(x)`` after every step gives ``values``."""
    from flowkit.descent import FunctionalGradientDescent

    values = [record(x0)]
    engine = FunctionalGradientDescent(
        objective, step_size, step_rule=rule, keep_layers=False, progress=False,
        max_growth=None, callbacks=[lambda state: values.append(record(state.particles))])
    t0 = time.perf_counter()
    res = engine.run(x0, n_steps)
    return OptimResult(res.particles, [v for v in values if v is not None], res.n_steps,
                       rule.n_evals, time.perf_counter() - t0, res.trace["step_size"])


def armijo_descent(objective: FunctionalObjective, x0: Tensor, n_steps: int, *,
                   step_size: float = 1.0, shrink: float = 0.5, c: float = 1e-4,
                   grow: float = 2.0, max_backtracks: int = 30) -> OptimResult:
    r"""Gradient descent with backtracking (Armijo) line search: the engine with
    :class:`Armijo` (see it for the parameters), without layers.

    ``step_size`` is the first trial step. ``n_steps`` counts accepted steps; the run stops
    earlier when no sufficient decrease is found within ``max_backtracks``. ``n_evals``
    counts value evaluations plus one gradient per step.
    """
    objective = _check_objective(objective, x0)
    n_steps = check_int(n_steps, "n_steps", minimum=0)
    check_positive(step_size, "step_size")
    rule = Armijo(shrink=shrink, c=c, grow=grow, max_backtracks=max_backtracks)
    res = _run(objective, x0, n_steps, step_size, rule, lambda x: rule.last_value)
    res.values.insert(0, float(objective.value(x0.detach())))
    res.n_evals += res.n_steps
    return res


def momentum_descent(objective: FunctionalObjective, x0: Tensor, n_steps: int, *,
                     step_size: float, momentum: float = 0.9, nesterov: bool = False
                     ) -> OptimResult:
    r"""Heavy-ball or Nesterov momentum on particles: the engine with :class:`Momentum`,
    without layers. ``values`` are recorded only when the objective has a value;
    ``n_evals`` counts the gradients the method itself needs (one per step)."""
    objective = _check_objective(objective, x0)
    n_steps = check_int(n_steps, "n_steps", minimum=0)
    eta = check_positive(step_size, "step_size")
    rule = Momentum(momentum, nesterov)

    def record(x: Tensor) -> float | None:
        try:
            return float(objective.value(x))
        except NotImplementedError:
            return None

    return _run(objective, x0, n_steps, eta, rule, record)


def lbfgs(objective: FunctionalObjective, x0: Tensor, max_iter: int = 100, *,
          history_size: int = 10, tol: float = 1e-10,
          callback: Callable[[int, Tensor], None] | None = None) -> OptimResult:
    """L-BFGS on the flattened particles: the engine with :class:`LBFGS`, without layers.

    ``values`` has one entry per iteration and ``callback(k, x)``, if given, sees the
    particles after iteration ``k``. Stops early once the value's gradient has max entry
    ``<= tol`` or an iteration leaves the particles unchanged.
    """
    objective = _check_objective(objective, x0)
    max_iter = check_int(max_iter, "max_iter", minimum=0)
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable (k, x) -> None, got "
                        f"{type(callback).__name__}")
    rule = LBFGS(history_size=history_size, tol=tol)
    k = [0]

    def record(x: Tensor) -> float:
        value = float(objective.value(x.detach()))
        if k[0] and callback is not None:
            callback(k[0], x.detach())
        k[0] += 1
        return value

    return _run(objective, x0, max_iter, 1.0, rule, record)
