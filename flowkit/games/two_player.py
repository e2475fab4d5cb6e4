"""Two optimizers, one game: the minimizing player descends, the maximizing one ascends.

Naganuma & Iiduka (2023) run the conjugate gradient method for the generator (step
``a_n``, coefficient ``gamma_n``) and for the discriminator (``b_n``, ``delta_n``) at the
same time ([NI23]); their GAN code instead steps the discriminator and then the
generator on a fresh evaluation. :class:`TwoPlayerOptimizer` does either, with any pair of
``torch.optim`` optimizers, so that CG, SGD, momentum and Adam are compared on equal terms.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from flowkit.games.conjugate_gradient import ConjugateGradient

__all__ = ["TwoPlayerOptimizer", "two_player_cg"]

Losses = Tensor | tuple[Tensor, Tensor]
_TAKES_PLAYER = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def _params(optimizer: torch.optim.Optimizer) -> list[Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


class TwoPlayerOptimizer:
    """Step a minimizing and a maximizing player, simultaneously or alternately.

    Parameters
    ----------
    min_optimizer, max_optimizer : torch.optim.Optimizer
        Each over its own player's parameters; both *minimize* what they are given.
    mode : {"simultaneous", "alternating"}
        ``"simultaneous"``: both gradients at ``(x_n, y_n)``, then both steps (the
        iteration analysed in the paper). ``"alternating"``: the ``first`` player steps,
        the closure is re-evaluated, then the other player steps.
    first : {"max", "min"}
        Who moves first when alternating; ``"max"`` (the discriminator) as in GAN code.

    Notes
    -----
    The closure passed to :meth:`step` returns either the payoff ``U`` (zero-sum: the min
    player minimizes ``U``, the max player minimizes ``-U``, i.e. ascends) or a pair
    ``(loss_min, loss_max)`` each minimized by its own player (e.g. the non-saturating
    GAN). Gradients are computed with ``torch.autograd.grad`` and *assigned*, never
    accumulated, so no ``zero_grad`` is needed.

    A closure whose signature has a parameter named ``player`` (keyword or positional-or-
    keyword) is told, at each call, whose gradient the call's losses will give:
    ``player="both"`` in simultaneous mode; in alternating mode ``player=first`` at the
    first call and the other player (``"min"`` or ``"max"``) at the re-evaluation. It need
    not count its calls to know which step they serve, and may skip what the other
    player's loss alone needs (e.g. the discriminator on real data in a generator step):
    it still returns ``U`` or the pair, and the entry it skipped is ignored (any scalar
    tensor will do), except at the first call, whose pair :meth:`step` returns. A closure
    without ``player`` is called with no argument.
    """

    def __init__(self, min_optimizer: torch.optim.Optimizer,
                 max_optimizer: torch.optim.Optimizer, mode: str = "simultaneous",
                 first: str = "max"):
        for name, opt in (("min_optimizer", min_optimizer), ("max_optimizer", max_optimizer)):
            if not isinstance(opt, torch.optim.Optimizer):
                raise TypeError(f"{name} must be a torch.optim.Optimizer, got "
                                f"{type(opt).__name__}")
        if mode not in ("simultaneous", "alternating"):
            raise ValueError(f"mode must be 'simultaneous' or 'alternating', got {mode!r}")
        if first not in ("min", "max"):
            raise ValueError(f"first must be 'min' or 'max', got {first!r}")
        self.min_optimizer, self.max_optimizer = min_optimizer, max_optimizer
        self.min_params, self.max_params = _params(min_optimizer), _params(max_optimizer)
        if {id(p) for p in self.min_params} & {id(p) for p in self.max_params}:
            raise ValueError("a parameter belongs to both players' optimizers")
        self.mode, self.first = mode, first
        self._told: tuple[Callable[..., Losses], bool] | None = None  # closure, takes player

    @staticmethod
    def _split(out: Losses) -> tuple[Tensor, Tensor]:
        if isinstance(out, Tensor):
            return out, -out
        if isinstance(out, (tuple, list)) and len(out) == 2:
            return out[0], out[1]
        raise TypeError("the closure must return U (a scalar tensor) or (loss_min, loss_max)")

    @staticmethod
    def _assign(loss: Tensor, params: Sequence[Tensor], retain: bool) -> None:
        grads = torch.autograd.grad(loss, params, retain_graph=retain, allow_unused=True)
        for p, g in zip(params, grads, strict=True):
            p.grad = g

    def _caller(self, closure: Callable[..., Losses]) -> Callable[[str], Losses]:
        """``closure`` as a function of the player it serves (ignored if it cannot be told)."""
        if not callable(closure):
            raise TypeError(f"closure must be callable, got {type(closure).__name__}")
        if self._told is None or self._told[0] is not closure:  # inspected once per closure
            try:
                param = inspect.signature(closure).parameters.get("player")
            except (TypeError, ValueError):  # no signature (some builtins): not told
                param = None
            self._told = (closure, param is not None and param.kind in _TAKES_PLAYER)
        if self._told[1]:
            return lambda player: closure(player=player)
        return lambda player: closure()

    def step(self, closure: Callable[..., Losses]) -> tuple[Tensor, Tensor]:
        """One iteration; returns ``(loss_min, loss_max)`` at the point where it started.

        ``closure`` may take a ``player`` parameter ("min", "max" or "both"): see the
        class docstring."""
        call = self._caller(closure)
        if self.mode == "simultaneous":
            loss_min, loss_max = self._split(call("both"))
            self._assign(loss_min, self.min_params, retain=True)
            self._assign(loss_max, self.max_params, retain=False)
            self.min_optimizer.step()
            self.max_optimizer.step()
        else:
            players = [("min", 0, self.min_params, self.min_optimizer),
                       ("max", 1, self.max_params, self.max_optimizer)]
            if self.first == "max":
                players.reverse()
            (who, i, params, opt), (who2, j, params2, opt2) = players
            loss_min, loss_max = self._split(call(who))
            self._assign((loss_min, loss_max)[i], params, retain=False)
            opt.step()
            self._assign(self._split(call(who2))[j], params2, retain=False)
            opt2.step()
        return loss_min.detach(), loss_max.detach()

    def state_dict(self) -> dict:
        return {"min": self.min_optimizer.state_dict(), "max": self.max_optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.min_optimizer.load_state_dict(state["min"])
        self.max_optimizer.load_state_dict(state["max"])


def two_player_cg(min_params: Sequence[Tensor], max_params: Sequence[Tensor], *,
                  lr_min: float, lr_max: float, mode: str = "simultaneous",
                  first: str = "max", **cg_options: object) -> TwoPlayerOptimizer:
    """CG for both players (Naganuma & Iiduka 2023 [NI23], sec. 4.2): the generator with
    step ``a_n = lr_min``, the discriminator with ``b_n = lr_max``; ``cg_options`` (beta,
    beta_coeff, beta_cap, per_tensor, mu, hz_cap) go to both :class:`ConjugateGradient`
    optimizers."""
    return TwoPlayerOptimizer(
        ConjugateGradient(min_params, lr=lr_min, **cg_options),
        ConjugateGradient(max_params, lr=lr_max, **cg_options),
        mode=mode, first=first,
    )
