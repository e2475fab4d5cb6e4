r"""The energy distance to a fixed sample, as an MMD with the distance kernel.

For :math:`k(x, y) = -\|x - y\|` (conditionally positive definite),

.. math::
    \mathcal E(\mu, \nu) = 2\,\mathbb E\|X - Y\| - \mathbb E\|X - X'\| - \mathbb E\|Y - Y'\|
                        = \mathrm{MMD}_k^2(\mu, \nu)

(Székely & Rizzo 2013; Sejdinovic et al. 2013), so the first variation
is the kernel witness :math:`2(\frac1M\sum_m\|z - y_m\| - \frac1N\sum_j\|z - x_j\|)` and
everything of :class:`flowkit.objectives.MMD` applies. The kernel is not differentiable at
coincident points; the sums use the subgradient 0 there (:class:`flowkit.kernels.EnergyKernel`).
"""

from __future__ import annotations

from torch import Tensor

from flowkit._compat import MISSING, renamed_keyword
from flowkit.geometry import DEFAULT_MEMORY_BUDGET
from flowkit.kernels import EnergyKernel
from flowkit.objectives.mmd import MMD

__all__ = ["EnergyDistance"]


class EnergyDistance(MMD):
    r"""Energy distance :math:`\mathcal E(\mu, \nu)` between the particles and ``target``.

    Parameters
    ----------
    target : Tensor
        Target sample ``(M, *event)`` (``data=`` is a deprecated alias).
    target_weights, block_size, memory_budget, backend
        As in :class:`flowkit.objectives.MMD`.

    See Also
    --------
    flowkit.objectives.MMD
        The same divergence with any radial kernel.
    flowkit.objectives.SinkhornDivergence
        Debiased entropic optimal transport: the geometry of the transport plan.
    flowkit.distributed.ShardedEnergyDistance
        This objective across processes.

    Notes
    -----
    The gradient of :math:`\|x - y\|` jumps at ``x = y``, so the objective is not smooth:
    ``smoothness`` is ``None`` and Theorem 1's step-size condition does not apply; in
    practice the flow is stable with ``eta`` of the order of the data's spread.

    Examples
    --------
    >>> import torch, flowkit as fk
    >>> y = fk.datasets.eight_gaussians(200, seed=0)
    >>> obj = fk.objectives.EnergyDistance(y)
    >>> round(float(obj.value(y)), 6)
    0.0
    """

    def __init__(self, target: Tensor = MISSING, *, target_weights: Tensor | None = None,
                 block_size: int | None = None,
                 memory_budget: int = DEFAULT_MEMORY_BUDGET, backend: str = "auto",
                 data: Tensor = MISSING):
        target, self._target_name = renamed_keyword(target, data, "target", "data",
                                                    "EnergyDistance")
        super().__init__(target, EnergyKernel(), target_weights=target_weights,
                         block_size=block_size,
                         memory_budget=memory_budget, backend=backend)
        self.smoothness = None  # the distance kernel's gradient is discontinuous at 0
