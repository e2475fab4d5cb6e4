"""Parametric generators trained in parameter space: the baselines of the particle view."""

from flowkit.generators.kernelized_flow import ParametricKernelizedFlow, cg_solve
from flowkit.generators.wgan_gp import WGANGP

__all__ = ["WGANGP", "ParametricKernelizedFlow", "cg_solve"]
