"""Discrete dynamics for smooth games: one update rule per class, one interface.

Every rule is written with the game vector field ``F(z) = (grad_x U, -grad_y U)`` of
:mod:`flowkit.games.game` and a step size ``eta > 0``; the formulas are those of the
[LS19] (Liang & Stokes 2019, and the papers that introduced each method).

A dynamics is a map on a *stacked state* ``(z, memory)``: :meth:`Dynamics.transition` is
that map, pure and differentiable, so that :func:`flowkit.games.predicted_rate` can
linearize exactly the code that runs. Only OMD carries memory (the previous field value);
for the others the stacked state is ``z`` alone.

Usage::

    dyn = OMD(step_size=0.1).bind(game)
    z = z0
    for _ in range(100):
        z = dyn.step(z)      # the memory lives inside ``dyn``; ``dyn.reset()`` clears it
"""

from __future__ import annotations

import abc
import cmath
import math
from typing import ClassVar

import torch
from torch import Tensor

from flowkit.games.game import Game
from flowkit.validation import check_positive

__all__ = ["Dynamics", "SGA", "AltGDA", "OMD", "CO", "PM", "EG", "IU"]

Memory = tuple[Tensor, ...]


def _max_root_modulus(b: complex, c: complex) -> float:
    """Largest ``|r|`` over the roots of ``r^2 + b r + c = 0``."""
    disc = cmath.sqrt(b * b - 4 * c)
    return max(abs((-b + disc) / 2), abs((-b - disc) / 2))


def _check_nonnegative(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number >= 0, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return float(value)


class Dynamics(abc.ABC):
    """A game dynamics: ``(z, memory) -> (z', memory')`` with step size ``eta``.

    Parameters
    ----------
    step_size : float
        ``eta > 0``.

    Notes
    -----
    Subclasses implement :meth:`transition` (the update), :meth:`bilinear_factor` (its
    exact per-singular-value rate on ``U = x^T C y``, closed forms in docs/games.md) and,
    when they carry memory, :meth:`initial_memory`.
    """

    name: ClassVar[str] = "dynamics"

    def __init__(self, step_size: float):
        self.step_size = check_positive(step_size, "step_size")
        self._game: Game | None = None
        self._memory: Memory | None = None

    def bind(self, game: Game) -> Dynamics:
        """Attach the game whose field drives :meth:`step`, and clear the memory."""
        if not isinstance(game, Game):
            raise TypeError(f"game must be a flowkit.games.Game, got {type(game).__name__}")
        self._game = game
        self.reset()
        return self

    @property
    def game(self) -> Game:
        if self._game is None:
            raise RuntimeError(f"{self!r} is not bound to a game: call .bind(game) first")
        return self._game

    def reset(self) -> None:
        """Forget the memory; the next :meth:`step` starts afresh from its argument."""
        self._memory = None

    def step(self, z: Tensor) -> Tensor:
        """One update from ``z``, using (and then replacing) the stored memory."""
        game = self.game
        if self._memory is None:
            self._memory = self.initial_memory(game, z)
        z_new, self._memory = self.transition(game, z, self._memory)
        return z_new

    def initial_memory(self, game: Game, z: Tensor) -> Memory:
        """The memory before the first step (none by default)."""
        return ()

    @abc.abstractmethod
    def transition(self, game: Game, z: Tensor, memory: Memory) -> tuple[Tensor, Memory]:
        """The update ``(z, memory) -> (z', memory')``; pure, so :mod:`torch.func` can
        differentiate it."""

    @abc.abstractmethod
    def bilinear_factor(self, sigma: float) -> float:
        """Exact spectral radius of the update on the 2-D block of ``U = x^T C y`` that
        belongs to one singular value ``sigma`` of ``C`` (closed form, docs/games.md)."""

    def linearization(self, game: Game, z_star: Tensor) -> Tensor:
        """Jacobian of the stacked update at the equilibrium state ``(z*, memory(z*))``.

        For a game whose field is linear this *is* the update; otherwise its spectral
        radius is the local linear rate at ``z*``.
        """
        z_star = game.check_point(z_star, "z_star")
        memory = self.initial_memory(game, z_star)
        sizes = [z_star.numel()] + [m.numel() for m in memory]

        def stacked(state: Tensor) -> Tensor:
            z, *mem = torch.split(state, sizes)
            z_new, mem_new = self.transition(game, z, tuple(mem))
            return torch.cat([z_new, *mem_new])

        return torch.func.jacrev(stacked)(torch.cat([z_star, *memory]))

    def _params(self) -> str:
        return f"step_size={self.step_size:g}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._params()})"


class SGA(Dynamics):
    """Simultaneous gradient ascent (descent for ``x``, ascent for ``y``), a.k.a. GDA.

    ``z_{t+1} = z_t - eta F(z_t)`` ([LS19]). On a bilinear game
    ``||z_{t+1}||^2 = ||z_t||^2 + eta^2 (||C y_t||^2 + ||C^T x_t||^2)``, so it diverges for
    every ``eta > 0`` at the rate ``sqrt(1 + eta^2 sigma_max^2)`` (closed form, docs/games.md).
    """

    name = "SGA"

    def transition(self, game: Game, z: Tensor, memory: Memory) -> tuple[Tensor, Memory]:
        return z - self.step_size * game.field(z), memory

    def bilinear_factor(self, sigma: float) -> float:
        return math.sqrt(1 + (self.step_size * sigma) ** 2)


class AltGDA(Dynamics):
    """Alternating gradient descent-ascent: one player moves, then the other sees it.

    ``x_{t+1} = x_t - eta grad_x U(x_t, y_t)``,
    ``y_{t+1} = y_t + eta grad_y U(x_{t+1}, y_t)`` (or ``y`` first when ``x_first=False``).

    On a bilinear game each singular value gives the block
    ``[[1, -eta s], [eta s, 1 - eta^2 s^2]]`` with determinant 1 and trace
    ``2 - eta^2 s^2``: the iterates neither converge nor diverge while ``eta s <= 2``
    (spectral radius 1), and diverge beyond.

    Parameters
    ----------
    step_size : float
    x_first : bool
        Move player ``x`` first (default) or player ``y`` first, as GAN code usually does
        for the discriminator.
    """

    name = "AltGDA"

    def __init__(self, step_size: float, x_first: bool = True):
        super().__init__(step_size)
        self.x_first = bool(x_first)

    def transition(self, game: Game, z: Tensor, memory: Memory) -> tuple[Tensor, Memory]:
        eta = self.step_size
        x, y = game.split(z)
        if self.x_first:
            x = x - eta * game.field_x(x, y)
            y = y - eta * game.field_y(x, y)
        else:
            y = y - eta * game.field_y(x, y)
            x = x - eta * game.field_x(x, y)
        return game.join(x, y), memory

    def bilinear_factor(self, sigma: float) -> float:
        return _max_root_modulus(-(2 - (self.step_size * sigma) ** 2), 1.0)

    def _params(self) -> str:
        return f"{super()._params()}, x_first={self.x_first}"


class OMD(Dynamics):
    """Optimistic mirror descent (optimistic GDA) of Daskalakis et al. (2018).

    ``z_{t+1} = z_t - 2 eta F(z_t) + eta F(z_{t-1})`` ([LS19]), with
    ``F(z_{-1}) := F(z_0)`` so that the first step is a plain gradient step. The memory is
    the previous field value, so the stacked state is ``(z_t, F(z_{t-1}))``.

    On a bilinear game each singular value ``s`` contributes the roots of
    ``r^2 - (1 - 2 i eta s) r - i eta s = 0``; the spectral radius is below 1 iff
    ``eta s < 1/sqrt(3)`` (closed form, docs/games.md), and for small ``eta`` it is about
    ``1 - eta^2 s^2 / 2``.
    """

    name = "OMD"

    def initial_memory(self, game: Game, z: Tensor) -> Memory:
        return (game.field(z),)

    def transition(self, game: Game, z: Tensor, memory: Memory) -> tuple[Tensor, Memory]:
        (f_prev,) = memory
        f = game.field(z)
        return z - self.step_size * (2 * f - f_prev), (f,)

    def bilinear_factor(self, sigma: float) -> float:
        a = 1j * self.step_size * sigma
        return _max_root_modulus(-(1 - 2 * a), -a)


class CO(Dynamics):
    """Consensus optimization of Mescheder et al. (2017).

    ``z_{t+1} = z_t - eta F(z_t) - gamma grad H(z_t)`` with ``H = 1/2 ||F||^2`` and
    ``grad H = J^T F`` ([LS19]). On a bilinear game the factor per singular value
    is ``sqrt((1 - gamma s^2)^2 + eta^2 s^2)`` (closed form, docs/games.md).

    Parameters
    ----------
    step_size : float
        ``eta > 0``.
    gamma : float
        Weight ``gamma >= 0`` of the consensus term; ``gamma = 0`` is SGA.
    """

    name = "CO"

    def __init__(self, step_size: float, gamma: float = 0.1):
        super().__init__(step_size)
        self.gamma = _check_nonnegative(gamma, "gamma")

    def transition(self, game: Game, z: Tensor, memory: Memory) -> tuple[Tensor, Memory]:
        return z - self.step_size * game.field(z) - self.gamma * game.hamiltonian_grad(z), memory

    def bilinear_factor(self, sigma: float) -> float:
        return math.sqrt((1 - self.gamma * sigma**2) ** 2 + (self.step_size * sigma) ** 2)

    def _params(self) -> str:
        return f"{super()._params()}, gamma={self.gamma:g}"


class PM(Dynamics):
    """Predictive method: predict with a gradient step of size ``gamma``, then update from
    the prediction with step ``eta``.

    ``z_{t+1/2} = z_t - gamma F(z_t)``, ``z_{t+1} = z_t - eta F(z_{t+1/2})`` ([LS19]; the
    simultaneous form). ``gamma = eta`` is the extragradient method (:class:`EG`). To first
    order ``PM = SGA + eta gamma J F``; on a bilinear game ``J^2 = -J^T J`` makes this exact:
    PM is CO with consensus weight ``eta gamma``, factor
    ``sqrt((1 - eta gamma s^2)^2 + eta^2 s^2)`` per singular value.

    Parameters
    ----------
    step_size : float
        ``eta > 0``.
    prediction_step : float, optional
        ``gamma > 0``; defaults to ``step_size``.
    """

    name = "PM"

    def __init__(self, step_size: float, prediction_step: float | None = None):
        super().__init__(step_size)
        self.prediction_step = (
            self.step_size if prediction_step is None
            else check_positive(prediction_step, "prediction_step")
        )

    def transition(self, game: Game, z: Tensor, memory: Memory) -> tuple[Tensor, Memory]:
        z_half = z - self.prediction_step * game.field(z)
        return z - self.step_size * game.field(z_half), memory

    def bilinear_factor(self, sigma: float) -> float:
        eta, gamma = self.step_size, self.prediction_step
        return math.sqrt((1 - eta * gamma * sigma**2) ** 2 + (eta * sigma) ** 2)

    def _params(self) -> str:
        return f"{super()._params()}, prediction_step={self.prediction_step:g}"


class EG(PM):
    """Extragradient (Korpelevich 1976): the predictive method with ``gamma = eta``.

    ``z_{t+1/2} = z_t - eta F(z_t)``, ``z_{t+1} = z_t - eta F(z_{t+1/2})``. On a bilinear
    game the squared factor per singular value is ``|1 - eta^2 s^2 + i eta s|^2 =
    1 - eta^2 s^2 + eta^4 s^4`` (closed form, docs/games.md): convergent iff ``eta s_max < 1``.
    """

    name = "EG"

    def __init__(self, step_size: float):
        super().__init__(step_size, prediction_step=None)

    def bilinear_factor(self, sigma: float) -> float:
        u = (self.step_size * sigma) ** 2
        return math.sqrt(1 - u + u * u)

    def _params(self) -> str:
        return Dynamics._params(self)


class IU(Dynamics):
    """Implicit updates (the proximal point method): ``z_{t+1} = z_t - eta F(z_{t+1})``
    ([LS19]).

    The implicit equation ``G(w) = w - z_t + eta F(w) = 0`` is solved by Newton's method
    (``w <- w - (I + eta J(w))^{-1} G(w)``, exact in one iteration when ``F`` is linear) or
    by the fixed-point iteration ``w <- z_t - eta F(w)`` (a contraction when
    ``eta Lip(F) < 1``), from the explicit step ``w = z_t - eta F(z_t)``, until
    ``||G(w)|| <= tol ||w - z_t||``. The tolerance is relative to the step, so the solve
    stays accurate as the iterates approach the equilibrium. On a bilinear game the factor
    per singular value is ``1 / sqrt(1 + eta^2 s^2)``: convergent for every ``eta > 0``.

    Parameters
    ----------
    step_size : float
    tol : float, optional
        Relative tolerance; default ``eps ** 0.75`` of the game's dtype (about ``2e-12`` in
        float64).
    max_iter : int
        Iterations of the inner solver before a ``RuntimeError``.
    solver : {"newton", "fixed_point"}
    """

    name = "IU"

    def __init__(self, step_size: float, tol: float | None = None, max_iter: int = 50,
                 solver: str = "newton"):
        super().__init__(step_size)
        self.tol = None if tol is None else check_positive(tol, "tol")
        if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
            raise ValueError(f"max_iter must be a positive int, got {max_iter!r}")
        if solver not in ("newton", "fixed_point"):
            raise ValueError(f"solver must be 'newton' or 'fixed_point', got {solver!r}")
        self.max_iter, self.solver = max_iter, solver

    def transition(self, game: Game, z: Tensor, memory: Memory) -> tuple[Tensor, Memory]:
        eta = self.step_size
        tol = self.tol if self.tol is not None else torch.finfo(z.dtype).eps ** 0.75
        w = z - eta * game.field(z)
        for it in range(self.max_iter + 1):
            f = game.field(w)
            residual = w - z + eta * f
            if torch.linalg.vector_norm(residual) <= tol * torch.linalg.vector_norm(w - z):
                return w, memory
            if it == self.max_iter:
                break
            if self.solver == "newton":
                eye = torch.eye(z.numel(), dtype=z.dtype, device=z.device)
                w = w - torch.linalg.solve(eye + eta * game.jacobian(w), residual)
            else:
                w = z - eta * f
        raise RuntimeError(
            f"IU: the implicit step did not reach tol={tol:g} in max_iter={self.max_iter} "
            f"{self.solver} iterations; lower step_size, raise max_iter or use solver='newton'"
        )

    def linearization(self, game: Game, z_star: Tensor) -> Tensor:
        """``(I + eta J(z*))^{-1}``: the implicit function theorem applied to
        ``z' = z - eta F(z')``; the solver's data-dependent loop is not differentiated."""
        z_star = game.check_point(z_star, "z_star")
        eye = torch.eye(z_star.numel(), dtype=z_star.dtype, device=z_star.device)
        return torch.linalg.solve(eye + self.step_size * game.jacobian(z_star), eye)

    def bilinear_factor(self, sigma: float) -> float:
        return 1 / math.sqrt(1 + (self.step_size * sigma) ** 2)

    def _params(self) -> str:
        return f"{super()._params()}, solver={self.solver!r}"
