"""The nonlinear conjugate gradient method as a ``torch.optim.Optimizer`` (Naganuma &
Iiduka 2023 [NI23] and its code [NI23-code]).

With ``g_n`` the gradient at ``theta_n`` (of the loss the optimizer *minimizes*):

    d_0 = -g_0
    theta_{n+1} = theta_n + a_n d_n
    d_{n+1} = -g_{n+1} + beta_{n+1} d_n

where ``a_n`` is the learning rate (``lr``, possibly scheduled) and ``beta_{n+1}`` one of
the classical rules below, capped and scaled as in the paper's code ([NI23-code]):
``beta = beta_coeff * min(rule, beta_cap)``, and ``0`` when the rule's denominator is 0.
With ``y = g_{n+1} - g_n``, ``g = g_{n+1}``, ``d = d_n``:

======== ==========================================================
FR       ``||g||^2 / ||g_n||^2``                  (Fletcher-Reeves)
PRP      ``g^T y / ||g_n||^2``                    (Polak-Ribiere-Polyak; may be < 0)
HS       ``g^T y / d^T y``                        (Hestenes-Stiefel)
DY       ``||g||^2 / d^T y``                      (Dai-Yuan)
HS_DY    ``max(0, min(HS, DY))``
FR_PRP   ``max(0, min(FR, PRP))``
HZ       ``HS - mu ||y||^2 g^T d / (d^T y)^2``    (Hager-Zhang, ``mu = 2``)
======== ==========================================================

A number instead of a rule name is a constant ``beta``: the heavy-ball method, and plain
SGD for ``beta = 0``.

The public toy code of the paper [NI23-code] has three bugs this implementation avoids:
its first step is an ascent step (``d = +g``), it stores ``beta d_n - g_n`` instead of
``d_n`` (counting the gradient twice), and it keeps a *reference* to the previous
gradient, which ``zero_grad`` then overwrites. Here the first step is ``-g_0``,
the state holds exactly ``d_n``, and the previous gradient is a copy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor

from flowkit.validation import check_choice

__all__ = ["ConjugateGradient", "conjugate_beta", "BETA_RULES"]

# where the cap enters the Hager-Zhang rule: "after" (the paper), "code" (its public code)
_HZ_CAPS = ("after", "code")

#: Names accepted by ``beta=``: the conjugate-gradient coefficients of [NI23].
BETA_RULES = ("FR", "PRP", "HS", "DY", "HS_DY", "FR_PRP", "HZ")


def _normalize_rule(beta: object) -> str | float:
    if isinstance(beta, str):
        rule = beta.upper().replace("-", "_")
        if rule not in BETA_RULES:
            raise ValueError(f"beta must be one of {BETA_RULES} or a number, got {beta!r}")
        return rule
    if isinstance(beta, bool) or not isinstance(beta, (int, float)):
        raise TypeError(
            f"beta must be a rule name {BETA_RULES} or a number, got {type(beta).__name__}"
        )
    if not math.isfinite(beta):
        raise ValueError(f"a constant beta must be finite, got {beta}")
    return float(beta)


def _ratio(num: Tensor, den: Tensor) -> Tensor:
    """``num / den``, and 0 where ``den == 0`` (the paper code's convention)."""
    zero = den == 0
    return torch.where(zero, torch.zeros_like(num), num / torch.where(zero, 1.0, den))


def _segment_sums(g: Tensor, g_prev: Tensor, d_prev: Tensor, ids: Tensor, k: int) -> dict:
    """The inner products every rule is built from, summed over each of ``k`` segments
    (``ids`` maps each entry of the flat vectors to its segment)."""
    y = g - g_prev
    left = torch.stack([g, g_prev, g, d_prev, y, g])
    right = torch.stack([g, g_prev, y, y, y, d_prev])
    sums = torch.zeros(6, k, dtype=g.dtype, device=g.device).index_add_(1, ids, left * right)
    return dict(zip(("gg", "pp", "gy", "dy", "yy", "gd"), sums, strict=True))


def _beta_from_sums(rule: str, s: dict, mu: float, hs_cap: float | None = None) -> Tensor:
    """The rule's beta from the inner products; ``hs_cap`` caps HS inside HZ (code order)."""

    def fr() -> Tensor:
        return _ratio(s["gg"], s["pp"])

    def prp() -> Tensor:
        return _ratio(s["gy"], s["pp"])

    def hs() -> Tensor:
        return _ratio(s["gy"], s["dy"])

    def dy() -> Tensor:
        return _ratio(s["gg"], s["dy"])

    rules: dict[str, Callable[[], Tensor]] = {
        "FR": fr,
        "PRP": prp,
        "HS": hs,
        "DY": dy,
        "HS_DY": lambda: torch.clamp(torch.minimum(hs(), dy()), min=0),
        "FR_PRP": lambda: torch.clamp(torch.minimum(fr(), prp()), min=0),
        "HZ": lambda: ((hs() if hs_cap is None else torch.clamp(hs(), max=hs_cap))
                       - mu * _ratio(s["yy"] * s["gd"], s["dy"] * s["dy"])),
    }
    return rules[rule]()


def _flat(tensors: Sequence[Tensor]) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def conjugate_beta(rule: str, g: Tensor | Sequence[Tensor], g_prev: Tensor | Sequence[Tensor],
                   d_prev: Tensor | Sequence[Tensor], mu: float = 2.0) -> Tensor:
    """The raw conjugate-gradient coefficient ``beta_{n+1}`` of ``rule``, before the cap
    and the coefficient ([NI23-code]).

    Parameters
    ----------
    rule : str
        One of ``BETA_RULES``.
    g, g_prev, d_prev : Tensor or sequence of Tensors
        ``g_{n+1}``, ``g_n`` and ``d_n``; a sequence is treated as one concatenated vector
        (the "global" beta).
    mu : float
        The Hager-Zhang constant.

    Returns
    -------
    Tensor
        A 0-d tensor; 0 where the rule's denominator is 0.
    """
    rule = _normalize_rule(rule)
    if not isinstance(rule, str):
        raise TypeError("conjugate_beta needs a rule name, not a constant")
    g, g_prev, d_prev = (_flat([t] if isinstance(t, Tensor) else t) for t in (g, g_prev, d_prev))
    ids = torch.zeros(g.numel(), dtype=torch.long, device=g.device)
    return _beta_from_sums(rule, _segment_sums(g, g_prev, d_prev, ids, 1), mu)[0]


def _check_number(value: object, name: str, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise ValueError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}, "
                         f"got {value}")
    return float(value)


class ConjugateGradient(torch.optim.Optimizer):
    """Conjugate gradient method for one player (Naganuma & Iiduka 2023 [NI23]).

    ``d_0 = -g_0``, ``theta_{n+1} = theta_n + a_n d_n``, ``d_{n+1} = -g_{n+1} +
    beta_{n+1} d_n`` with ``beta_{n+1} = beta_coeff * min(rule, beta_cap)`` (module
    docstring for the rules). The paper's analysis needs ``beta_n`` bounded above
    (Assumption 3.1 (C2), [NI23]); its code caps at 1/2 ([NI23-code]).

    Parameters
    ----------
    params : iterable of Tensors or dicts
        As for any ``torch.optim.Optimizer``; every option below can be set per group.
    lr : float
        ``a_n > 0``; schedule it with :class:`flowkit.games.PowerLR`.
    beta : str or float
        A rule of ``BETA_RULES`` (case-insensitive) or a constant.
    beta_coeff : float
        Multiplies the capped beta (the paper sweeps {0.5, 0.75, 1}).
    beta_cap : float or None
        Upper cap applied before ``beta_coeff``; ``None`` disables it.
    hz_cap : {"after", "code"}
        Where the cap enters the Hager-Zhang rule. ``"after"`` (default) is the formula
        of the paper, ``min(beta_HS - mu ||y||^2 g^T d / (d^T y)^2, beta_cap)``: the
        bound ``beta_n <= 1/2`` of its analysis constrains the coefficient actually used.
        ``"code"`` reproduces the paper's public code, which caps ``beta_HS`` at
        ``beta_cap`` *before* subtracting the correction (and caps the result again);
        the two differ whenever ``beta_HS > beta_cap``. Only ``beta="HZ"`` reads it.
    per_tensor : bool
        Compute beta for each parameter tensor (as the paper's code does) or once per
        parameter group from the inner products summed over its tensors (the textbook CG
        on the concatenated vector).
    mu : float
        Hager-Zhang constant.
    maximize : bool
        Ascend instead: ``g`` is the negated gradient.

    Notes
    -----
    ``state[p]`` holds ``d`` (the direction ``d_n`` just used), ``prev_grad`` (a copy of
    ``g_n``) and ``beta`` (the ``beta_n`` that built ``d_n``; 0 on the first step).
    ``step(line_search=f)`` calls ``f(directions)`` with the list of the new directions
    (one per parameter that has a gradient, in ``param_groups`` order) and uses its return
    value as the step size of every group, in place of ``lr``: this is how an exact line
    search is plugged in.
    """

    def __init__(self, params: Iterable[Tensor] | Iterable[dict], lr: float = 1e-3,
                 beta: str | float = "FR", beta_coeff: float = 1.0,
                 beta_cap: float | None = 0.5, per_tensor: bool = True, mu: float = 2.0,
                 maximize: bool = False, hz_cap: str = "after"):
        defaults = dict(lr=lr, beta=beta, beta_coeff=beta_coeff, beta_cap=beta_cap,
                        per_tensor=per_tensor, mu=mu, maximize=maximize, hz_cap=hz_cap)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        group["lr"] = _check_number(group["lr"], "lr", positive=True)
        group["beta"] = _normalize_rule(group["beta"])
        group["beta_coeff"] = _check_number(group["beta_coeff"], "beta_coeff")
        if group["beta_cap"] is not None:
            group["beta_cap"] = _check_number(group["beta_cap"], "beta_cap")
        group["mu"] = _check_number(group["mu"], "mu")
        group["hz_cap"] = check_choice(group["hz_cap"], "hz_cap", _HZ_CAPS)
        group["per_tensor"] = bool(group["per_tensor"])
        group["maximize"] = bool(group["maximize"])

    def _finish_beta(self, group: dict, raw: Tensor) -> Tensor:
        """``beta_coeff * min(raw, beta_cap)``; a non-finite raw beta (overflow) gives 0."""
        raw = torch.where(torch.isfinite(raw), raw, 0.0)
        if group["beta_cap"] is not None:
            raw = torch.clamp(raw, max=group["beta_cap"])
        return group["beta_coeff"] * raw

    def _segment_ids(self, sizes: list[int], per_tensor: bool, device: torch.device) -> Tensor:
        key = (tuple(sizes), per_tensor, device)
        cache = self.__dict__.setdefault("_ids_cache", {})
        if key not in cache:
            counts = torch.tensor(sizes, device=device)
            segments = torch.arange(len(sizes), device=device)
            cache[key] = (torch.repeat_interleave(segments, counts) if per_tensor
                          else torch.zeros(sum(sizes), dtype=torch.long, device=device))
        return cache[key]

    def _directions(self, group: dict, params: list[Tensor], grads: list[Tensor]) -> None:
        """Set ``state[p]["d"]`` to ``d_{n+1}`` for every parameter of a group.

        All tensors of the group that have a previous direction are handled as one flat
        vector: one pass of elementwise products and one segmented sum give every tensor's
        inner products (one segment per tensor, or a single one for the global beta).
        """
        old = []
        for p, g in zip(params, grads, strict=True):
            state = self.state[p]
            if state:
                old.append((p, g))
            else:  # d_0 = -g_0: the first step is a plain descent step
                state["d"] = -g
                # A copy: zero_grad(set_to_none=False) and backward() overwrite p.grad in
                # place, which would silently turn g_n into g_{n+1} (bug 3, [NI23-code]).
                state["prev_grad"] = g.clone()
                state["beta"] = g.new_zeros(())
        if not old:
            return
        sizes = [p.numel() for p, _ in old]
        g = _flat([g for _, g in old])  # torch.cat copies: no alias of p.grad either
        d = _flat([self.state[p]["d"] for p, _ in old])
        rule = group["beta"]
        if isinstance(rule, float):
            cap = group["beta_cap"]
            beta = group["beta_coeff"] * (rule if cap is None else min(rule, cap))
            d.mul_(beta).sub_(g)  # a Python float, as SGD's momentum: bitwise heavy ball
            betas = [g.new_tensor(beta) for _ in old]
        else:
            per_tensor = group["per_tensor"]
            ids = self._segment_ids(sizes, per_tensor, g.device)
            sums = _segment_sums(g, _flat([self.state[p]["prev_grad"] for p, _ in old]), d, ids,
                                 len(old) if per_tensor else 1)
            hs_cap = group["beta_cap"] if group["hz_cap"] == "code" else None
            beta = self._finish_beta(group, _beta_from_sums(rule, sums, group["mu"], hs_cap))
            d.mul_(beta[ids]).sub_(g)
            betas = list(beta.unbind()) if per_tensor else [beta[0]] * len(old)
        for (p, _), d_p, g_p, b in zip(old, d.split(sizes), g.split(sizes), betas, strict=True):
            self.state[p].update(d=d_p.view_as(p), prev_grad=g_p.view_as(p), beta=b)

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None, *,
             line_search: Callable[[list[Tensor]], float] | None = None) -> Tensor | None:
        """One CG step; ``closure`` re-evaluates the loss (optional), ``line_search``
        overrides the step size (see the class notes)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        moves: list[tuple[float, Tensor]] = []
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if any(p.grad.is_sparse for p in params):
                raise RuntimeError("ConjugateGradient does not support sparse gradients")
            grads = [-p.grad if group["maximize"] else p.grad for p in params]
            self._directions(group, params, grads)
            moves += [(group["lr"], p) for p in params]
        if line_search is not None:
            step_size = float(line_search([self.state[p]["d"] for _, p in moves]))
            moves = [(step_size, p) for _, p in moves]
        for lr, p in moves:
            p.add_(self.state[p]["d"], alpha=lr)
        return loss
