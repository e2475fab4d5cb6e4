"""Learning-rate rules of Naganuma & Iiduka (2023, Table 1) as torch schedulers.

The paper's convergence results cover a constant rate ``a_n = a``, the diminishing rate
``a_n = a / sqrt(n)`` and ``a_n = a n^{-p}`` ([NI23]). All three are
``a_n = a (n + 1)^{-p}`` with ``n`` counting scheduler steps from 0 (the first step uses
``a``, as in the paper's ``SqrtLR``, [NI23-code]), for ``p = 0``, ``1/2`` and ``p``.
"""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["PowerLR", "lr_schedule", "LR_RULES"]

#: Names accepted by :func:`lr_schedule`.
LR_RULES = ("constant", "sqrt", "power")


class PowerLR(LambdaLR):
    """``lr_n = lr_0 (n + 1)^{-power}`` after ``n`` calls to ``step()``.

    Parameters
    ----------
    optimizer : torch.optim.Optimizer
    power : float
        ``p >= 0``; 0 is constant, 1/2 the ``1/sqrt(n)`` rule.
    last_epoch : int
        As for any torch scheduler.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, power: float, last_epoch: int = -1):
        if isinstance(power, bool) or not isinstance(power, (int, float)):
            raise TypeError(f"power must be a number, got {type(power).__name__}")
        if not math.isfinite(power) or power < 0:
            raise ValueError(f"power must be a finite number >= 0, got {power}")
        self.power = float(power)
        super().__init__(optimizer, self._factor, last_epoch)

    def _factor(self, n: int) -> float:
        return (n + 1) ** -self.power


def lr_schedule(optimizer: torch.optim.Optimizer, rule: str = "constant",
                power: float | None = None) -> PowerLR:
    """The scheduler of one of the paper's rules: ``"constant"`` (``a``), ``"sqrt"``
    (``a / sqrt(n)``) or ``"power"`` (``a n^{-power}``; ``power`` required)."""
    if rule not in LR_RULES:
        raise ValueError(f"rule must be one of {LR_RULES}, got {rule!r}")
    if rule == "power":
        if power is None:
            raise ValueError("rule='power' needs power, the exponent p of a n^{-p}")
        return PowerLR(optimizer, power)
    if power is not None:
        raise ValueError(f"power is only used with rule='power', not rule={rule!r}")
    return PowerLR(optimizer, 0.0 if rule == "constant" else 0.5)
