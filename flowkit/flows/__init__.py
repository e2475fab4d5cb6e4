"""Particle flows toward a target: SVGD, KSD descent, sliced-Wasserstein, KL, WFR.

Each module states its equation and paper. Every flow is a
:class:`flowkit.FunctionalObjective` that :class:`flowkit.FunctionalGradientDescent` runs
with monitors, checkpoints and Algorithm 2 replay: :class:`KSD`,
:class:`SlicedWasserstein` and :class:`BlobKL` through their first variation (weighted),
:class:`SVGD` through a velocity field, :class:`Langevin` through the engine's noise layers
and :class:`WFR` through its weight update. :mod:`flowkit.flows.optimizers` gives the
engine's step rules beyond a fixed step (``step_rule=``).
"""

from flowkit.flows.kl import (
    BlobKL,
    BlobPotential,
    Langevin,
    LangevinResult,
    ScorePotential,
    langevin,
    langevin_step,
    ou_moments,
    ula_moments,
)
from flowkit.flows.ksd import KSD, SteinPotential, ksd2, stein_kernel
from flowkit.flows.optimizers import (
    LBFGS,
    Armijo,
    Momentum,
    OptimResult,
    StepRule,
    armijo_descent,
    lbfgs,
    momentum_descent,
)
from flowkit.flows.sliced import (
    SlicedPotential,
    SlicedWasserstein,
    random_projections,
    sliced_wasserstein2,
)
from flowkit.flows.svgd import (
    SVGD,
    LinearKernel,
    SVGDField,
    SVGDResult,
    median_bandwidth,
    svgd_velocity,
)
from flowkit.flows.wfr import WFR, WeightedWitness, WFRResult, weighted_mmd2, wfr_mmd_flow, wfr_step

__all__ = [
    "SVGD",
    "SVGDField",
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
    "Langevin",
    "ScorePotential",
    "ou_moments",
    "ula_moments",
    "BlobKL",
    "BlobPotential",
    "WFR",
    "WeightedWitness",
    "WFRResult",
    "weighted_mmd2",
    "wfr_mmd_flow",
    "wfr_step",
    "StepRule",
    "Armijo",
    "Momentum",
    "LBFGS",
    "OptimResult",
    "armijo_descent",
    "momentum_descent",
    "lbfgs",
]
