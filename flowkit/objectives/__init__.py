"""Objectives over probability measures: the plug-ins Algorithm 3 descends."""

from typing import Any

from flowkit._compat import deprecated_module_attribute
from flowkit.objectives.adversarial import AdversarialObjective
from flowkit.objectives.analytic import InteractionEnergy, QuadraticObjective
from flowkit.objectives.energy import EnergyDistance
from flowkit.objectives.mmd import MMD, KernelWitness
from flowkit.objectives.noisy import NoisyMMDFlow, arbel_schedule
from flowkit.objectives.sinkhorn import MultiscaleReport, SinkhornDivergence, SinkhornResult
from flowkit.objectives.sobolev import RandomFourierFeatures, SobolevDescent

__all__ = [
    "AdversarialObjective",
    "MMD",
    "KernelWitness",
    "QuadraticObjective",
    "InteractionEnergy",
    "EnergyDistance",
    "NoisyMMDFlow",
    "arbel_schedule",
    "SinkhornDivergence",
    "SinkhornResult",
    "MultiscaleReport",
    "SobolevDescent",
    "RandomFourierFeatures",
]


def __getattr__(name: str) -> Any:
    from flowkit.objectives import analytic

    return deprecated_module_attribute(__name__, name, {
        "QuadraticPotential": ("QuadraticObjective", analytic.QuadraticObjective)})
