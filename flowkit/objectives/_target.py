"""The fixed weighted target sample an objective holds, as one point cloud."""

from __future__ import annotations

from torch import Tensor

from flowkit.geometry import PointCloud

__all__ = ["SampleTarget"]


class SampleTarget:
    """Mixin of the objectives to a fixed sample: the target lives in ``self._geometry``, a
    :class:`~flowkit.geometry.PointCloud` whose ``y`` is the sample and whose ``b`` its
    weights, which the subclass builds at construction."""

    _geometry: PointCloud

    @property
    def geometry(self) -> PointCloud:
        """The target's :class:`~flowkit.geometry.PointCloud` (weights, settings, and the
        kernel where there is one)."""
        return self._geometry

    @property
    def target_weights(self) -> Tensor | None:
        """The target's weights (``None``: uniform)."""
        return self._geometry.given_b
