"""Parametric generators trained in parameter space: the baselines of the particle view."""

from flowkit.generators.kernelized_flow import (
    KernelizedFlowResult,
    ParametricKernelizedFlow,
    cg_solve,
)
from flowkit.generators.wgan_gp import WGANGP, WGANGPResult

__all__ = ["WGANGP", "WGANGPResult", "ParametricKernelizedFlow", "KernelizedFlowResult",
           "cg_solve"]
