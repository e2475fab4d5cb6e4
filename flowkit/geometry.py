r"""Two weighted samples and the reductions between them: one compute layer.

A :class:`PointCloud` pairs :math:`\alpha = \sum_i a_i \delta_{x_i}` (``N`` points) and
:math:`\beta = \sum_j b_j \delta_{y_j}` (``M`` points) with a radial kernel (for the kernel
sums and MMD) or the cost :math:`C(x, y) = \frac12\|x - y\|^2` (for Sinkhorn's softmin), a
blocking policy (rows per block, or a memory budget) and a backend. It offers the
reductions every objective needs, never building a matrix larger than one block:

* :meth:`~PointCloud.kernel_sum`: :math:`\sum_j b_j k(x_i, y_j)`;
* :meth:`~PointCloud.kernel_grad_sum`: :math:`\sum_j b_j \nabla_1 k(x_i, y_j)`;
* :meth:`~PointCloud.mmd2`: :math:`\|\sum_i a_i k(x_i,\cdot) - \sum_j b_j k(y_j,\cdot)\|^2`;
* :meth:`~PointCloud.softmin`: :math:`-\varepsilon\log\sum_j e^{h_j - C(x_i, y_j)/\varepsilon}`;
* :meth:`~PointCloud.soft_barycenter`: :math:`\sum_j \mathrm{softmax}_j(h_j - C(x_i, y_j)/
  \varepsilon)\, y_j`, the gradient of the softmin being :math:`x_i` minus it.

Inputs are validated once, at construction (names in the errors are the caller's). The
backend is chosen by :func:`flowkit.backends.route`.

Precision
---------
Distances are computed in the one-product (Gram) form
:math:`|x|^2 + |y|^2 - 2\langle x, y\rangle`, whose absolute rounding error is of order
:math:`u\,(|x|^2 + |y|^2)` (``u`` the unit roundoff), and the kernel gradient in the form
:math:`x_i (Pb)_i - (P(b\odot y))_i`, whose error is of order :math:`u\,|x_i|`. Both are
harmless near the origin. Radial kernels and the cost are translation invariant, so ``y``
is cut into *segments*, contiguous runs without a jump (a step between consecutive points
over 8 times the mean step: where the two halves of a stacked ``[x; target]`` meet), and
each segment is reduced in coordinates centred on its own mean: rows near a segment see
small coordinates, rows far from it see large distances, whose relative error is small.
The centres depend on ``y`` only, so a row's result does not depend on which other rows
are evaluated with it (batched evaluation agrees to the BLAS' own rounding; the fused
native path is bit-identical).

Measured (``benchmarks/precision.py``, table in ``docs/mmd.md``): in float32 the MMD
functional gradient (Gaussian and inverse multiquadric kernels, unit bandwidth) stays
within ``1e-4`` relative of float64 on the same inputs for every shift between the
particles and the target from ``1`` to ``1e4`` bandwidths. The domain where float32 is
accurate to ``1e-4``: each segment of ``y`` has radius ``R`` about its mean with
``u R^2 < 1e-4 h^2`` (``u = 6e-8``: ``R`` below about 40 bandwidths ``h``), and so do the
evaluated points near it; beyond that, use float64.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from flowkit import backends, triton_kernels
from flowkit.backends import DEFAULT_MEMORY_BUDGET, block_rows, check_backend, check_blocking
from flowkit.backends import keops as keops_backend
from flowkit.backends import native as native_backend
from flowkit.backends import torch as torch_backend
from flowkit.kernels import Kernel
from flowkit.validation import (
    check_compatible,
    check_finite,
    check_particles,
    check_positive,
    check_signed_weights,
    check_weights,
)

__all__ = ["PointCloud", "GridClusters", "grid_clusters", "BlockSparsity", "softmin_sparse"]


def _check_all_finite(tensors: list[tuple[str, Tensor | None]]) -> None:
    """:func:`~flowkit.validation.check_finite` on each tensor, behind a cheap screen.

    A sum is finite only if every entry is (NaN and infinities propagate), and a sum costs a
    fraction of ``isfinite(t).all()`` on CPU: the full check (and its message) runs only
    when a sum is not finite, which an overflow of finite entries can also cause.
    """
    for name, t in tensors:
        if t is None or t.device.type == "meta":
            continue
        if not math.isfinite(t.detach().sum().item()):
            check_finite(t, name)


class PointCloud:
    r"""Weighted samples ``x`` (weights ``a``) and ``y`` (weights ``b``), and their reductions.

    Parameters
    ----------
    x, y : Tensor
        Samples ``(N, *event)`` and ``(M, *event)``: same event shape, device and dtype,
        finite (``y=None`` means ``y = x``).
    a, b : Tensor, optional
        Weights ``(N,)`` and ``(M,)`` (signed weights are fine); default uniform.
    kernel : Kernel, optional
        A radial kernel, needed by the kernel reductions.
    block_size : int, optional
        Rows per block; by default what ``memory_budget`` allows.
    memory_budget : int
        Bytes of temporaries per block (default 256 MiB); ``ValueError`` if not even one row
        fits.
    backend : {"auto", "torch", "native", "keops", "triton"}
        See :mod:`flowkit.backends`.
    names : tuple of 4 str
        The caller's names for ``x, y, a, b`` in error messages.

    Examples
    --------
    >>> import torch, flowkit as fk
    >>> x, y = torch.zeros(3, 2), torch.ones(4, 2)
    >>> pc = fk.geometry.PointCloud(x, y, kernel=fk.kernels.Gaussian(1.0))
    >>> round(float(pc.kernel_sum()[0]), 4)
    0.3679
    """

    def __init__(self, x: Tensor, y: Tensor | None = None, *, a: Tensor | None = None,
                 b: Tensor | None = None, kernel: Kernel | None = None,
                 block_size: int | None = None, memory_budget: int = DEFAULT_MEMORY_BUDGET,
                 backend: str = "auto", names: tuple[str, str, str, str] = ("x", "y", "a", "b")):
        nx, ny, na, nb = names
        check_particles(x, nx, finite=False)
        if y is None:
            y, ny = x, nx
        else:
            check_particles(y, ny, finite=False)
            check_compatible(y, x, ny, nx)
        if kernel is not None and not isinstance(kernel, Kernel):
            raise TypeError(f"kernel must be a flowkit.kernels.Kernel, got "
                            f"{type(kernel).__name__}")
        self.check_policy(block_size, memory_budget, backend)
        if a is not None:
            check_signed_weights(a, x.shape[0], na, like=x, finite=False)
        if b is not None:
            check_signed_weights(b, y.shape[0], nb, like=x, finite=False)
        _check_all_finite([(nx, x), (ny, y), (na, a), (nb, b)])
        self._set(x, y, a, b, kernel, block_size, memory_budget, backend)

    def _set(self, x, y, a, b, kernel, block_size, memory_budget, backend) -> None:
        self.x, self.y = x, y
        self._x2, self._y2 = x.flatten(1), y.flatten(1)
        self._a, self._b = a, b
        self._segs: list[tuple[slice, Tensor]] | None = None
        self.kernel = kernel
        self.block_size, self.memory_budget, self.backend = block_size, memory_budget, backend

    @staticmethod
    def check_policy(block_size: int | None, memory_budget: int, backend: str) -> None:
        """The one check of the blocking policy and the backend (errors name the argument).

        Objects that keep the three settings rather than a cloud (potentials saved in a
        run's layers) check them here, once, at construction.
        """
        check_blocking(block_size, memory_budget)
        check_backend(backend)

    @property
    def policy(self) -> dict[str, object]:
        """``block_size``, ``memory_budget`` and ``backend``, as keyword arguments."""
        return {"block_size": self.block_size, "memory_budget": self.memory_budget,
                "backend": self.backend}

    @classmethod
    def checked(cls, x: Tensor, y: Tensor, *, a: Tensor | None = None,
                b: Tensor | None = None, kernel: Kernel | None = None,
                block_size: int | None = None, memory_budget: int = DEFAULT_MEMORY_BUDGET,
                backend: str = "auto") -> PointCloud:
        """A cloud on inputs its caller validated already (no checks, no synchronisation).

        For potentials that hold validated snapshots and are evaluated at every step.
        """
        out = object.__new__(cls)
        out._set(x, y, a, b, kernel, block_size, memory_budget, backend)
        return out

    def particles(self, x: Tensor, *, finite: bool = True, name: str = "x",
                  target: str = "target") -> Tensor:
        """Check particles ``x`` against this cloud's ``y`` (event shape, device, dtype).

        With ``finite=False`` only metadata is checked (no device synchronisation: the
        engine's per-step hook, whose inputs the engine checks after each update).
        """
        check_particles(x, name, finite=finite)
        check_compatible(x, self.y, name, target)
        return x

    @staticmethod
    def particle_weights(weights: Tensor | None, x: Tensor, *, finite: bool = True,
                         name: str = "weights") -> Tensor | None:
        """Check the probability ``weights`` of particles ``x`` (``None``: uniform).

        With ``finite=False`` only metadata (shape, dtype, device) is checked.
        """
        if weights is not None:
            if finite:  # detached: reading a number off a graph would warn
                check_weights(weights.detach(), x.shape[0], name, like=x)
            else:
                check_signed_weights(weights, x.shape[0], name, like=x, finite=False)
        return weights

    @staticmethod
    def signed_stack(x: Tensor, y: Tensor, cx: float, cy: float, a: Tensor | None = None,
                     b: Tensor | None = None) -> tuple[Tensor, Tensor]:
        r"""Points ``[x; y]`` with weights ``[cx a; cy b]`` (``None``: uniform): the witness
        :math:`c_x\sum_i a_i k(\cdot, x_i) + c_y\sum_j b_j k(\cdot, y_j)` as one sum.

        Built per call rather than stored, so objects that keep ``y`` (a shared target)
        never hold a copy of it.
        """
        def scaled(w: Tensor | None, n: int, c: float) -> Tensor:
            return x.new_full((n,), c / n) if w is None else c * w

        return (torch.cat([x, y]),
                torch.cat([scaled(a, x.shape[0], cx), scaled(b, y.shape[0], cy)]))

    def all_reduce(self, t: Tensor, op: str = "sum") -> Tensor:
        """``t`` reduced (``op``: ``"sum"`` or ``"max"``) over every shard of a sharded cloud
        (:class:`flowkit.distributed.RingPointCloud`); on one process ``t`` itself, so a
        solver's scalars (convergence checks, errors) are global either way."""
        return t

    def block_rows(self, n_buffers: int = 3) -> int:
        """Rows per block for ``n_buffers`` buffers of ``M`` columns; ``ValueError`` when
        the memory budget does not fit one row (so a caller can fail early)."""
        return self._rows(n_buffers)

    @property
    def given_b(self) -> Tensor | None:
        """The weights of ``y`` as given (``None``: uniform), e.g. to keep a uniform
        average a mean."""
        return self._b

    @property
    def a(self) -> Tensor:
        """The weights of ``x`` (uniform ``1/N`` unless given)."""
        if self._a is None:
            self._a = self.x.new_full((self.x.shape[0],), 1.0 / self.x.shape[0])
        return self._a

    @property
    def b(self) -> Tensor:
        """The weights of ``y`` (uniform ``1/M`` unless given)."""
        if self._b is None:
            self._b = self.y.new_full((self.y.shape[0],), 1.0 / self.y.shape[0])
        return self._b

    def _derived(self, x: Tensor, y: Tensor, a: Tensor | None, b: Tensor | None
                 ) -> PointCloud:
        """A cloud on already-validated tensors, same kernel and policy (no checks again)."""
        out = object.__new__(PointCloud)
        out._set(x, y, a, b, self.kernel, self.block_size, self.memory_budget, self.backend)
        return out

    def transpose(self) -> PointCloud:
        """The cloud with the roles of ``(x, a)`` and ``(y, b)`` swapped."""
        return self._derived(self.y, self.x, self.b, self.a)

    # ------------------------------------------------------------------ blocks

    def _rows(self, n_buffers: int) -> int:
        """Rows per block: ``block_size`` if given, else the budget's (always checked)."""
        y = self._y2
        rows = block_rows(y.shape[0], y.element_size(), self.memory_budget, n_buffers)
        return rows if self.block_size is None else self.block_size

    def _segments(self) -> list[tuple[slice, Tensor]]:
        """Contiguous runs of ``y`` with no jump between consecutive points, and their means.

        A jump is a step ``|y_{j+1} - y_j|`` over 8 times the mean step: where two stacked
        samples meet (``[x; target]``) or any other far cloud starts. Each run is its own
        centre, so a run far from another never shares its rounding. Depends on ``y`` only,
        so a row's result does not depend on the other rows evaluated with it.
        """
        if self._segs is None:
            y = self._y2.detach()
            m = y.shape[0]
            cuts: list[int] = []
            if m > 2 and y.device.type != "meta":
                steps = (y[1:] - y[:-1]).pow(2).sum(1)
                cuts = (torch.nonzero(steps > 64.0 * steps.sqrt().mean().pow(2)) + 1
                        ).flatten().tolist()
            bounds = [0, *cuts, m]
            self._segs = [(slice(a, b), y[a:b].mean(0, keepdim=True))
                          for a, b in zip(bounds[:-1], bounds[1:])]
        return self._segs

    def _blocks(self, rows: int):
        """Per block of rows, the list of ``(sl, xc, yc, c)`` over the segments of ``y``:
        the block and the segment ``y[sl]`` translated by the segment's mean ``c``
        (detached: the reductions are translation invariant)."""
        x, y = self._x2, self._y2
        shifted = [(sl, y[sl] - c, c) for sl, c in self._segments()]
        for s in range(0, x.shape[0], rows):
            xb = x[s:s + rows]
            yield [(sl, xb - c, yc, c) for sl, yc, c in shifted]

    @staticmethod
    def _cat(blocks: list[Tensor]) -> Tensor:
        return torch.cat(blocks) if len(blocks) > 1 else blocks[0]

    def _kernel(self) -> Kernel:
        if self.kernel is None:
            raise ValueError("this PointCloud has no kernel: pass kernel=... to use the "
                             "kernel reductions")
        return self.kernel

    def _route(self, rate: float | None, *tensors: Tensor, what: str = "",
               kernel: Any = None) -> str:
        return backends.route(self.backend, self._x2, self._y2, *tensors, gaussian_rate=rate,
                              what=what, kernel=kernel)

    # ------------------------------------------------------------------ kernel reductions

    def kernel_sum(self) -> Tensor:
        r""":math:`s_i = \sum_j b_j k(x_i, y_j)`, shape ``(N,)``."""
        k = self._kernel()
        w = self.b
        rows = self._rows(2 + (self._x2.shape[1] if k.singular_at_zero else 0))
        route = self._route(k.gaussian_rate(), w, what=f" (kernel {k!r})", kernel=k)
        if route == "keops":
            return keops_backend.kernel_reduce(self._x2, self._y2, w, k, grad=False)
        if route == "triton":
            return triton_kernels.triton_kernel_sum(self._x2, self._y2, k, w)
        out = []
        with self._caller(route):
            for pieces in self._blocks(rows):
                total = 0.0
                for sl, xc, yc, _ in pieces:
                    if route == "native":
                        part = native_backend.reduce(xc, yc, w[sl, None], k.gaussian_rate(),
                                                     rows)
                    else:
                        part = torch_backend.reduce(xc, yc, w[sl, None], k.profile,
                                                    k.singular_at_zero)
                    total = total + part[:, 0]
                out.append(total)
            return self._cat(out)

    def kernel_grad_sum(self) -> Tensor:
        r""":math:`g_i = \sum_j b_j \nabla_1 k(x_i, y_j)`, the shape of ``x``.

        Smooth kernels use :math:`2[x_i (P b)_i - (P(b \odot Y))_i]`,
        :math:`P_{ij} = \kappa'(\|x_i - y_j\|^2)`, with the two products fused into one,
        ``P [b * Y | b]``; singular ones take explicit differences (subgradient 0 at
        coincident points).
        """
        k = self._kernel()
        w = self.b
        d = self._x2.shape[1]
        rows = self._rows(2 + (d if k.singular_at_zero else 0))
        route = self._route(k.gaussian_rate(), w, what=f" (kernel {k!r})", kernel=k)
        if route == "keops":
            return keops_backend.kernel_reduce(self._x2, self._y2, w, k, grad=True
                                               ).view_as(self.x)
        if route == "triton":
            return triton_kernels.triton_kernel_grad_sum(self._x2, self._y2, k, w
                                                         ).view_as(self.x)
        out = []
        with self._caller(route):
            for pieces in self._blocks(rows):
                total = 0.0
                for sl, xc, yc, _ in pieces:
                    total = total + self._grad_piece(k, route, xc, yc, w[sl], rows)
                out.append(total)
            return self._cat(out).view_as(self.x)

    @staticmethod
    def _caller(route: str):
        """The native route's per-block torch operations on this thread alone
        (:func:`flowkit.backends.native.serial_caller`), any other route's as they are."""
        return native_backend.serial_caller() if route == "native" \
            else contextlib.nullcontext()

    @staticmethod
    def _grad_piece(k: Kernel, route: str, xc: Tensor, yc: Tensor, w: Tensor, rows: int
                    ) -> Tensor:
        if k.singular_at_zero:
            return torch_backend.grad_explicit(xc, yc, w, k.dprofile)
        d = xc.shape[1]
        V = torch.cat([w[:, None] * yc, w[:, None]], 1)
        if route == "native":
            c = k.gaussian_rate()
            pv = native_backend.reduce(xc, yc, V, c, rows)
            scale = -2.0 * c  # kappa' = -c kappa
        else:
            pv = torch_backend.reduce(xc, yc, V, k.dprofile, False)
            scale = 2.0
        return scale * (xc * pv[:, d:] - pv[:, :d])

    def mmd2(self) -> Tensor:
        r""":math:`\sum_{ii'} a_i a_{i'} k(x_i, x_{i'}) - 2\sum_{ij} a_i b_j k(x_i, y_j)
        + \sum_{jj'} b_j b_{j'} k(y_j, y_{j'})`, the squared MMD between the weighted
        measures (the V-statistic for uniform weights; Gretton et al. 2012
        [GrettonEtAl12], eq. (5)).

        The first two terms run as one reduction over ``[x; y]`` with weights
        ``[a, -2 b]``; each row block is centred on its own rows, so the ``x``-``x`` terms
        keep their precision however far ``y`` lies.
        """
        self._kernel()
        cross = self._derived(self._x2, torch.cat([self._x2, self._y2]), None,
                              torch.cat([self.a, -2.0 * self.b]))
        yy = self._derived(self._y2, self._y2, None, self.b)
        return cross.kernel_sum() @ self.a + yy.kernel_sum() @ self.b

    # ------------------------------------------------------------------ Sinkhorn

    def _check_h(self, h: Tensor) -> None:
        m = self._y2.shape[0]
        if not isinstance(h, Tensor) or h.shape != (m,):
            raise ValueError(f"h must be a tensor of shape ({m},), got "
                             f"{getattr(h, 'shape', type(h).__name__)}")

    def softmin(self, h: Tensor, eps: float) -> Tensor:
        r""":math:`-\varepsilon \log \sum_j \exp(h_j - C(x_i, y_j)/\varepsilon)`, shape
        ``(N,)``, cost :math:`C = \frac12\|x-y\|^2` (Sinkhorn's update, log domain, with
        ``h = log b + g / eps``)."""
        self._check_h(h)
        route = self._route(None, h, what=" (Sinkhorn's softmin)", kernel="softmin")
        if route == "keops":
            return keops_backend.softmin(self._x2, self._y2, h, eps)
        if route == "triton":
            return triton_kernels.triton_softmin(self._x2, self._y2, h, eps)
        if route == "native" and self._native_fits():
            return -eps * self._combine_lse([p[0] for p in self._native_parts(h, eps, False)])
        out = []
        for pieces in self._blocks(self._rows(3)):
            out.append(-eps * self._combine_lse(
                [torch_backend.logsumexp(xc, yc, h[sl], eps) for sl, xc, yc, _ in pieces]))
        return self._cat(out)

    def _native_fits(self) -> bool:
        """Whether the fused native softmin takes this event size (else the torch blocks)."""
        return self._x2.shape[1] <= native_backend.library().dmax

    def _native_parts(self, h: Tensor, eps: float, barycenter: bool
                      ) -> list[tuple[Tensor, Tensor | None, Tensor]]:
        """Per segment of ``y``, ``(lse, barycentre or None, centre)`` over all rows at
        once, fused: no block is ever materialised, so no row blocking."""
        return [(*native_backend.softmin(self._x2 - c, self._y2[sl] - c, h[sl], eps,
                                         barycenter), c) for sl, c in self._segments()]

    @staticmethod
    def _combine_lse(lses: list[Tensor]) -> Tensor:
        """The log-normaliser over all of ``y`` from its segments'."""
        return lses[0] if len(lses) == 1 else torch.stack(lses).logsumexp(0)

    @staticmethod
    def _combine_barycenters(parts: list[tuple[Tensor, Tensor, Tensor]]) -> Tensor:
        """One barycentre from the segments' ``(lse, barycentre, centre)``: the segments'
        softmaxes weighted by ``exp(lse_s - lse)``."""
        if len(parts) == 1:
            return parts[0][1] + parts[0][2]
        share = torch.softmax(torch.stack([p[0] for p in parts]), dim=0)
        return sum(share[i, :, None] * (bar + c) for i, (_, bar, c) in enumerate(parts))

    def soft_barycenter(self, h: Tensor, eps: float) -> Tensor:
        r""":math:`\sum_j \mathrm{softmax}_j(h_j - C(x_i, y_j)/\varepsilon)\, y_j`, shape
        ``(N, D)`` (``D`` the flattened event size)."""
        self._check_h(h)
        route = self._route(None, h, what=" (Sinkhorn's soft barycentre)",
                            kernel="soft_barycenter")
        if route == "keops":
            return keops_backend.soft_barycenter(self._x2, self._y2, h, eps)
        if route == "native" and self._native_fits():
            return self._combine_barycenters(self._native_parts(h, eps, True))
        out = []
        for pieces in self._blocks(self._rows(3)):
            out.append(self._combine_barycenters(
                [(*torch_backend.lse_and_barycenter(xc, yc, h[sl], eps), c)
                 for sl, xc, yc, c in pieces]))
        return self._cat(out)

    def plan_cost(self, f: Tensor, g: Tensor, eps: float) -> Tensor:
        r""":math:`\sum_{ij} a_i b_j e^{(f_i + g_j - C_{ij})/\varepsilon} C_{ij}`, the linear
        part of the entropic plan ``(f, g)`` (torch backend, row blocks)."""
        total = self._x2.new_zeros(())
        log_a, log_b = self.a.log(), self.b.log()
        s = 0
        for pieces in self._blocks(self._rows(3)):
            n = pieces[0][1].shape[0]
            for sl, xc, yc, _ in pieces:
                c = 0.5 * torch_backend.sqdist_gram(xc, yc, yc.pow(2).sum(1))
                log_pi = (f[s:s + n, None] + g[None, sl] - c) / eps + log_a[s:s + n, None] \
                    + log_b[None, sl]
                total = total + (log_pi.exp() * c).sum()
            s += n
        return total


# ---------------------------------------------------------------------- multiscale


@dataclass(frozen=True)
class GridClusters:
    r"""Points grouped by the cells of a regular grid, each cluster contiguous.

    The coarse level of the multiscale Sinkhorn (Schmitzer 2019 [Schmitzer19], its
    multi-scale scheme; Feydy 2020 [Feydy20], ch. 3): cluster ``k`` holds the points
    ``perm[ranges[k, 0]:ranges[k, 1]]`` of the original sample, its weight is the sum of
    theirs and its centroid their weighted mean (the plain mean for a cluster of zero
    weight). Clusters are ordered by their cell's index, last coordinate fastest, so cells
    adjacent along that axis are adjacent in the order (kept blocks merge into one range).

    Attributes
    ----------
    perm : Tensor
        ``(N,)`` int64: ``x[perm]`` is the sample in cluster order.
    ranges : Tensor
        ``(K, 2)`` int64 ``[start, end)`` of each cluster in cluster order.
    labels : Tensor
        ``(N,)`` int64: the cluster of each point, in cluster order.
    centroids : Tensor
        ``(K, D)`` weighted means.
    weights : Tensor
        ``(K,)`` summed weights.
    radii : Tensor
        ``(K,)`` the largest distance from a member to its centroid.
    scale : float
        The side of the grid's cells.
    """

    perm: Tensor
    ranges: Tensor
    labels: Tensor
    centroids: Tensor
    weights: Tensor
    radii: Tensor
    scale: float

    def sort(self, t: Tensor) -> Tensor:
        """``t`` (indexed like the original sample) in cluster order."""
        return t[self.perm]

    def unsort(self, t: Tensor) -> Tensor:
        """The inverse of :meth:`sort`: ``t`` in cluster order back in the original one."""
        out = torch.empty_like(t)
        out[self.perm] = t
        return out

    def segment_max(self, t: Tensor) -> Tensor:
        """``(K,)`` the largest entry of ``t`` (in cluster order) in each cluster."""
        k = self.ranges.shape[0]
        return t.new_full((k,), -math.inf).scatter_reduce_(0, self.labels, t, "amax")


def grid_clusters(x: Tensor, weights: Tensor, scale: float) -> GridClusters:
    r"""Cluster the points ``x`` ``(N, D)`` with ``weights`` ``(N,)`` on a grid of cells of
    side ``scale`` (:class:`GridClusters`).

    Examples
    --------
    >>> import torch, flowkit as fk
    >>> x = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.1, 0.1]])
    >>> c = fk.geometry.grid_clusters(x, torch.full((3,), 1 / 3), 0.5)
    >>> c.ranges.tolist(), [round(w, 4) for w in c.weights.tolist()]
    ([[0, 2], [2, 3]], [0.6667, 0.3333])
    """
    scale = check_positive(scale, "scale")
    x2 = x.flatten(1)
    cell = ((x2 - x2.amin(0)) / scale).floor().long()
    dims = (cell.amax(0) + 1).tolist()
    if math.prod(dims) >= 2**62:
        raise ValueError(f"scale={scale:.3g} makes a grid of {math.prod(dims):.3g} cells; "
                         f"choose a larger scale")
    key = cell[:, 0]
    for c, n in zip(cell.unbind(1)[1:], dims[1:]):
        key = key * n + c
    key, perm = torch.sort(key, stable=True)
    _, counts = torch.unique_consecutive(key, return_counts=True)
    ends = counts.cumsum(0)
    k = counts.shape[0]
    labels = torch.repeat_interleave(torch.arange(k, device=x.device), counts)
    xs, w = x2[perm], weights[perm]
    total = w.new_zeros(k).index_add_(0, labels, w)
    mean = x2.new_zeros(k, x2.shape[1]).index_add_(0, labels, xs) / counts[:, None]
    wmean = x2.new_zeros(k, x2.shape[1]).index_add_(0, labels, w[:, None] * xs)
    centroids = torch.where(total[:, None] > 0, wmean / total.clamp_min(
        torch.finfo(w.dtype).tiny)[:, None], mean)
    radii = x2.new_zeros(k).scatter_reduce_(0, labels, (xs - centroids[labels]).norm(dim=1),
                                           "amax")
    return GridClusters(perm=perm, ranges=torch.stack([ends - counts, ends], 1),
                        labels=labels, centroids=centroids, weights=total, radii=radii,
                        scale=scale)


@dataclass(frozen=True)
class BlockSparsity:
    r"""Which blocks of an ``N x M`` interaction a block-sparse reduction visits.

    Row cluster ``I`` (rows ``rows[I, 0]:rows[I, 1]``) reduces over the column ranges
    ``cols[q]``, ``ptr[I] <= q < ptr[I + 1]`` (CSR); :meth:`from_mask` builds it from a
    boolean ``(K_x, K_y)`` mask of kept cluster pairs, merging kept clusters that are
    adjacent in the column order into one range.

    Attributes
    ----------
    rows : Tensor
        ``(K_x, 2)`` int64 row ranges.
    ptr : Tensor
        ``(K_x + 1,)`` int64 offsets into ``cols``.
    cols : Tensor
        ``(R, 2)`` int64 column ranges.
    shape : tuple of int
        ``(N, M)``.
    kept : int
        Pairs ``(i, j)`` visited.
    """

    rows: Tensor
    ptr: Tensor
    cols: Tensor
    shape: tuple[int, int]
    kept: int

    @property
    def kept_fraction(self) -> float:
        """The share of the ``N M`` pairs visited."""
        return self.kept / max(1, self.shape[0] * self.shape[1])

    @classmethod
    def from_mask(cls, keep: Tensor, row_ranges: Tensor, col_ranges: Tensor
                  ) -> BlockSparsity:
        """From ``keep[I, J]`` (cluster ``I`` of the rows meets cluster ``J`` of the
        columns), the clusters' ``[start, end)`` ranges given."""
        left = torch.nn.functional.pad(keep[:, :-1], (1, 0), value=False)
        right = torch.nn.functional.pad(keep[:, 1:], (0, 1), value=False)
        first = torch.nonzero(keep & ~left)  # row-major: runs in order, row by row
        last = torch.nonzero(keep & ~right)
        cols = torch.stack([col_ranges[first[:, 1], 0], col_ranges[last[:, 1], 1]], 1)
        counts = torch.bincount(first[:, 0], minlength=keep.shape[0])
        ptr = torch.nn.functional.pad(counts.cumsum(0), (1, 0))
        row_len = row_ranges[:, 1] - row_ranges[:, 0]
        kept = int((row_len[first[:, 0]] * (cols[:, 1] - cols[:, 0])).sum())
        return cls(rows=row_ranges.contiguous(), ptr=ptr.contiguous(),
                   cols=cols.contiguous(),
                   shape=(int(row_ranges[-1, 1]), int(col_ranges[-1, 1])), kept=kept)

    @classmethod
    def full(cls, n: int, m: int, device: torch.device | str = "cpu", rows: int = 32
             ) -> BlockSparsity:
        """Every pair, the rows in ranges of ``rows`` (units of work for the threads)."""
        starts = torch.arange(0, n, rows, device=device)
        row_ranges = torch.stack([starts, (starts + rows).clamp_max(n)], 1)
        k = row_ranges.shape[0]
        return cls(rows=row_ranges, ptr=torch.arange(k + 1, device=device),
                   cols=torch.tensor([[0, m]], device=device).expand(k, 2).contiguous(),
                   shape=(n, m), kept=n * m)

    @classmethod
    def dense(cls, row_ranges: Tensor, col_ranges: Tensor) -> BlockSparsity:
        """Every pair kept."""
        keep = torch.ones(row_ranges.shape[0], col_ranges.shape[0], dtype=torch.bool,
                          device=row_ranges.device)
        return cls.from_mask(keep, row_ranges, col_ranges)


def _sparse_route(cloud: PointCloud, h: Tensor) -> str:
    """``"native"`` where the fused block-sparse softmin runs, else ``"torch"``."""
    route = cloud._route(None, h, what=" (Sinkhorn's block-sparse softmin)", kernel="softmin")
    return "native" if route == "native" and cloud._native_fits() else "torch"


def softmin_sparse(cloud: PointCloud, h: Tensor, eps: float,
                   sparsity: BlockSparsity | None = None, barycenter: bool = False
                   ) -> tuple[Tensor, Tensor | None]:
    r"""The softmin of :meth:`PointCloud.softmin` over the kept blocks only.

    Returns :math:`-\varepsilon\log\sum_{j\ \mathrm{kept}} e^{h_j - C(x_i, y_j)/
    \varepsilon}` ``(N,)`` and, with ``barycenter``, the soft barycentre over the same
    pairs ``(N, D)``. ``cloud``'s ``x`` and ``y`` are in the cluster order ``sparsity``
    refers to. Native (:c:func:`fk_softmin_ranges`) for float32 on CPU, else torch blocks
    (:func:`flowkit.backends.torch.softmin_ranges`), never an ``N x M`` matrix.
    ``sparsity=None`` keeps every pair: one pass over all of ``y`` (no segments, unlike
    :meth:`PointCloud.softmin`; the native path takes explicit differences, so the
    coordinates' offset does not cost precision).
    """
    cloud._check_h(h)
    native = _sparse_route(cloud, h) == "native"
    if sparsity is None:
        if not native:
            return cloud.softmin(h, eps), (cloud.soft_barycenter(h, eps) if barycenter
                                           else None)
        sparsity = BlockSparsity.full(cloud._x2.shape[0], cloud._y2.shape[0], cloud._x2.device)
    if sparsity.shape != (cloud._x2.shape[0], cloud._y2.shape[0]):
        raise ValueError(f"sparsity is for a {sparsity.shape} interaction, the cloud is "
                         f"{(cloud._x2.shape[0], cloud._y2.shape[0])}")
    if native:
        lse, bar = native_backend.softmin_ranges(cloud._x2, cloud._y2, h, eps, sparsity,
                                                 barycenter)
    else:
        lse, bar = torch_backend.softmin_ranges(cloud._x2, cloud._y2, h, eps, sparsity,
                                                barycenter, cloud.memory_budget)
    return -eps * lse, bar
