"""Smooth two-player games, their dynamics and rates, and the conjugate gradient method.

- :mod:`~flowkit.games.game`: games ``min_x max_y U(x, y)`` on flat tensors and their
  vector field ``F = (grad_x U, -grad_y U)`` (bilinear, quadratic, the CG paper's saddle,
  a GAN).
- :mod:`~flowkit.games.dynamics`: SGA, alternating GDA, OMD, CO, PM, IU, extragradient.
- :mod:`~flowkit.games.rates`: :func:`run`, the predicted (spectral) and measured rates,
  and their closed forms on bilinear games (Liang & Stokes 2019 [LS19]).
- :mod:`~flowkit.games.conjugate_gradient`, :mod:`~flowkit.games.schedules`,
  :mod:`~flowkit.games.two_player`: the CG optimizer of Naganuma & Iiduka (2023) [NI23],
  its learning-rate rules, and the two-player wrapper.
"""

from flowkit.games.conjugate_gradient import BETA_RULES, ConjugateGradient, conjugate_beta
from flowkit.games.dynamics import CO, EG, IU, OMD, PM, SGA, AltGDA, Dynamics
from flowkit.games.game import Bilinear, Game, GANGame, ProductSaddle, Quadratic, ZeroSumGame
from flowkit.games.rates import (
    Trajectory,
    bilinear_rate,
    linearization,
    measured_rate,
    predicted_rate,
    run,
    spectral_radius,
)
from flowkit.games.schedules import LR_RULES, PowerLR, lr_schedule
from flowkit.games.two_player import TwoPlayerOptimizer, two_player_cg

__all__ = [
    "Game",
    "ZeroSumGame",
    "Bilinear",
    "Quadratic",
    "ProductSaddle",
    "GANGame",
    "Dynamics",
    "SGA",
    "AltGDA",
    "OMD",
    "CO",
    "PM",
    "EG",
    "IU",
    "Trajectory",
    "run",
    "measured_rate",
    "predicted_rate",
    "linearization",
    "spectral_radius",
    "bilinear_rate",
    "ConjugateGradient",
    "conjugate_beta",
    "BETA_RULES",
    "PowerLR",
    "lr_schedule",
    "LR_RULES",
    "TwoPlayerOptimizer",
    "two_player_cg",
]
