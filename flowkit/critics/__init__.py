"""Trainable critics: fitted to particles and data, snapshotted into potentials."""

from typing import Any

from flowkit._compat import deprecated_module_attribute
from flowkit.critics.base import Critic
from flowkit.critics.mmd import MMDCritic
from flowkit.critics.penalties import gradient_penalty
from flowkit.critics.wgan_gp import CriticPotential, WGANGPCritic
from flowkit.nn import MLP as _MLP

__all__ = ["Critic", "WGANGPCritic", "CriticPotential", "gradient_penalty", "MMDCritic"]

_DEPRECATED = {"MLP": ("flowkit.nn.MLP", _MLP)}


def __getattr__(name: str) -> Any:
    return deprecated_module_attribute(__name__, name, _DEPRECATED)
