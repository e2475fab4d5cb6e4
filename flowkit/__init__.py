"""flowkit: functional-gradient descent and particle flows on torch.

The core has four nouns (see ``docs/``): a :class:`Potential` (a first variation), a
:class:`FunctionalObjective` (gives potentials), a :class:`GradientLayer`
``x -> x - eta grad psi(x)`` and its :class:`GradientLayerStack`; the engine
:class:`FunctionalGradientDescent` runs Algorithm 3 of Nitanda & Suzuki (2018) with them.
"""

__version__ = "0.1.0"

# The core first (the order matters to nothing but is kept stable), then the families
# built on it, then plotting and run folders.
from flowkit.potential import FunctionPotential, Potential
from flowkit.objective import FunctionalObjective
from flowkit.layers import (
    GradientField,
    GradientLayer,
    GradientLayerStack,
    VelocityField,
    VelocityLayer,
)
from flowkit.descent import FlowDivergedError, FlowResult, FlowState, FunctionalGradientDescent
from flowkit.checkpoints import CheckpointError
from flowkit.serialization import UntrustedFileError
from flowkit import datasets, geometry, kernels, monitors, nn, objectives, theory
from flowkit import critics, games, generators
from flowkit import plotting
from flowkit import flows
from flowkit import distributed
from flowkit.runs import RunFolder

__all__ = [
    "Potential",
    "FunctionPotential",
    "FunctionalObjective",
    "GradientLayer",
    "GradientLayerStack",
    "VelocityField",
    "GradientField",
    "VelocityLayer",
    "FunctionalGradientDescent",
    "FlowResult",
    "FlowState",
    "FlowDivergedError",
    "CheckpointError",
    "UntrustedFileError",
    "RunFolder",
    "datasets",
    "geometry",
    "kernels",
    "monitors",
    "nn",
    "objectives",
    "theory",
    "plotting",
    "critics",
    "games",
    "generators",
    "flows",
    "distributed",
]
