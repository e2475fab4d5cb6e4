r"""The debiased Sinkhorn divergence to a fixed sample, in the log domain.

With the cost :math:`C(x, y) = \frac12\|x - y\|^2` and :math:`\varepsilon = \mathrm{blur}^2`
(GeomLoss' conventions for ``p = 2``), the entropic transport cost

.. math::
    \mathrm{OT}_\varepsilon(\alpha, \beta) = \min_{\pi \in \Pi(\alpha, \beta)}
        \langle \pi, C\rangle + \varepsilon\,\mathrm{KL}(\pi \,|\, \alpha\otimes\beta)
    = \langle \alpha, f\rangle + \langle \beta, g\rangle

at the optimal dual potentials, which solve the Sinkhorn fixed point (log domain)

.. math::
    f(x) = -\varepsilon \log \sum_j \beta_j\, e^{(g_j - C(x, y_j))/\varepsilon}, \qquad
    g(y) = -\varepsilon \log \sum_i \alpha_i\, e^{(f_i - C(x_i, y))/\varepsilon}

(Peyré & Cuturi 2019, ch. 4). The Sinkhorn divergence removes the
entropic bias (Feydy et al. 2019):

.. math::
    S_\varepsilon(\alpha, \beta) = \mathrm{OT}_\varepsilon(\alpha, \beta)
        - \tfrac12 \mathrm{OT}_\varepsilon(\alpha, \alpha)
        - \tfrac12 \mathrm{OT}_\varepsilon(\beta, \beta)
    = \langle \alpha, f_{\alpha\beta} - f_{\alpha\alpha}\rangle
      + \langle \beta, g_{\alpha\beta} - g_{\beta\beta}\rangle .

Its first variation in :math:`\alpha` is :math:`f_{\alpha\beta} - f_{\alpha\alpha}` (Feydy et
al. 2019; envelope theorem: the potentials' own dependence on :math:`\alpha`
drops out at the optimum), so the functional gradient needs no backpropagation through the
iterations:

.. math::
    \nabla_z\big(f_{\alpha\beta} - f_{\alpha\alpha}\big)(z)
        = \sum_j P^{\alpha}_j(z)\, x_j - \sum_m P^{\beta}_m(z)\, y_m ,

where :math:`P^{\beta}(z)` is the softmax over :math:`m` of
:math:`\log\beta_m + (g_m - C(z, y_m))/\varepsilon` (the row of the plan through ``z``).

Every reduction runs on :class:`flowkit.geometry.PointCloud` (``softmin`` and
``soft_barycenter``), so every backend it routes to reaches Sinkhorn, in row blocks under a
memory budget. Iterations follow an :math:`\varepsilon`-scaling schedule from the squared
diameter down to :math:`\varepsilon` (Schmitzer 2019 [Schmitzer19]; Feydy 2020 [Feydy20]),
under one of two accuracy policies:

* ``"converge"``: then continue at :math:`\varepsilon` until the potentials move less than
  ``tol`` in an iteration (at most ``max_iter`` iterations);
* ``"geomloss"``: one averaged iteration per :math:`\varepsilon` level, the levels a
  geometric sequence of ratio ``scaling**2`` from the squared diameter to
  :math:`\varepsilon`, then one final extrapolation (un-averaged) update: the policy of
  GeomLoss (Feydy et al. 2019 [FeydyEtAl19], sec. 3.3; Feydy 2020 [Feydy20], ch. 3). Its
  cost is fixed, its accuracy follows ``scaling``.

``scheme="multiscale"`` (points of dimension at most 3) is the coarse-to-fine scheme of
Schmitzer 2019 [Schmitzer19] and Feydy 2020 [Feydy20] (GeomLoss' ``multiscale``
backend): both samples are clustered on a grid of cells of side ``cluster_scale``
(weights summed, weighted centroids); the :math:`\varepsilon` levels above
``cluster_scale**2`` run on the clusters; the first level below (or the last step) is an
extrapolation, each point's potential the softmin of the other sample's coarse potential
(one softmin each); the remaining levels run on the points in cluster order, each softmin
over the cluster pairs :math:`(I, J)` that *kernel truncation* keeps: those where a lower
bound of :math:`C_{ij} - f_i - g_j` over the block, :math:`\tfrac12\max(0, |X_I - Y_J| -
r_I - r_J)^2 - \max_I f - \max_J g` (centroids, radii), is at most ``truncate`` times
:math:`\varepsilon`. A dropped pair weighs at most :math:`e^{-\mathrm{truncate}}` of its
row's total at the fixed point, so the potentials move by at most about
:math:`\varepsilon e^{-\mathrm{truncate}}`. The kept blocks are recomputed at every level
(and every ``check_every`` iterations at the final one); :class:`MultiscaleReport` says
what the solve did.

Either way the solver reports, in its :class:`SinkhornResult`, the L1 error of both
marginals of the plan and the sup-norm change of the potentials that one more iteration
would make (one extra pair of softmins; :meth:`SinkhornDivergence.functional_gradient`
under the multiscale scheme sweeps ``f`` only, :class:`MultiscaleReport` ``checked``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from flowkit import backends
from flowkit._compat import MISSING, renamed_keyword
from flowkit.geometry import (
    DEFAULT_MEMORY_BUDGET,
    BlockSparsity,
    GridClusters,
    PointCloud,
    grid_clusters,
    softmin_sparse,
)
from flowkit.objective import FunctionalObjective
from flowkit.objectives._target import SampleTarget
from flowkit.potential import Potential
from flowkit.validation import (
    check_choice,
    check_int,
    check_number,
    check_particles,
    check_positive,
    check_weights,
)

__all__ = ["SinkhornDivergence", "SinkhornPotential", "SinkhornResult", "MultiscaleReport",
           "sinkhorn", "sinkhorn_potentials", "POLICIES", "SCHEMES"]

POLICIES = ("converge", "geomloss")


@dataclass(frozen=True)
class SinkhornResult:
    r"""The outcome of one Sinkhorn solve.

    Attributes
    ----------
    f, g : Tensor
        Dual potentials on ``x`` (``(N,)``) and ``y`` (``(M,)``); ``g is f`` for a
        symmetric problem.
    eps : float
        The final :math:`\varepsilon`.
    iterations : int
        Softmin sweeps in all (every :math:`\varepsilon` level, the final ones, the
        extrapolation), not counting the error check.
    converged : bool
        Whether one more iteration would move the potentials by less than ``tol``.
    marginal_error : float
        :math:`\|\pi 1 - a\|_1 + \|\pi^\top 1 - b\|_1` for the plan
        :math:`\pi_{ij} = a_i b_j e^{(f_i + g_j - C_{ij})/\varepsilon}`.
    potential_change : float
        Sup norm of the change one more (un-averaged) iteration would make, in cost units.
    policy : str
        ``"converge"`` or ``"geomloss"``.
    scheme : str
        ``"dense"`` (every pair) or ``"multiscale"`` (then ``marginal_error`` and
        ``potential_change`` are those of the truncated kernel, and of ``f`` alone where
        ``multiscale.checked`` is ``"x"``).
    multiscale : MultiscaleReport or None
        What the multiscale scheme did (``None`` for the dense one).
    """

    f: Tensor
    g: Tensor
    eps: float
    iterations: int
    converged: bool
    marginal_error: float
    potential_change: float
    policy: str
    scheme: str = "dense"
    multiscale: MultiscaleReport | None = None


def _check_blur(blur: float, dtype: torch.dtype) -> float:
    """``blur`` within ``[tiny**(1/4), max**(1/4)]`` of ``dtype``: then ``eps = blur**2``,
    ``1/eps`` and the logits ``C/eps`` of any cost below ``sqrt(max)`` stay finite (outside,
    float32 gave NaN gradients at ``blur = 1e-30`` and ``1e30``)."""
    blur = check_positive(blur, "blur")
    info = torch.finfo(dtype)
    lo, hi = info.tiny**0.25, info.max**0.25
    if not lo <= blur <= hi:
        raise ValueError(f"blur must lie in [{lo:.3g}, {hi:.3g}] for {dtype} data (so that "
                         f"eps = blur**2 and 1/eps are finite), got {blur:.3g}; rescale the "
                         f"data or use float64")
    return blur


def _check_scaling(scaling: float) -> float:
    return check_number(scaling, "scaling", minimum=0.0, strict_minimum=True, maximum=1.0 - 1e-9)


def _diameter2(x: Tensor, y: Tensor, geom: PointCloud | None = None) -> float:
    lo = torch.minimum(x.amin(0), y.amin(0))
    hi = torch.maximum(x.amax(0), y.amax(0))
    if geom is not None:  # a sharded cloud: the extent of every rank's points
        neg_lo, hi = geom.all_reduce(torch.stack([-lo, hi]), "max")
        lo = -neg_lo
    return float((hi - lo).pow(2).sum())


def _eps_schedule(diameter2: float, eps: float, ratio: float) -> list[float]:
    """Geometric levels of ratio ``ratio`` from the cost of the diameter down to ``eps``
    (at the diameter's scale one iteration is already near the fixed point), ``eps`` last."""
    eps0 = max(0.5 * diameter2, eps)
    n = max(0, math.ceil(math.log(eps / eps0) / math.log(ratio))) if eps0 > eps else 0
    return [max(eps, eps0 * ratio**k) for k in range(n)] + [eps]


SCHEMES = ("dense", "multiscale")
#: Clusters along the data's diameter per dimension for the default ``cluster_scale``:
#: about ``_CLUSTERS`` grid cells over the bounding box (GeomLoss' default size).
_CLUSTERS = 2000
#: Default kernel-truncation threshold, in units of eps (:class:`MultiscaleReport`).
DEFAULT_TRUNCATE = 5.0


@dataclass(frozen=True)
class MultiscaleReport:
    r"""What the multiscale scheme did in one solve (:func:`sinkhorn`, ``scheme=
    "multiscale"``).

    Attributes
    ----------
    cluster_scale : float
        Side of the grid cells the samples were clustered on.
    clusters : tuple of int
        Clusters of ``x`` and of ``y``.
    coarse_iterations : int
        Softmin sweeps on the clusters.
    fine_iterations : int
        Softmin sweeps on the points (the extrapolation included), not counting the check.
    switch_eps : float
        The :math:`\varepsilon` at which the solve moved from the clusters to the points.
    kept_fraction : float
        Share of the ``N M`` pairs the final kernel truncation kept (the check and the
        gradient run on it).
    checked : str
        ``"both"``: the error check swept both sides. ``"x"``: only the update of ``f``
        (:meth:`SinkhornDivergence.functional_gradient` needs no other), so
        ``marginal_error`` is :math:`\|\pi 1 - a\|_1` alone and ``potential_change`` and
        ``converged`` are those of ``f``.
    """

    cluster_scale: float
    clusters: tuple[int, int]
    coarse_iterations: int
    fine_iterations: int
    switch_eps: float
    kept_fraction: float
    checked: str = "both"


def _check_scheme(scheme: str, cluster_scale: float | None, truncate: float,
                  dim: int | None = None) -> tuple[str, float | None, float]:
    """The multiscale arguments, checked once (errors name them)."""
    check_choice(scheme, "scheme", SCHEMES)
    if cluster_scale is not None:
        cluster_scale = check_positive(cluster_scale, "cluster_scale")
    truncate = check_positive(truncate, "truncate")
    if scheme == "multiscale" and dim is not None and dim > 3:
        raise ValueError(f"scheme='multiscale' clusters the samples on a grid and needs "
                         f"points of dimension at most 3, got {dim}; use scheme='dense'")
    if scheme == "dense" and cluster_scale is not None:
        raise ValueError("cluster_scale applies to scheme='multiscale' only, got "
                         "scheme='dense'")
    return scheme, cluster_scale, truncate


def _steps(policy: str, levels: list[float]) -> list[tuple[str, float]]:
    """The solve as a list of ``(kind, eps)``: ``"first"`` (one sweep from zero
    potentials), ``"avg"`` (one averaged sweep), ``"final"`` (one un-averaged sweep),
    ``"converge"`` (iterations at eps until ``tol``)."""
    if policy == "geomloss":
        return [("first", levels[0])] + [("avg", e) for e in levels[1:]] + [("final", levels[-1])]
    return [("first", levels[0])] + [("avg", e) for e in levels[1:-1]] + [("converge", levels[-1])]


class _Problem:
    """One Sinkhorn problem's updates on a point cloud (every pair)."""

    def __init__(self, geom: PointCloud, symmetric: bool):
        self.geom, self.symmetric = geom, symmetric
        self.log_a = geom.a.log()
        self.log_b = self.log_a if symmetric else geom.b.log()
        self.back = None if symmetric else geom.transpose()

    def prepare(self, f: Tensor, g: Tensor, eps: float) -> None:
        """Called before the sweeps of each level (the multiscale problem re-truncates)."""

    def f_of(self, g: Tensor, eps: float) -> Tensor:
        return self.geom.softmin(self.log_b + g / eps, eps)

    def g_of(self, f: Tensor, eps: float) -> Tensor:
        return self.back.softmin(self.log_a + f / eps, eps)

    def sweep(self, f: Tensor, g: Tensor, eps: float) -> tuple[Tensor, Tensor]:
        """One un-averaged (Jacobi) update T(f, g)."""
        if self.symmetric:
            t = self.f_of(f, eps)
            return t, t
        return self.f_of(g, eps), self.g_of(f, eps)

    def run(self, steps: list[tuple[str, float]], f: Tensor | None, g: Tensor | None, *,
            max_iter: int, tol: float, check_every: int) -> tuple[Tensor, Tensor, int]:
        """The sweeps of ``steps`` from ``(f, g)``; returns the potentials and the sweeps
        made. Updates are the averaged simultaneous ones of Feydy et al. 2019
        [FeydyEtAl19] during the annealing (they damp the oscillation of the alternating
        scheme at small eps) and alternating ones at the final eps."""
        it = 0
        for kind, e in steps:
            if kind == "first":
                f = self.geom.x.new_zeros(self.geom.x.shape[0])
                g = f if self.symmetric else self.geom.y.new_zeros(self.geom.y.shape[0])
            self.prepare(f, g, e)
            if kind in ("first", "final"):
                f, g = self.sweep(f, g, e)
                it += 1
            elif kind == "avg":
                fn, gn = self.sweep(f, g, e)
                f, g = 0.5 * (f + fn), 0.5 * (g + gn)
                it += 1
            else:
                f, g, k = self._converge(f, g, e, max_iter, tol, check_every)
                it += k
        return f, g, it

    def _converge(self, f: Tensor, g: Tensor, eps: float, max_iter: int, tol: float,
                  check_every: int) -> tuple[Tensor, Tensor, int]:
        k = 0
        while k < max_iter:
            f_old = f
            if self.symmetric:
                fn, _ = self.sweep(f, g, eps)
                f = g = 0.5 * (f + fn)
            else:
                # alternating (Gauss-Seidel) updates at the final eps: twice the rate of
                # the averaged simultaneous ones, which only the annealing needs
                f = self.f_of(g, eps)
                g = self.g_of(f, eps)
            k += 1
            # one device synchronisation every `check_every` iterations, not every one
            if k % check_every == 0:
                if float(self.geom.all_reduce((f - f_old).abs().max(), "max")) < tol:
                    break
                self.prepare(f, g, eps)
        return f, g, k

    def check(self, f: Tensor, g: Tensor, eps: float) -> tuple[float, float]:
        """The error check: one more un-averaged sweep, never applied; returns the sup-norm
        change and the marginals' L1 error."""
        fn, gn = self._check_sweep(f, g, eps)
        geom = self.geom
        change = float(geom.all_reduce(
            torch.maximum((fn - f).abs().max(), (gn - g).abs().max()), "max"))
        a, b = geom.a, (geom.a if self.symmetric else geom.b)
        # row sums a_i exp((f_i - T(g)_i)/eps), column sums b_j exp((g_j - T(f)_j)/eps)
        marg = float(geom.all_reduce((a * ((f - fn) / eps).exp() - a).abs().sum()
                                     + (b * ((g - gn) / eps).exp() - b).abs().sum(), "sum"))
        return change, marg

    def _check_sweep(self, f: Tensor, g: Tensor, eps: float) -> tuple[Tensor, Tensor]:
        return self.sweep(f, g, eps)


class _CoarseProblem(_Problem):
    """The problem on the clusters: every pair, in one pass over all rows (the centroids'
    order jumps from cell row to cell row, which :meth:`PointCloud.softmin` would treat as
    many separate segments)."""

    def f_of(self, g: Tensor, eps: float) -> Tensor:
        return softmin_sparse(self.geom, self.log_b + g / eps, eps)[0]

    def g_of(self, f: Tensor, eps: float) -> Tensor:
        return softmin_sparse(self.back, self.log_a + f / eps, eps)[0]


class _TruncatedProblem(_Problem):
    r"""The problem on the points in cluster order, each softmin over the kept blocks only.

    Kernel truncation (Schmitzer 2019 [Schmitzer19]): a pair :math:`(i, j)`
    weighs :math:`e^{(f_i + g_j - C_{ij})/\varepsilon}` relative to its row's total
    (which is 1 at the fixed point), so dropping every pair with :math:`C_{ij} - f_i -
    g_j > \tau\varepsilon` changes each row's sum by a factor within :math:`e^{-\tau}`
    of 1 (the potentials by at most about :math:`\varepsilon e^{-\tau}`). Cluster pairs
    :math:`(I, J)` are dropped only when a lower bound of that gap over the whole block
    exceeds :math:`\tau\varepsilon`: :math:`\tfrac12 \max(0, |X_I - Y_J| - r_I -
    r_J)^2 - \max_{i \in I} f_i - \max_{j \in J} g_j` (centroids :math:`X, Y`, radii
    :math:`r`), so no pair above the threshold is lost to the clustering. The blocks are
    recomputed from the current potentials at every level (and every ``check_every``
    iterations at the final eps).
    """

    def __init__(self, geom: PointCloud, symmetric: bool, cx: GridClusters,
                 cy: GridClusters, truncate: float, check_y: bool = True):
        super().__init__(geom, symmetric)
        self.cx, self.cy, self.truncate = cx, cy, truncate
        #: whether the error check updates ``g`` too (the gradient needs only ``f``'s)
        self.check_y = check_y or symmetric
        self.xy: BlockSparsity | None = None
        self.yx: BlockSparsity | None = None
        #: the soft barycentre of ``y`` at each ``x`` (original order) at the checked
        #: potentials, over the final kept blocks: ``x`` minus it is the potential's gradient
        self.barycenter: Tensor | None = None

    def prepare(self, f: Tensor, g: Tensor, eps: float) -> None:
        cx, cy = self.cx, self.cy
        gap = 0.5 * (torch.cdist(cx.centroids, cy.centroids) - cx.radii[:, None]
                     - cy.radii[None, :]).clamp_min(0.0).pow(2)
        keep = gap - cx.segment_max(f)[:, None] - cy.segment_max(g)[None, :] \
            <= self.truncate * eps
        self.xy = BlockSparsity.from_mask(keep, cx.ranges, cy.ranges)
        if not self.symmetric:
            self.yx = BlockSparsity.from_mask(keep.T, cy.ranges, cx.ranges)

    def f_of(self, g: Tensor, eps: float) -> Tensor:
        return softmin_sparse(self.geom, self.log_b + g / eps, eps, self.xy)[0]

    def g_of(self, f: Tensor, eps: float) -> Tensor:
        return softmin_sparse(self.back, self.log_a + f / eps, eps, self.yx)[0]

    def _check_sweep(self, f: Tensor, g: Tensor, eps: float) -> tuple[Tensor, Tensor]:
        # the check's update of f is the softmin whose soft barycentre the gradient needs:
        # computed together (two more sums per pair), kept in the original order
        fn, bar = softmin_sparse(self.geom, self.log_b + (f if self.symmetric else g) / eps,
                                 eps, self.xy, barycenter=True)
        self.barycenter = self.cx.unsort(bar)
        if self.symmetric:
            return fn, fn
        # unchecked, g counts as its own update: no change, no error on its side
        return fn, (self.g_of(f, eps) if self.check_y else g)


def sinkhorn(geom: PointCloud, eps: float, *, symmetric: bool = False,
             policy: str = "converge", scaling: float = 0.5, max_iter: int = 1000,
             tol: float = 1e-5, check_every: int = 10,
             init: tuple[Tensor, Tensor] | None = None, scheme: str = "dense",
             cluster_scale: float | None = None,
             truncate: float = DEFAULT_TRUNCATE) -> SinkhornResult:
    r"""Dual potentials of :math:`\mathrm{OT}_\varepsilon(\alpha, \beta)` on a point cloud.

    Cost :math:`\frac12\|x-y\|^2`, weights ``geom.a`` and ``geom.b``. Updates are the
    averaged simultaneous ones of Feydy et al. 2019 [FeydyEtAl19] (they damp the
    oscillation of the alternating scheme at small eps); ``symmetric`` solves
    :math:`\mathrm{OT}_\varepsilon(\alpha, \alpha)` with :math:`f \leftarrow \frac12(f +
    T(f))` and returns ``g = f``. ``policy`` is ``"converge"`` (levels of ratio
    ``scaling``, then alternating updates :math:`f \leftarrow T(g), g \leftarrow T(f)` at
    ``eps`` until ``f`` moves less than ``tol``, at most ``max_iter`` times, checking every
    ``check_every``) or ``"geomloss"`` (levels of
    ratio ``scaling**2``, one iteration each, one extrapolation; ``max_iter`` and ``tol``
    only set ``converged``). ``init`` warm-starts from given potentials and skips the
    scaling. ``scheme="multiscale"`` (points of dimension at most 3) runs the levels above
    ``cluster_scale**2`` on grid clusters and the rest on the points with the kernel
    truncated at ``truncate`` (grid clusters, an extrapolation to the points, kernel
    truncation: the module docstring).
    """
    check_choice(policy, "policy", POLICIES)
    scaling = _check_scaling(scaling)
    check_int(max_iter, "max_iter")
    check_int(check_every, "check_every")
    tol = check_positive(tol, "tol")
    eps = check_positive(eps, "eps")
    _check_scheme(scheme, cluster_scale, truncate, geom.x.flatten(1).shape[1])
    loop = {"max_iter": max_iter, "tol": tol, "check_every": check_every}
    if scheme == "multiscale":
        return _sinkhorn_multiscale(geom, eps, symmetric=symmetric, policy=policy,
                                   scaling=scaling, init=init, cluster_scale=cluster_scale,
                                   truncate=truncate, **loop)[0]
    prob = _Problem(geom, symmetric)
    if init is not None:
        f, g = init
        steps = [("final" if policy == "geomloss" else "converge", eps)]
    else:
        f = g = None
        diam2 = _diameter2(geom.x.flatten(1), geom.y.flatten(1), geom)
        steps = _steps(policy, _schedule(diam2, eps, policy, scaling))
    f, g, it = prob.run(steps, f, g, **loop)
    change, marg = prob.check(f, g, eps)
    if symmetric:
        g = f
    return SinkhornResult(f=f, g=g, eps=eps, iterations=it, converged=change < tol,
                          marginal_error=marg, potential_change=change, policy=policy)


def _schedule(diameter2: float, eps: float, policy: str, scaling: float) -> list[float]:
    """The eps levels of ``policy`` for data of squared diameter ``diameter2``."""
    ratio = scaling**2 if policy == "geomloss" else scaling
    return _eps_schedule(diameter2, eps, ratio)


def _sinkhorn_multiscale(geom: PointCloud, eps: float, *, symmetric: bool, policy: str,
                        scaling: float, max_iter: int, tol: float, check_every: int,
                        init: tuple[Tensor, Tensor] | None, cluster_scale: float | None,
                        truncate: float, check_y: bool = True
                        ) -> tuple[SinkhornResult, _TruncatedProblem]:
    r"""Coarse-to-fine Sinkhorn (Schmitzer 2019 [Schmitzer19]; Feydy 2020 [Feydy20],
    ch. 3): the :func:`sinkhorn` schedule, its levels above ``cluster_scale**2`` run on
    grid clusters of the samples, the rest on the points with a truncated kernel.

    1. Both samples are clustered on a grid of cells of side ``cluster_scale``
       (:func:`flowkit.geometry.grid_clusters`; default: the data's diameter over
       :math:`\sqrt{d}\,2000^{1/d}`, about 2000 cells over the bounding box).
    2. The steps whose :math:`\varepsilon` exceeds ``cluster_scale**2`` (the clusters'
       blur is below the kernel's) run on the clusters (weights summed, weighted
       centroids), every pair, dense.
    3. The first step below (or the policy's last one) is the extrapolation: each point's
       potential is the softmin of the coarse potentials of the other sample, one softmin
       of ``N x K`` pairs each (the Sinkhorn update read as a function of the point).
    4. The remaining steps run on the points in cluster order, over the cluster pairs the
       kernel truncation keeps (the bound below), block-sparse
       (:func:`flowkit.geometry.softmin_sparse`).

    ``init`` (a warm start) skips steps 2-3. Returns the result (potentials in the
    original order; its ``multiscale`` the :class:`MultiscaleReport`) and the truncated
    problem at the final potentials (for the soft barycentres of the gradient).
    ``check_y=False`` checks the update of ``f`` only (``MultiscaleReport.checked``).
    Checked arguments are the caller's (:func:`sinkhorn`).
    """
    x, y = geom.x.flatten(1), geom.y.flatten(1)
    d = x.shape[1]
    diam2 = _diameter2(x, y, geom)
    scale = cluster_scale if cluster_scale is not None else max(
        math.sqrt(diam2) / (math.sqrt(d) * _CLUSTERS ** (1.0 / d)),
        torch.finfo(x.dtype).eps ** 0.5)
    cx = grid_clusters(x, geom.a, scale)
    cy = cx if symmetric else grid_clusters(y, geom.b, scale)
    fine_geom = PointCloud.checked(cx.sort(x), cy.sort(y), a=cx.sort(geom.a),
                                   b=cy.sort(geom.b), **geom.policy)
    fine = _TruncatedProblem(fine_geom, symmetric, cx, cy, truncate, check_y)
    loop = {"max_iter": max_iter, "tol": tol, "check_every": check_every}
    coarse_it, switch = 0, eps
    if init is None:
        steps = _steps(policy, _schedule(diam2, eps, policy, scaling))
        k = next(i for i, (kind, e) in enumerate(steps)
                 if e <= scale**2 or kind in ("final", "converge"))
        if k == 0:
            raise ValueError(f"cluster_scale={scale:.3g} is above the data's diameter "
                             f"scale (its square {scale**2:.3g} exceeds the first eps level "
                             f"{steps[0][1]:.3g}): nothing to solve on the clusters; use a "
                             f"smaller cluster_scale or scheme='dense'")
        kind, switch = steps[k]
        # a converge step above the cluster scale converges on the clusters first
        coarse_steps = steps[:k] + ([steps[k]] if kind == "converge" and switch > scale**2
                                    else [])
        fine_steps = steps[k + 1:] + ([steps[k]] if kind == "converge" else [])
        coarse = _CoarseProblem(PointCloud.checked(cx.centroids, cy.centroids, a=cx.weights,
                                                   b=cy.weights, **geom.policy), symmetric)
        F, G, coarse_it = coarse.run(coarse_steps, None, None, **loop)
        f = _extrapolate(fine_geom.x, cy, G, switch, geom)
        g = f if symmetric else _extrapolate(fine_geom.y, cx, F, switch, geom)
        fine_it = 1
    else:
        f, g = cx.sort(init[0]), cy.sort(init[1])
        fine_steps, fine_it = [("final" if policy == "geomloss" else "converge", eps)], 0
    f, g, n = fine.run(fine_steps, f, g, **loop)
    fine.prepare(f, g, eps)  # the final blocks: the check and the gradient run on them
    change, marg = fine.check(f, g, eps)
    f = cx.unsort(f)
    g = f if symmetric else cy.unsort(g)
    report = MultiscaleReport(cluster_scale=scale, clusters=(cx.ranges.shape[0],
                                                              cy.ranges.shape[0]),
                              coarse_iterations=coarse_it, fine_iterations=fine_it + n,
                              switch_eps=switch, kept_fraction=fine.xy.kept_fraction,
                              checked="both" if fine.check_y else "x")
    return SinkhornResult(f=f, g=g, eps=eps, iterations=coarse_it + fine_it + n,
                          converged=change < tol, marginal_error=marg,
                          potential_change=change, policy=policy, scheme="multiscale",
                          multiscale=report), fine


def _extrapolate(points: Tensor, clusters: GridClusters, potential: Tensor, eps: float,
                 geom: PointCloud) -> Tensor:
    """The Sinkhorn update of a coarse potential, evaluated at the points: one softmin."""
    cloud = PointCloud.checked(points, clusters.centroids, b=clusters.weights, **geom.policy)
    return softmin_sparse(cloud, clusters.weights.log() + potential / eps, eps)[0]


def sinkhorn_potentials(x: Tensor, y: Tensor | None, eps: float, *, scaling: float = 0.5,
                        max_iter: int = 1000, tol: float = 1e-5, check_every: int = 10,
                        memory_budget: int = DEFAULT_MEMORY_BUDGET,
                        init: tuple[Tensor, Tensor] | None = None
                        ) -> tuple[Tensor, Tensor, int]:
    r"""Dual potentials ``(f, g)`` of :math:`\mathrm{OT}_\varepsilon` between uniform measures.

    The tuple form of :func:`sinkhorn` (``policy="converge"``), kept for existing callers:
    ``y=None`` solves the symmetric problem and returns ``(f, f)``. Returns the potentials
    and the number of iterations at the final ``eps``.
    """
    geom = PointCloud(x, y, memory_budget=memory_budget, backend="torch")
    res = sinkhorn(geom, eps, symmetric=y is None, scaling=scaling, max_iter=max_iter,
                   tol=tol, check_every=check_every, init=init)
    d2 = _diameter2(geom.x.flatten(1), geom.y.flatten(1))
    n_levels = 0 if init is not None else len(_eps_schedule(d2, eps, scaling)) - 1
    return res.f, res.g, res.iterations - n_levels


def _log_weights(w: Tensor | None, n: int) -> Tensor | float:
    """``log w`` (``-log n`` for uniform weights: a number, so the uniform case is exact)."""
    return -math.log(n) if w is None else w.log()


class SinkhornPotential(Potential):
    r"""The first variation :math:`\psi = f_{\alpha\beta} - f_{\alpha\alpha}` as a potential.

    Holds the particle and data snapshots and the converged potentials
    :math:`g_{\alpha\beta}` (on the data) and :math:`f_{\alpha\alpha}` (on the particles),
    and evaluates both softmins anywhere in closed form (module docstring), on
    :class:`flowkit.geometry.PointCloud`.
    """

    def __init__(self, particles: Tensor, data: Tensor, g_ab: Tensor, f_aa: Tensor, eps: float,
                 center: Tensor, memory_budget: int, backend: str = "auto", *,
                 weights: Tensor | None = None, data_weights: Tensor | None = None):
        super().__init__()
        self.register_buffer("particles", particles)
        self.register_buffer("data", data)
        # the softmax logits' weights: log a + f_aa / eps and log b + g_ab / eps
        self.register_buffer("h_a", f_aa / eps + _log_weights(weights, particles.shape[0]))
        self.register_buffer("h_b", g_ab / eps + _log_weights(data_weights, data.shape[0]))
        self.register_buffer("center", center)
        self.eps = eps
        self.memory_budget = memory_budget
        self.backend = backend

    def _clouds(self, z: Tensor) -> tuple[PointCloud, PointCloud]:
        zc = z.flatten(1) - self.center
        kw = {"memory_budget": self.memory_budget, "backend": self.backend,
              "names": ("z", "data", "a", "b")}
        to_data = PointCloud(zc, self.data, **kw)
        return to_data, PointCloud.checked(zc, self.particles, **to_data.policy)

    def forward(self, z: Tensor) -> Tensor:
        to_data, to_particles = self._clouds(z)
        return to_data.softmin(self.h_b, self.eps) - to_particles.softmin(self.h_a, self.eps)

    def grad(self, z: Tensor, *, create_graph: bool = False) -> Tensor:
        # soft barycentres are torch ops: differentiable in z whenever z carries a graph
        to_data, to_particles = self._clouds(z)
        bar_a = to_particles.soft_barycenter(self.h_a, self.eps)
        bar_b = to_data.soft_barycenter(self.h_b, self.eps)
        return (bar_a - bar_b).view_as(z)


class SinkhornDivergence(SampleTarget, FunctionalObjective):
    r"""Debiased Sinkhorn divergence :math:`S_\varepsilon(\mu, \nu)` to a fixed sample.

    Parameters
    ----------
    target : Tensor or PointCloud
        Target sample ``(M, *event)`` (``data=`` is a deprecated alias; the sample is kept
        as the attribute ``data``), or a :class:`flowkit.geometry.PointCloud` on it
        (``PointCloud(y, b=target_weights, memory_budget=..., backend=...)``), which then
        fixes the weights and the compute settings (leave those arguments at their
        defaults).
    blur : float
        :math:`\sqrt\varepsilon`, the length scale below which the divergence blurs detail
        (GeomLoss' ``blur`` for ``p = 2``).
    scaling : float in (0, 1)
        Ratio of the :math:`\varepsilon`-scaling schedule (GeomLoss' ``scaling``).
    max_iter : int
        Iterations at the final :math:`\varepsilon`, at most (``last_results`` tells
        whether the solve converged).
    tol : float
        Stop once the potentials move less than ``tol`` (cost units) in an iteration. The
        defaults (``tol=1e-6``, ``max_iter=1000``) keep the gradient within 1% of a
        converged float64 solve for ``blur >= 0.05`` on data of unit diameter: measured
        0.17% at ``blur = 0.05`` (269 iterations) and 0.03% at ``blur = 0.1`` (97), N = M =
        500, 8 gaussians in the unit square, against 2.4% and 0.18% with the former
        ``tol=1e-5, max_iter=100`` (``benchmarks/sinkhorn.py --part accuracy``). Smaller
        blurs need about ``diameter**2 / blur**2`` iterations: raise ``max_iter`` and lower
        ``tol`` together, and watch ``last_results[0].marginal_error``, which tracked the
        gradient's relative error within a factor 10 (measured 5-8x below it).
    memory_budget : int
        Bytes of temporaries per block.
    policy : {"converge", "geomloss"}
        Accuracy policy of :func:`sinkhorn` (module docstring).
    backend : {"auto", "torch", "native", "keops", "triton"}
        Where the softmins run (:mod:`flowkit.backends`); ``"auto"`` takes the fused
        native path for float32 on CPU (event size up to 16) and Triton on CUDA.
    warm_start : bool
        Start each evaluation from the potentials of the previous one instead of from zero
        with eps-scaling: along a flow the particles move little per step, so a few
        iterations suffice. The previous potentials are extended to the new points as
        functions (one softmin each), so the start depends on the previous measure, not on
        the particles' order or number; the result agrees with a fresh solve to the order
        of ``tol``. The potentials and their support are part of :meth:`state_dict`, so a
        resumed run is unchanged.
    target_weights : Tensor, optional
        ``(M,)`` probability weights of the data (default uniform).
    scheme : {"dense", "multiscale"}
        ``"dense"``: every softmin over every pair. ``"multiscale"`` (points of dimension
        at most 3): the coarse-to-fine scheme of the module docstring, the
        :math:`\varepsilon` levels above ``cluster_scale**2`` on grid clusters, the rest
        on the points over the kept blocks of a truncated kernel; ``functional_gradient``
        runs its soft barycentres on those blocks too. For large samples (measured faster
        than the dense scheme from a few thousand points, ``docs/geometry.md``);
        ``last_results[i].multiscale`` reports the levels and the kept share of pairs.
    cluster_scale : float, optional
        Side of the multiscale scheme's grid cells (default: the data's diameter over
        :math:`\sqrt{d}\,2000^{1/d}`, about 2000 cells over the bounding box).
    truncate : float
        The multiscale scheme drops the cluster pairs whose lower bound of
        :math:`C_{ij} - f_i - g_j` exceeds ``truncate * eps``: each row's sum then moves by
        a factor within :math:`e^{-\mathrm{truncate}}` of 1. The default 5 (GeomLoss'
        too) kept 37% of the pairs at N = 50000, blur 0.1, against 49% at 10, for a
        converged gradient error of 3.0e-4 against 1.2e-4 (N = 5000, ``docs/geometry.md``).

    See Also
    --------
    flowkit.objectives.MMD
        A kernel divergence, cheaper per step.
    flowkit.objectives.EnergyDistance
        The energy kernel's MMD: no blur to choose, no inner loop.
    flowkit.flows.SlicedWasserstein
        One-dimensional optimal transport over random directions.

    Notes
    -----
    Conventions: cost :math:`\frac12\|x-y\|^2` and :math:`\varepsilon = \mathrm{blur}^2`,
    as GeomLoss' ``SamplesLoss("sinkhorn", p=2, blur=blur)``; POT's ``ot.sinkhorn2(a, b, M,
    reg)`` minimises the same problem with ``M = C`` and ``reg = eps`` but returns the linear
    term :math:`\langle\pi, C\rangle` only (the tests compare the plan cost with it).
    The value is the debiased divergence :math:`S_\varepsilon \ge 0`, zero iff the
    measures coincide (Feydy et al. 2019). The gradient uses the converged
    potentials (envelope theorem), so its accuracy follows ``tol``. No smoothness constant
    is claimed. ``first_variation``, ``functional_gradient``, ``value``, ``ot_eps`` and
    ``plan_cost`` take particle ``weights`` (``None``: uniform); ``value`` is
    differentiable by autograd in ``x`` and ``weights`` (the envelope gradient, see
    :meth:`value`).

    Examples
    --------
    >>> import torch, flowkit as fk
    >>> y = fk.datasets.eight_gaussians(200, seed=0)
    >>> obj = fk.objectives.SinkhornDivergence(y, blur=0.1)
    >>> obj.functional_gradient(torch.zeros(5, 2)).shape
    torch.Size([5, 2])
    """

    minimum = 0.0

    def __init__(self, target: Tensor | PointCloud = MISSING, blur: float = 0.05, *,
                 scaling: float = 0.5, max_iter: int = 1000, tol: float = 1e-6,
                 memory_budget: int = DEFAULT_MEMORY_BUDGET, warm_start: bool = True,
                 policy: str = "converge", backend: str = "auto",
                 target_weights: Tensor | None = None, data: Tensor | PointCloud = MISSING,
                 scheme: str = "dense", cluster_scale: float | None = None,
                 truncate: float = DEFAULT_TRUNCATE):
        data, name = renamed_keyword(target, data, "target", "data", "SinkhornDivergence")
        self._target_name = name
        if isinstance(data, PointCloud):
            given = [k for k, v, d in [("memory_budget", memory_budget, DEFAULT_MEMORY_BUDGET),
                                       ("backend", backend, "auto"),
                                       ("target_weights", target_weights, None)] if v is not d]
            if given:
                raise ValueError(f"{name} is a PointCloud, which already fixes "
                                 f"{', '.join(given)}: set them on the PointCloud, not here")
            geom, target_weights = data, data.given_b
            data = geom.y
        else:
            check_particles(data, name)
            geom = PointCloud(data, b=target_weights, memory_budget=memory_budget,
                              backend=backend,
                              names=(name, name, "target_weights", "target_weights"))
        if target_weights is not None:
            check_weights(target_weights, data.shape[0], "target_weights", like=data)
        if geom.backend == "native":  # float64 or a device the fused path cannot run: now
            backends.route("native", geom.y.flatten(1), kernel="softmin",
                           what=" (Sinkhorn's softmin)")
        geom.block_rows(3)  # a budget too small for one row fails here, not mid-run
        self._geometry = geom
        self.data = data
        self.blur = _check_blur(blur, self.data.dtype)
        self.eps = self.blur**2
        self.scaling = _check_scaling(scaling)
        self.max_iter = check_int(max_iter, "max_iter")
        self.tol = check_positive(tol, "tol")
        self.policy = check_choice(policy, "policy", POLICIES)
        self.scheme, self.cluster_scale, self.truncate = _check_scheme(
            scheme, cluster_scale, truncate, self.data.flatten(1).shape[1])
        # plain copies of the cloud's settings (part of the checkpointed configuration)
        self.memory_budget, self.backend = geom.memory_budget, geom.backend
        self._g_bb: Tensor | None = None  # the data's self-potential, cached
        self.warm_start = bool(warm_start)
        self._warm: dict[str, Tensor | None] | None = None
        #: iterations of the last evaluation's solves (alpha-beta, alpha-alpha)
        self.last_iterations: tuple[int, int] = (0, 0)
        #: the last evaluation's :class:`SinkhornResult` s (alpha-beta, alpha-alpha)
        self.last_results: tuple[SinkhornResult, SinkhornResult] | None = None

    def validate(self, x: Tensor) -> None:
        self._geometry.particles(x, target=self._target_name)

    def _check(self, x: Tensor, weights: Tensor | None) -> Tensor | None:
        self.validate(x)
        w = PointCloud.particle_weights(weights, x)
        return None if w is None else w.detach()

    def _kw(self) -> dict[str, Any]:
        kw = {"scaling": self.scaling, "max_iter": self.max_iter, "tol": self.tol,
              "policy": self.policy}
        if getattr(self, "scheme", "dense") == "multiscale":
            kw.update(scheme="multiscale", cluster_scale=self.cluster_scale,
                      truncate=self.truncate)
        return kw

    def _cloud(self, x: Tensor, y: Tensor, a: Tensor | None = None,
               b: Tensor | None = None) -> PointCloud:
        # inputs validated by validate() and at construction
        return PointCloud.checked(x, y, a=a, b=b, **self._geometry.policy)

    def _warm_init(self, geom: PointCloud, xc: Tensor
                   ) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]] | None:
        r"""Starting potentials from the previous solve, as *functions* of the new points.

        A potential is a function, not a vector indexed by particles: the data's
        :math:`g_{\alpha\beta}` stays on the (fixed) data, and :math:`f_{\alpha\beta}`,
        :math:`f_{\alpha\alpha}` are extended to the new points by the Sinkhorn update
        (:math:`f(z) = -\varepsilon\log\sum_j w_j e^{(h_j - C(z, \cdot_j))/\varepsilon}`
        over the previous solve's support). The start therefore depends on the previous
        measure, never on the order of the particles: a permutation of the particles
        starts from the permuted potentials and gives the permuted result.
        """
        warm = self._warm
        if not self.warm_start or warm is None or warm.get("x") is None:
            return None
        old = warm["x"]
        if old.dtype != xc.dtype or old.device != xc.device or old.shape[1] != xc.shape[1]:
            return None
        eps = self.eps
        f_ab = geom.softmin(geom.b.log() + warm["g_ab"] / eps, eps)
        h_aa = warm["f_aa"] / eps + _log_weights(warm["a"], old.shape[0])
        f_aa = self._cloud(xc, old, b=warm["a"]).softmin(h_aa, eps)
        return (f_ab, warm["g_ab"]), (f_aa, f_aa)

    def _solve(self, x: Tensor, weights: Tensor | None = None, *,
               gradient_only: bool = False) -> dict[str, Any]:
        x2, y2 = x.detach().flatten(1), self.data.flatten(1)
        # translation invariance: centre on the data (the blocks re-centre locally too)
        center = self._center(y2)
        xc, yc = x2 - center, y2 - center
        b = self.target_weights
        geom = self._cloud(xc, yc, weights, b)
        init = self._warm_init(geom, xc)
        aa_geom = self._cloud(xc, xc, weights, weights)
        truncated = None
        if self._kw().get("scheme") == "multiscale":
            kw = {k: v for k, v in self._kw().items() if k != "scheme"}
            kw.update(check_every=10)
            # the gradient needs only f's check sweep: g's would be one more truncated
            # softmin over every kept pair
            ab, ab_prob = _sinkhorn_multiscale(geom, self.eps, symmetric=False,
                                              init=None if init is None else init[0],
                                              check_y=not gradient_only, **kw)
            aa, aa_prob = _sinkhorn_multiscale(aa_geom, self.eps, symmetric=True,
                                              init=None if init is None else init[1], **kw)
            truncated = (ab_prob, aa_prob)
        else:
            ab = sinkhorn(geom, self.eps, init=None if init is None else init[0],
                          **self._kw())
            aa = sinkhorn(aa_geom, self.eps, symmetric=True,
                          init=None if init is None else init[1], **self._kw())
        self.last_iterations = (ab.iterations, aa.iterations)
        self.last_results = (ab, aa)
        if self.warm_start:
            self._warm = {"x": xc, "a": weights, "f_ab": ab.f, "g_ab": ab.g, "f_aa": aa.f}
        return {"xc": xc, "yc": yc, "center": center, "f_ab": ab.f, "g_ab": ab.g,
                "f_aa": aa.f, "a": weights, "b": b, "truncated": truncated}

    def _center(self, y2: Tensor) -> Tensor:
        """The data's mean ``(1, D)``, the frame of every solve (a sharded objective's is
        the mean over every rank's data)."""
        return y2.mean(0, keepdim=True)

    def state_dict(self) -> dict[str, Any]:
        """The warm-start potentials and their support (so a resumed flow continues
        identically); a state saved before the support was kept loads as a cold start."""
        return {"warm": self._warm}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "warm" not in state:
            raise ValueError(f"state is missing keys ['warm'], got {sorted(state)}")
        self._warm = state["warm"]

    def _g_bb_cached(self, yc: Tensor) -> Tensor:
        if self._g_bb is None:
            b = self.target_weights
            self._g_bb = sinkhorn(self._cloud(yc, yc, b, b), self.eps, symmetric=True,
                                  **self._kw()).f
        return self._g_bb

    def _potential(self, s: dict[str, Any]) -> SinkhornPotential:
        return SinkhornPotential(s["xc"], s["yc"], s["g_ab"], s["f_aa"], self.eps, s["center"],
                                 self.memory_budget, self.backend, weights=s["a"],
                                 data_weights=s["b"])

    def first_variation(self, x: Tensor, weights: Tensor | None = None) -> SinkhornPotential:
        return self._potential(self._solve(x, self._check(x, weights)))

    def functional_gradient(self, x: Tensor, weights: Tensor | None = None) -> Tensor:
        s = self._solve(x, self._check(x, weights), gradient_only=True)
        if s["truncated"] is None:
            return self._potential(s).grad(x)
        # multiscale: both soft barycentres over the blocks the final truncations kept
        ab, aa = s["truncated"]
        return (aa.barycenter - ab.barycenter).view_as(x)

    def value(self, x: Tensor, weights: Tensor | None = None) -> Tensor:
        r""":math:`S_\varepsilon = \langle\alpha, f_{ab} - f_{aa}\rangle
        + \langle\beta, g_{ab} - g_{bb}\rangle`, differentiable by autograd in ``x`` and
        ``weights``.

        The potentials are solved without recording a graph; the gradient autograd sees is
        the envelope theorem's (Feydy et al. 2019 [FeydyEtAl19]): :math:`\partial S /
        \partial x_i = a_i \nabla\psi(x_i)` and :math:`\partial S/\partial a_i =
        \psi(x_i)` up to a constant, :math:`\psi = f_{ab} - f_{aa}` the first variation
        at the solved potentials. The number returned is the dual value, unchanged.
        """
        w = self._check(x, weights)
        s = self._solve(x, w)
        a, b = s["a"], s["b"]
        g = s["g_ab"] - self._g_bb_cached(s["yc"])
        out = _mean(s["f_ab"] - s["f_aa"], a) + _mean(g, b)
        tracked = torch.is_grad_enabled() and (
            x.requires_grad or (weights is not None and weights.requires_grad))
        if tracked:
            # value unchanged, gradient the envelope's: psi evaluated at x (a graph in x),
            # weighted by the weights as given (a graph in them)
            lin = self._potential(s)(x)
            lin = lin.mean() if weights is None else lin @ weights
            out = out + (lin - lin.detach())
        return out

    def ot_eps(self, x: Tensor, weights: Tensor | None = None) -> Tensor:
        r""":math:`\mathrm{OT}_\varepsilon(\alpha, \beta) = \langle\alpha, f\rangle
        + \langle\beta, g\rangle`, the biased entropic cost (for checks; no graph)."""
        s = self._solve(x, self._check(x, weights))
        return _mean(s["f_ab"], s["a"]) + _mean(s["g_ab"], s["b"])

    def plan_cost(self, x: Tensor, weights: Tensor | None = None) -> Tensor:
        r"""The transport part :math:`\langle\pi, C\rangle` of the entropic plan (POT's
        ``ot.sinkhorn2`` value), computed in row blocks."""
        s = self._solve(x, self._check(x, weights))
        return self._cloud(s["xc"], s["yc"], s["a"], s["b"]).plan_cost(s["f_ab"], s["g_ab"],
                                                                      self.eps)


def _mean(values: Tensor, weights: Tensor | None) -> Tensor:
    """The average of ``values`` under ``weights`` (``None``: uniform, a plain mean)."""
    return values.mean() if weights is None else values @ weights
