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

Every ``N x M`` quantity is computed in row blocks (memory budget as in
:mod:`flowkit.kernels`); iterations follow an :math:`\varepsilon`-scaling schedule from the
squared diameter down to :math:`\varepsilon` (Schmitzer 2019; Feydy 2020),
then continue at :math:`\varepsilon` until the potentials move less than ``tol``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from flowkit.kernels import DEFAULT_MEMORY_BUDGET, _sqdist_gram, block_rows
from flowkit.objective import FunctionalObjective
from flowkit.potential import Potential
from flowkit.validation import check_compatible, check_particles, check_positive

__all__ = ["SinkhornDivergence", "SinkhornPotential", "sinkhorn_potentials"]


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


def _blocks(n: int, rows: int):
    return [slice(s, s + rows) for s in range(0, n, rows)]


def _softmin(x: Tensor, y: Tensor, h: Tensor, eps: float, rows: int) -> Tensor:
    r"""``-eps log sum_j exp(h_j - C(x_i, y_j)/eps)`` for every ``i``, in row blocks."""
    y_sq = y.pow(2).sum(1)
    out = [-eps * torch.logsumexp(h - (0.5 / eps) * _sqdist_gram(x[s], y, y_sq), dim=1)
           for s in _blocks(x.shape[0], rows)]
    return torch.cat(out)


def _soft_barycenter(x: Tensor, y: Tensor, h: Tensor, eps: float, rows: int) -> Tensor:
    r"""``sum_j softmax_j(h_j - C(x_i, y_j)/eps) y_j``: the gradient of the softmin is
    ``x_i`` minus this (for ``C = |x-y|^2/2``)."""
    y_sq = y.pow(2).sum(1)
    out = [torch.softmax(h - (0.5 / eps) * _sqdist_gram(x[s], y, y_sq), dim=1) @ y
           for s in _blocks(x.shape[0], rows)]
    return torch.cat(out)


def _eps_schedule(x: Tensor, y: Tensor, eps: float, scaling: float) -> list[float]:
    # Start at the cost of the diameter, where one iteration is already near the fixed
    # point, and anneal geometrically: far fewer iterations than starting at eps.
    both = torch.cat([x, y])
    diameter2 = float((both.amax(0) - both.amin(0)).pow(2).sum())
    eps0 = max(0.5 * diameter2, eps)
    n = max(0, math.ceil(math.log(eps / eps0) / math.log(scaling))) if eps0 > eps else 0
    return [max(eps, eps0 * scaling**k) for k in range(n)] + [eps]


def sinkhorn_potentials(x: Tensor, y: Tensor | None, eps: float, *, scaling: float = 0.5,
                        max_iter: int = 1000, tol: float = 1e-5, check_every: int = 10,
                        memory_budget: int = DEFAULT_MEMORY_BUDGET,
                        init: tuple[Tensor, Tensor] | None = None
                        ) -> tuple[Tensor, Tensor, int]:
    r"""Dual potentials ``(f, g)`` of :math:`\mathrm{OT}_\varepsilon` between uniform measures.

    ``y=None`` solves the symmetric problem :math:`\mathrm{OT}_\varepsilon(\alpha, \alpha)`
    with the averaged update :math:`f \leftarrow \frac12(f + T(f))` (Feydy et al. 2019),
    returning ``(f, f)``; the two-sided problem averages both updates the same way.
    Cost :math:`\frac12\|x-y\|^2`; ``x`` and ``y`` should be
    centred together (the caller does it). ``init`` warm-starts from given potentials
    (e.g. the previous step of a flow) and then skips the eps-scaling. Returns the
    potentials and the number of iterations at the final ``eps``.
    """
    sym = y is None
    yy = x if sym else y
    n, m = x.shape[0], yy.shape[0]
    log_a = x.new_full((n,), -math.log(n))
    log_b = x.new_full((m,), -math.log(m))
    rows_x = block_rows(m, x.element_size(), memory_budget, 3)
    rows_y = block_rows(n, x.element_size(), memory_budget, 3)
    if init is None:
        schedule = _eps_schedule(x, yy, eps, scaling)
        f, g = x.new_zeros(n), x.new_zeros(m)
    else:
        schedule = [eps]
        f, g = init

    def sweep(e: float) -> tuple[Tensor, Tensor]:
        if sym:
            t = _softmin(x, x, log_a + f / e, e, rows_x)
            fn = 0.5 * (f + t)
            return fn, fn
        # averaged simultaneous updates (as in Feydy 2020): they damp the
        # oscillation of the alternating scheme at small eps
        fn = _softmin(x, yy, log_b + g / e, e, rows_x)
        gn = _softmin(yy, x, log_a + f / e, e, rows_y)
        return 0.5 * (f + fn), 0.5 * (g + gn)

    for e in schedule[:-1]:
        f, g = sweep(e)
    it = 0
    while it < max_iter:
        f_old = f
        f, g = sweep(eps)
        it += 1
        # one device synchronisation every `check_every` iterations, not every one
        if it % check_every == 0 and float((f - f_old).abs().max()) < tol:
            break
    return f, g, it


class SinkhornPotential(Potential):
    r"""The first variation :math:`\psi = f_{\alpha\beta} - f_{\alpha\alpha}` as a potential.

    Holds the particle and data snapshots and the converged potentials
    :math:`g_{\alpha\beta}` (on the data) and :math:`f_{\alpha\alpha}` (on the particles),
    and evaluates both softmins anywhere in closed form (module docstring).
    """

    def __init__(self, particles: Tensor, data: Tensor, g_ab: Tensor, f_aa: Tensor, eps: float,
                 center: Tensor, memory_budget: int):
        super().__init__()
        self.register_buffer("particles", particles)
        self.register_buffer("data", data)
        n, m = particles.shape[0], data.shape[0]
        # the softmax logits' weights: log(1/N) + f_aa / eps and log(1/M) + g_ab / eps
        self.register_buffer("h_a", f_aa / eps - math.log(n))
        self.register_buffer("h_b", g_ab / eps - math.log(m))
        self.register_buffer("center", center)
        self.eps = eps
        self.memory_budget = memory_budget

    def _rows(self, cols: int) -> int:
        return block_rows(cols, self.data.element_size(), self.memory_budget, 3)

    def forward(self, z: Tensor) -> Tensor:
        zc = z.flatten(1) - self.center
        f_ab = _softmin(zc, self.data, self.h_b, self.eps, self._rows(self.data.shape[0]))
        f_aa = _softmin(zc, self.particles, self.h_a, self.eps,
                        self._rows(self.particles.shape[0]))
        return f_ab - f_aa

    def grad(self, z: Tensor, *, create_graph: bool = False) -> Tensor:
        # soft barycentres are torch ops: differentiable in z whenever z carries a graph
        zc = z.flatten(1) - self.center
        bar_a = _soft_barycenter(zc, self.particles, self.h_a, self.eps,
                                 self._rows(self.particles.shape[0]))
        bar_b = _soft_barycenter(zc, self.data, self.h_b, self.eps,
                                 self._rows(self.data.shape[0]))
        return (bar_a - bar_b).view_as(z)


class SinkhornDivergence(FunctionalObjective):
    r"""Debiased Sinkhorn divergence :math:`S_\varepsilon(\mu, \nu)` to a fixed sample.

    Parameters
    ----------
    data : Tensor
        Target sample ``(M, *event)``.
    blur : float
        :math:`\sqrt\varepsilon`, the length scale below which the divergence blurs detail
        (GeomLoss' ``blur`` for ``p = 2``).
    scaling : float in (0, 1)
        Ratio of the :math:`\varepsilon`-scaling schedule (GeomLoss' ``scaling``).
    max_iter : int
        Iterations at the final :math:`\varepsilon`, at most. At small ``blur`` relative
        to the data's diameter Sinkhorn converges slowly; the default 100 trades accuracy
        of the potentials for speed along a flow (``last_iterations`` tells whether the cap
        was hit). Raise it, with a small ``tol``, for accurate values.
    tol : float
        Stop once the potentials move less than ``tol`` (cost units) in an iteration.
    memory_budget : int
        Bytes of temporaries per block.
    warm_start : bool
        Start each evaluation from the potentials of the previous one (same numbers of
        points) instead of from zero with eps-scaling: along a flow the particles move
        little per step, so a few iterations suffice. The potentials are part of
        :meth:`state_dict`, so a resumed run is unchanged.

    Notes
    -----
    Conventions: cost :math:`\frac12\|x-y\|^2` and :math:`\varepsilon = \mathrm{blur}^2`,
    as GeomLoss' ``SamplesLoss("sinkhorn", p=2, blur=blur)``; POT's ``ot.sinkhorn2(a, b, M,
    reg)`` minimises the same problem with ``M = C`` and ``reg = eps`` but returns the linear
    term :math:`\langle\pi, C\rangle` only (the tests compare the plan cost with it).
    The value is the debiased divergence :math:`S_\varepsilon \ge 0`, zero iff the
    measures coincide (Feydy et al. 2019). The gradient uses the converged
    potentials (envelope theorem), so its accuracy follows ``tol``. No smoothness constant
    is claimed.

    Examples
    --------
    >>> import torch, flowkit as fk
    >>> y = fk.datasets.eight_gaussians(200, seed=0)
    >>> obj = fk.objectives.SinkhornDivergence(y, blur=0.1)
    >>> obj.functional_gradient(torch.zeros(5, 2)).shape
    torch.Size([5, 2])
    """

    minimum = 0.0

    def __init__(self, data: Tensor, blur: float = 0.05, *, scaling: float = 0.5,
                 max_iter: int = 100, tol: float = 1e-5,
                 memory_budget: int = DEFAULT_MEMORY_BUDGET, warm_start: bool = True):
        self.data = check_particles(data, "data")
        self.blur = _check_blur(blur, self.data.dtype)
        self.eps = self.blur**2
        if not isinstance(scaling, (int, float)) or not 0.0 < scaling < 1.0:
            raise ValueError(f"scaling must lie in (0, 1), got {scaling!r}")
        if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
            raise ValueError(f"max_iter must be a positive int, got {max_iter!r}")
        self.scaling = float(scaling)
        self.max_iter = max_iter
        self.tol = check_positive(tol, "tol")
        block_rows(data.shape[0], data.element_size(), memory_budget, 3)  # fail early
        self.memory_budget = memory_budget
        self._g_bb: Tensor | None = None  # the data's self-potential, cached
        self.warm_start = bool(warm_start)
        self._warm: dict[str, Tensor] | None = None
        #: iterations at the final eps in the last evaluation (alpha-beta, alpha-alpha)
        self.last_iterations: tuple[int, int] = (0, 0)

    def validate(self, x: Tensor) -> None:
        check_particles(x, "x")
        check_compatible(x, self.data, "x", "data")

    def _kw(self) -> dict[str, Any]:
        return {"scaling": self.scaling, "max_iter": self.max_iter, "tol": self.tol,
                "memory_budget": self.memory_budget}

    def _solve(self, x: Tensor) -> dict[str, Tensor]:
        x2, y2 = x.detach().flatten(1), self.data.flatten(1)
        # translation invariance: centre on the data so Gram-form distances stay accurate
        center = y2.mean(0, keepdim=True)
        xc, yc = x2 - center, y2 - center
        warm = self._warm if self.warm_start and self._warm is not None \
            and self._warm["f_ab"].shape[0] == xc.shape[0] \
            and self._warm["f_ab"].dtype == xc.dtype else None
        f_ab, g_ab, it_ab = sinkhorn_potentials(
            xc, yc, self.eps, init=None if warm is None else (warm["f_ab"], warm["g_ab"]),
            **self._kw())
        f_aa, _, it_aa = sinkhorn_potentials(
            xc, None, self.eps, init=None if warm is None else (warm["f_aa"], warm["f_aa"]),
            **self._kw())
        self.last_iterations = (it_ab, it_aa)
        if self.warm_start:
            self._warm = {"f_ab": f_ab, "g_ab": g_ab, "f_aa": f_aa}
        return {"xc": xc, "yc": yc, "center": center, "f_ab": f_ab, "g_ab": g_ab,
                "f_aa": f_aa}

    def state_dict(self) -> dict[str, Any]:
        """The warm-start potentials (so a resumed flow continues identically)."""
        return {"warm": self._warm}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "warm" not in state:
            raise ValueError(f"state is missing keys ['warm'], got {sorted(state)}")
        self._warm = state["warm"]

    def _g_bb_cached(self, yc: Tensor) -> Tensor:
        if self._g_bb is None:
            g_bb, _, _ = sinkhorn_potentials(yc, None, self.eps, **self._kw())
            self._g_bb = g_bb
        return self._g_bb

    def first_variation(self, x: Tensor) -> SinkhornPotential:
        s = self._solve(x)
        return SinkhornPotential(s["xc"], s["yc"], s["g_ab"], s["f_aa"], self.eps, s["center"],
                                 self.memory_budget)

    def value(self, x: Tensor) -> Tensor:
        r""":math:`S_\varepsilon = \langle\alpha, f_{ab} - f_{aa}\rangle
        + \langle\beta, g_{ab} - g_{bb}\rangle` (no gradient is recorded through it)."""
        s = self._solve(x)
        return (s["f_ab"] - s["f_aa"]).mean() + (s["g_ab"] - self._g_bb_cached(s["yc"])).mean()

    def ot_eps(self, x: Tensor) -> Tensor:
        r""":math:`\mathrm{OT}_\varepsilon(\alpha, \beta) = \langle\alpha, f\rangle
        + \langle\beta, g\rangle`, the biased entropic cost (for checks)."""
        s = self._solve(x)
        return s["f_ab"].mean() + s["g_ab"].mean()

    def plan_cost(self, x: Tensor) -> Tensor:
        r"""The transport part :math:`\langle\pi, C\rangle` of the entropic plan (POT's
        ``ot.sinkhorn2`` value), computed in row blocks."""
        s = self._solve(x)
        xc, yc, f, g = s["xc"], s["yc"], s["f_ab"], s["g_ab"]
        n, m = xc.shape[0], yc.shape[0]
        rows = block_rows(m, xc.element_size(), self.memory_budget, 3)
        y_sq = yc.pow(2).sum(1)
        total = xc.new_zeros(())
        for sl in _blocks(n, rows):
            c = 0.5 * _sqdist_gram(xc[sl], yc, y_sq)
            log_pi = (f[sl, None] + g[None] - c) / self.eps - math.log(n * m)
            total = total + (log_pi.exp() * c).sum()
        return total
