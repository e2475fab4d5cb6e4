"""Particle flows toward a target: SVGD, KSD descent, sliced-Wasserstein, KL, WFR.

Each module states its equation and paper. Flows whose direction is the gradient of a
first variation are :class:`flowkit.FunctionalObjective` subclasses the engine runs
today; the velocity-field (SVGD), noise (Langevin) and weight (WFR) parts are standalone
functions and loops until the engine's generalized contract lands.
"""

from flowkit.flows.kl import (
    BlobKL,
    BlobPotential,
    LangevinResult,
    langevin,
    langevin_step,
    ou_moments,
    ula_moments,
)
from flowkit.flows.ksd import KSD, SteinPotential, ksd2, stein_kernel
from flowkit.flows.optimizers import OptimResult, armijo_descent, lbfgs, momentum_descent
from flowkit.flows.sliced import (
    SlicedPotential,
    SlicedWasserstein,
    random_projections,
    sliced_wasserstein2,
)
from flowkit.flows.svgd import SVGD, LinearKernel, SVGDResult, median_bandwidth, svgd_velocity
from flowkit.flows.wfr import WeightedWitness, WFRResult, weighted_mmd2, wfr_mmd_flow, wfr_step

__all__ = [
    "SVGD",
    "SVGDResult",
    "LinearKernel",
    "median_bandwidth",
    "svgd_velocity",
    "KSD",
    "SteinPotential",
    "ksd2",
    "stein_kernel",
    "SlicedWasserstein",
    "SlicedPotential",
    "random_projections",
    "sliced_wasserstein2",
    "langevin",
    "langevin_step",
    "LangevinResult",
    "ou_moments",
    "ula_moments",
    "BlobKL",
    "BlobPotential",
    "WeightedWitness",
    "WFRResult",
    "weighted_mmd2",
    "wfr_mmd_flow",
    "wfr_step",
    "OptimResult",
    "armijo_descent",
    "momentum_descent",
    "lbfgs",
]
