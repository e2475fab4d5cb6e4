r"""Flows across processes: sharded particles and ring reductions on ``torch.distributed``.

Each rank of a process group holds a *shard* of the particles (and of the target sample).
A kernel reduction over all points, :math:`s_i = \sum_j w_j k(x_i, y_j)` for the local
rows :math:`x_i`, is split by the owner of :math:`y_j`: the ranks pass their blocks round a
ring (rank ``r`` sends to ``r + 1`` and receives from ``r - 1``), and at each of the ``P``
stages a rank adds the contribution of the block it holds to its local rows while the next
block is already in flight (``isend``/``irecv`` posted before the computation). No rank
ever holds more than its own shard plus one block in flight, and the only numbers that
travel are the blocks themselves: ``(P - 1)`` messages of one block each per reduction.

The local pieces are the public single-process reductions of :mod:`flowkit.kernels`
(``kernel_sum``, ``kernel_grad_sum``), so every backend (torch, native, KeOps, and the
fused Triton path of :mod:`flowkit.triton_kernels` once routed) works unchanged under the
ring; the only difference from one process is the order of the floating-point sums. The
Sinkhorn softmin is a ring pass too (:class:`RingPointCloud`, whose blocks' log-sum-exps
are combined by ``logaddexp``), so :class:`ShardedSinkhornDivergence` runs the one
Sinkhorn loop of :mod:`flowkit.objectives.sinkhorn`.

On top of the ring: :class:`ShardedMMD` and :class:`ShardedEnergyDistance`, objectives
whose first variation's gradient at the local shard equals the rows of the single-process
:class:`flowkit.objectives.MMD` gradient for that shard, so today's
:class:`flowkit.FunctionalGradientDescent` runs unchanged on every rank; helpers to gather
particles and monitor on rank 0 (:func:`gather_particles`, :class:`ShardedWasserstein`),
to show one progress bar (:func:`show_progress`), to name per-rank checkpoints and write
their manifest (:func:`sharded_checkpoint_path`, :func:`write_manifest`,
:func:`read_manifest`), and :func:`launch` to run a function on ``nprocs`` local processes
(tests, notebooks). Scripts launched by ``torchrun`` call :func:`init_from_env` instead.
Algorithm 1's critic trains under ``DistributedDataParallel`` (:class:`DDPCritic`), noise
layers add each rank's rows of the global noise draw (the engine seam), and
:func:`gather_layers` turns a sharded run's layer stack into one that replays it on one
process.

Every collective here must be called by all ranks of the group in the same order (a
potential's ``grad`` and ``forward``, an objective's ``value`` and ``validate``, the
gather helpers); calling one on a single rank waits for the others until the process
group's timeout and then raises :class:`DistributedFlowError`.
"""

from __future__ import annotations

import datetime
import io
import json
import math
import multiprocessing as mp
import os
import queue as queue_mod
import socket
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from flowkit.geometry import PointCloud
from flowkit.kernels import (
    DEFAULT_MEMORY_BUDGET,
    EnergyKernel,
    Gaussian,
    Kernel,
    kernel_grad_sum,
    kernel_sum,
)
from flowkit.objective import FunctionalObjective
from flowkit.objectives.sinkhorn import SinkhornDivergence, SinkhornPotential
from flowkit.potential import Potential
from flowkit.validation import check_compatible, check_finite, check_int, check_particles

__all__ = [
    "DistributedFlowError",
    "DistributedRunError",
    "CommStats",
    "comm_stats",
    "launch",
    "init_from_env",
    "world",
    "shard_bounds",
    "shard",
    "ring_kernel_sum",
    "ring_kernel_grad_sum",
    "ShardedWitness",
    "ShardedMMD",
    "ShardedEnergyDistance",
    "gather_particles",
    "gather_layers",
    "RingPointCloud",
    "ShardedSinkhornPotential",
    "ShardedSinkhornDivergence",
    "DDPCritic",
    "global_mean",
    "ShardedWasserstein",
    "show_progress",
    "sharded_checkpoint_path",
    "write_manifest",
    "read_manifest",
    "check_consistent",
    "engine_seam",
    "DEFAULT_TIMEOUT",
]

#: Seconds a collective may wait for a peer before the job fails (not hangs).
DEFAULT_TIMEOUT = 120.0


class DistributedFlowError(RuntimeError):
    """A collective failed on this rank: a peer died, timed out or disagreed on inputs."""


class DistributedRunError(RuntimeError):
    """Raised by :func:`launch` when a rank failed; ``errors`` maps rank -> its message."""

    def __init__(self, errors: dict[int, str]):
        self.errors = dict(errors)
        lines = [f"{len(errors)} rank(s) of the job failed:"]
        lines += [f"--- rank {r}:\n{msg.rstrip()}" for r, msg in sorted(errors.items())]
        super().__init__("\n".join(lines))


# --------------------------------------------------------------------------- the group


def world(group: Any = None) -> tuple[int, int]:
    """``(rank, world_size)`` in ``group``; ``(0, 1)`` when no process group is initialized.

    So code written for the sharded objectives runs unchanged on one process.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def _comm_device(group: Any, like: Tensor) -> torch.device:
    """Where small metadata tensors live: NCCL moves CUDA tensors only, gloo CPU ones."""
    return like.device if dist.get_backend(group) == "nccl" else torch.device("cpu")


def _check_backend_device(backend: str, device: torch.device, name: str) -> None:
    """The point-to-point transport must carry tensors of ``device``: name the fix if not."""
    if backend == "gloo" and device.type != "cpu":
        raise ValueError(
            f"{name} is on {device} but the process group uses the gloo backend, whose "
            "point-to-point sends carry CPU tensors only: initialize the group with "
            "backend='nccl' (torchrun + dist.init_process_group('nccl')) for CUDA tensors, "
            f"or move {name} to the CPU"
        )
    if backend == "nccl" and device.type != "cuda":
        raise ValueError(
            f"{name} is on {device} but the process group uses the nccl backend, which "
            "carries CUDA tensors only: initialize the group with backend='gloo' for CPU "
            f"tensors, or move {name} to this rank's GPU"
        )


def _global(group: Any, group_rank: int) -> int:
    return group_rank if group is None else dist.get_global_rank(group, group_rank)


def _wrap(err: BaseException, what: str, rank: int) -> DistributedFlowError:
    return DistributedFlowError(
        f"rank {rank}: {what} failed ({type(err).__name__}: {str(err).strip()[:400]}). "
        "A peer rank most likely raised, died or is not calling the same collective; "
        "its own error says why. Every rank must call the sharded objective's methods "
        "together."
    )


# --------------------------------------------------------------------------- sharding


def shard_bounds(n: int, world_size: int, rank: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of rank ``rank`` when ``n`` rows are split over the ranks.

    The first ``n % world_size`` ranks get one row more (``torch.tensor_split``'s rule), so
    shards differ by at most one row and ``n`` need not be divisible by ``world_size``.
    """
    n = check_int(n, "n", minimum=0)
    world_size = check_int(world_size, "world_size")
    rank = check_int(rank, "rank", minimum=0, maximum=world_size - 1)
    q, r = divmod(n, world_size)
    start = rank * q + min(rank, r)
    return start, start + q + (1 if rank < r else 0)


def shard(x: Tensor, group: Any = None) -> Tensor:
    """This rank's rows of ``x`` (a view): :func:`shard_bounds` in the current group."""
    rank, size = world(group)
    a, b = shard_bounds(x.shape[0], size, rank)
    return x[a:b]


@dataclass
class CommStats:
    """Bytes and messages this process sent through the ring since the last reset."""

    bytes_sent: int = 0
    messages: int = 0

    def reset(self) -> None:
        self.bytes_sent = 0
        self.messages = 0


_STATS = CommStats()


def comm_stats() -> CommStats:
    """The process-wide :class:`CommStats` counter (reset it before measuring)."""
    return _STATS


def _all_gather_ints(values: Sequence[int], group: Any, like: Tensor) -> list[list[int]]:
    """Every rank's list of ints (same length on all ranks)."""
    device = _comm_device(group, like)
    mine = torch.tensor(list(values), dtype=torch.int64, device=device)
    _, size = world(group)
    out = [torch.empty_like(mine) for _ in range(size)]
    dist.all_gather(out, mine, group=group)
    return [t.tolist() for t in out]


def _all_reduce_sum(t: Tensor, group: Any, what: str) -> Tensor:
    """A sum over the ranks of a small tensor, returned on ``t``'s device."""
    if world(group)[1] == 1:
        return t
    device = _comm_device(group, t)
    buf = t.detach().to(device).clone()
    try:
        dist.all_reduce(buf, group=group)
    except RuntimeError as err:
        raise _wrap(err, what, world(group)[0]) from err
    return buf.to(t.device)


def _all_reduce_max(values: Tensor, group: Any, what: str) -> Tensor:
    """The elementwise maximum over the ranks, on ``values``' device; NaN counts as inf."""
    if world(group)[1] == 1:
        return values
    # NaN does not survive a MAX reduction reliably: carry it as inf (still non-finite),
    # so every rank takes the same branch on the result
    buf = torch.where(torch.isnan(values), torch.full_like(values, math.inf), values)
    # NCCL reduces CUDA tensors only: CPU scalars go to this rank's GPU
    device = (torch.device("cuda", torch.cuda.current_device())
              if dist.get_backend(group) == "nccl" else torch.device("cpu"))
    buf = buf.detach().to(device).clone()
    try:
        dist.all_reduce(buf, op=dist.ReduceOp.MAX, group=group)
    except RuntimeError as err:
        raise _wrap(err, what, world(group)[0]) from err
    return buf.to(values.device)


_DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


def check_consistent(x: Tensor, name: str = "x", group: Any = None) -> list[int]:
    """Check that every rank's ``x`` has one event shape, dtype and device type.

    A collective. Returns every rank's number of rows. Raises ``ValueError`` on *every*
    rank (naming ``name`` and the ranks that disagree) rather than letting a ring pass
    fail later with a shape error on some ranks and a hang on others.
    """
    rank, size = world(group)
    if size == 1:
        return [x.shape[0]]
    _check_backend_device(dist.get_backend(group), x.device, name)
    event = list(x.shape[1:])
    code = _DTYPES.index(x.dtype) if x.dtype in _DTYPES else -1
    # a fixed-length record: rows, dtype, device kind, event rank, numel and 4 dims
    rec = [x.shape[0], code, int(x.device.type == "cuda"), len(event), math.prod(event)]
    rec += (event + [0] * 4)[:4]
    try:
        recs = _all_gather_ints(rec, group, x)
    except RuntimeError as err:
        raise _wrap(err, f"checking {name} across ranks", rank) from err

    def describe(r: list[int]) -> str:
        dt = _DTYPES[r[1]] if r[1] >= 0 else "non-float"
        return (f"event shape {tuple(r[5:5 + min(r[3], 4)])}{'...' if r[3] > 4 else ''}, "
                f"dtype {dt}, {'cuda' if r[2] else 'cpu'}")

    ref = recs[0][1:]
    bad = [r for r, rr in enumerate(recs) if rr[1:] != ref]
    if bad:
        raise ValueError(
            f"{name} differs across ranks: rank 0 has {describe(recs[0])} but rank "
            f"{bad[0]} has {describe(recs[bad[0]])}; every rank must hold a shard of the "
            "same event shape and dtype, on the same kind of device (use shard(x) on one "
            "tensor, or .to(dtype) before running)"
        )
    return [r[0] for r in recs]


# --------------------------------------------------------------------------- the ring


def _ring(local: Tensor, sizes: Sequence[int], group: Any,
          fn: Callable[[Tensor], Tensor], what: str,
          combine: Callable[[Tensor, Tensor], Tensor] = torch.add) -> Tensor:
    r"""``sum over ranks q of fn(block_q)``, the blocks travelling round the ring.

    ``local`` is this rank's block (rows of points, any trailing shape); ``sizes[q]`` the
    row count of rank ``q``'s block. Stage ``s`` computes on the block of rank
    ``r - s`` while the block of rank ``r - s - 1`` is received from ``r - 1`` and the
    current one is forwarded to ``r + 1``: the communication runs under the computation.
    ``combine`` is the associative "sum" of two partial results (``torch.logaddexp`` for
    a log-sum-exp accumulated block by block).
    """
    rank, size = world(group)
    if size == 1:
        return fn(local)
    _check_backend_device(dist.get_backend(group), local.device, "points")
    nxt, prv = _global(group, (rank + 1) % size), _global(group, (rank - 1) % size)
    current = local.contiguous()
    acc: Tensor | None = None
    for s in range(size - 1):
        where = f"{what}: ring stage {s + 1}/{size - 1}"
        incoming = current.new_empty((sizes[(rank - s - 1) % size], *current.shape[1:]))
        try:
            # batched: NCCL must see the send and the receive in one group call, or every
            # rank blocks in its send waiting for a receive that is never posted
            reqs = dist.batch_isend_irecv([dist.P2POp(dist.isend, current, nxt, group),
                                           dist.P2POp(dist.irecv, incoming, prv, group)])
        except RuntimeError as err:
            raise _wrap(err, where, rank) from err
        _STATS.bytes_sent += current.numel() * current.element_size()
        _STATS.messages += 1
        part = fn(current)  # ``current`` is only read while it is being sent
        acc = part if acc is None else combine(acc, part)
        try:
            for req in reqs:
                req.wait()
        except RuntimeError as err:
            raise _wrap(err, where, rank) from err
        current = incoming
    return combine(acc, fn(current))


def _pack(points: Tensor, weights: Tensor) -> Tensor:
    """Points and weights travel as one message ``[points | weights]`` of shape (n, d+1)."""
    return torch.cat([points.flatten(1), weights[:, None].to(points.dtype)], 1)


def _ring_reduce(z: Tensor, points: Tensor, weights: Tensor, kernel: Kernel, grad: bool,
                 group: Any, sizes: Sequence[int] | None, kw: dict[str, Any]) -> Tensor:
    if sizes is None:
        sizes = _all_gather_rows(points, group)
    local = _pack(points, weights)
    reduce = kernel_grad_sum if grad else kernel_sum
    event = points.shape[1:]

    def fn(block: Tensor) -> Tensor:
        return reduce(z, block[:, :-1].reshape(-1, *event), kernel, block[:, -1], **kw)

    return _ring(local, sizes, group, fn, "kernel_grad_sum" if grad else "kernel_sum")


def _all_gather_rows(points: Tensor, group: Any) -> list[int]:
    if world(group)[1] == 1:
        return [points.shape[0]]
    try:
        return [r[0] for r in _all_gather_ints([points.shape[0]], group, points)]
    except RuntimeError as err:
        raise _wrap(err, "exchanging shard sizes", world(group)[0]) from err


def ring_kernel_sum(z: Tensor, points: Tensor, kernel: Kernel, weights: Tensor, *,
                    group: Any = None, block_size: int | None = None,
                    memory_budget: int = DEFAULT_MEMORY_BUDGET,
                    backend: str = "auto") -> Tensor:
    r"""``s_i = sum over all ranks' points y_j of w_j k(z_i, y_j)`` for this rank's ``z``.

    A collective: every rank passes its own ``z`` (any number of rows) and its shard of
    ``points`` with their ``weights`` (not normalized: pass ``1/M_total`` for a mean).
    Block arguments as in :func:`flowkit.kernels.kernel_sum`, applied to each block.
    """
    return _ring_reduce(z, points, weights, kernel, False, group, None,
                        {"block_size": block_size, "memory_budget": memory_budget,
                         "backend": backend})


def ring_kernel_grad_sum(z: Tensor, points: Tensor, kernel: Kernel, weights: Tensor, *,
                         group: Any = None, block_size: int | None = None,
                         memory_budget: int = DEFAULT_MEMORY_BUDGET,
                         backend: str = "auto") -> Tensor:
    r"""``g_i = sum over all ranks' points y_j of w_j grad_1 k(z_i, y_j)``; see
    :func:`ring_kernel_sum`."""
    return _ring_reduce(z, points, weights, kernel, True, group, None,
                        {"block_size": block_size, "memory_budget": memory_budget,
                         "backend": backend})


# --------------------------------------------------------------------------- objectives


def _check_world(potential: Any, world_size: int, group: Any) -> None:
    """Refuse to evaluate one rank's shard of a potential outside its group (a replay on
    one process would silently use that shard only)."""
    size = world(group)[1]
    if size != world_size:
        raise RuntimeError(
            f"this {type(potential).__name__} holds one rank's shard of a run over "
            f"{world_size} ranks but is evaluated in a group of {size}: replay a sharded "
            "stack on one process from gather_layers(result.layers) (run on every rank, "
            "the full stack on rank 0), not from one rank's layers")



class ShardedWitness(Potential):
    r"""The witness :math:`\frac{c_x}N\sum_j k(z, x_j) + \frac{c_y}M\sum_m k(z, y_m)`, sharded.

    With ``cx = 2, cy = -2`` it is the MMD first variation. Holds only this rank's
    particles and target shard; :meth:`forward` and :meth:`grad` are collectives over the
    group (one ring pass of the stacked block ``[x; y]`` with weights ``cx/N``, ``cy/M``,
    ``N`` and ``M`` the global counts).
    """

    def __init__(self, particles: Tensor, target: Tensor, kernel: Kernel, cx: float, cy: float,
                 n_total: int, m_total: int, group: Any, kw: dict[str, Any]):
        super().__init__()
        x = particles.detach()
        w = torch.cat([x.new_full((x.shape[0],), cx / n_total),
                       target.new_full((target.shape[0],), cy / m_total)])
        self.register_buffer("points", torch.cat([x, target]))
        self.register_buffer("weights", w)
        self.kernel = kernel
        self.group = group
        self._kw = kw
        self._sizes: list[int] | None = None
        self.lipschitz_grad = (abs(cx) + abs(cy)) * kernel.hessian_bound()
        self.n_particles = x.shape[0]
        self.world_size = world(group)[1]

    def _block_sizes(self) -> list[int]:
        if self._sizes is None:
            self._sizes = _all_gather_rows(self.points, self.group)
        return self._sizes

    def forward(self, z: Tensor) -> Tensor:
        _check_world(self, self.world_size, self.group)
        return _ring_reduce(z, self.points, self.weights, self.kernel, False, self.group,
                            self._block_sizes(), self._kw)

    def grad(self, z: Tensor, *, create_graph: bool = False) -> Tensor:
        _check_world(self, self.world_size, self.group)
        # torch ops throughout on the local rows: differentiable in z when z carries a graph
        return _ring_reduce(z, self.points, self.weights, self.kernel, True, self.group,
                            self._block_sizes(), self._kw)

    def gathered(self, dst: int = 0) -> Potential | None:
        """The same witness on one process, every rank's points in it, on rank ``dst``
        (a :class:`flowkit.objectives.KernelWitness`); ``None`` elsewhere. A collective."""
        from flowkit.objectives.mmd import KernelWitness

        n = self.n_particles
        x, y, wx, wy = (gather_particles(t, dst, self.group) for t in
                        (self.points[:n], self.points[n:], self.weights[:n, None],
                         self.weights[n:, None]))
        if x is None:
            return None
        # scale 1: the signed weights carry c_x / N and c_y / M themselves
        return KernelWitness(x, y, self.kernel, 1.0, **self._kw, weights=wx[:, 0],
                             target_weights=-wy[:, 0])


class ShardedMMD(FunctionalObjective):
    r"""Squared MMD to a target sample, with particles and target sharded over the ranks.

    The objective and its first variation are those of :class:`flowkit.objectives.MMD`
    (Arbel et al. 2019 [ArbelKorbaSalimGretton19], sec. 2; the witness function) for the
    *union* of the shards; each rank runs :class:`flowkit.FunctionalGradientDescent` on its
    own shard and the reductions communicate.

    Parameters
    ----------
    target : Tensor
        This rank's shard of the target sample ``(M_r, *event)`` (see :func:`shard`).
    kernel : Kernel, default ``Gaussian(1.0)``
        Any radial kernel of :mod:`flowkit.kernels`.
    group : ProcessGroup, optional
        The group the particles are sharded over (default: the world).
    block_size, memory_budget, backend
        As in :class:`flowkit.objectives.MMD`, for each block of the ring.

    Notes
    -----
    Every method is a collective. ``validate`` (called by the engine at the start of a run)
    checks across ranks that particles and target agree in event shape, dtype and device
    kind, and records the global counts ``N`` and ``M``.
    """

    minimum = 0.0

    def __init__(self, target: Tensor, kernel: Kernel | None = None, *, group: Any = None,
                 block_size: int | None = None, memory_budget: int = DEFAULT_MEMORY_BUDGET,
                 backend: str = "auto"):
        from flowkit.geometry import PointCloud  # the one check of the three settings

        self.target = check_particles(target, "target")
        self.kernel = Gaussian(1.0) if kernel is None else kernel
        if not isinstance(self.kernel, Kernel):
            raise TypeError(f"kernel must be a flowkit.kernels.Kernel, got {type(kernel).__name__}")
        PointCloud.check_policy(block_size, memory_budget, backend)
        self._kw = {"block_size": block_size, "memory_budget": memory_budget,
                    "backend": backend}
        self.group = group
        self.smoothness = 6.0 * self.kernel.hessian_bound()
        self._m_rows: list[int] | None = None  # every rank's target rows
        self._n_rows: dict[int, list[int]] = {}  # local rows -> every rank's rows
        self._kyy: Tensor | None = None

    def _witness(self, x: Tensor, cx: float, cy: float) -> ShardedWitness:
        """The witness at ``x``; every rank's row counts are exchanged once per shape."""
        if self._m_rows is None:
            self._m_rows = check_consistent(self.target, "target", self.group)
        if x.shape[0] not in self._n_rows:
            self._n_rows[x.shape[0]] = _all_gather_rows(x, self.group)
        n_rows = self._n_rows[x.shape[0]]
        psi = ShardedWitness(x, self.target, self.kernel, cx, cy, sum(n_rows),
                             sum(self._m_rows), self.group, self._kw)
        psi._sizes = [a + b for a, b in zip(n_rows, self._m_rows)]  # [x; y] block rows
        return psi

    def validate(self, x: Tensor) -> None:
        check_particles(x, "x", finite=False)
        check_compatible(x, self.target, "x", "target")
        check_finite(x, "x")
        self._n_rows[x.shape[0]] = check_consistent(x, "x", self.group)
        if self._m_rows is None:
            self._m_rows = check_consistent(self.target, "target", self.group)

    def first_variation(self, x: Tensor) -> ShardedWitness:
        return self._witness(x, 2.0, -2.0)

    def value(self, x: Tensor) -> Tensor:
        r""":math:`\mathrm{MMD}^2` of the union of the shards, the same on every rank.

        :math:`\frac1N\sum_i[\frac1N\sum_j k(x_i,x_j) - \frac2M\sum_m k(x_i,y_m)]` is one
        ring pass (a witness with weights ``1/N`` and ``-2/M``) and a sum over the ranks.
        """
        witness = self._witness(x, 1.0, -2.0)
        local = witness(x).sum() / sum(self._n_rows[x.shape[0]])
        return (_all_reduce_sum(local, self.group, "ShardedMMD.value")
                + self._target_term(sum(self._m_rows)))

    def _target_term(self, m: int) -> Tensor:
        # mean k(y, y') is constant along the flow: one ring pass, once
        if self._kyy is None:
            w = self.target.new_full((self.target.shape[0],), 1.0 / m)
            s = _ring_reduce(self.target, self.target, w, self.kernel, False, self.group,
                             self._m_rows, self._kw).sum()
            self._kyy = _all_reduce_sum(s, self.group, "ShardedMMD.value") / m
        return self._kyy


class ShardedEnergyDistance(ShardedMMD):
    r"""The energy distance (Székely & Rizzo 2013 [SzekelyRizzo13]) as a sharded MMD with
    :class:`flowkit.kernels.EnergyKernel`; see :class:`flowkit.objectives.EnergyDistance`.
    """

    def __init__(self, data: Tensor, *, group: Any = None, block_size: int | None = None,
                 memory_budget: int = DEFAULT_MEMORY_BUDGET, backend: str = "auto"):
        super().__init__(data, EnergyKernel(), group=group, block_size=block_size,
                         memory_budget=memory_budget, backend=backend)
        self.smoothness = None  # the distance kernel's gradient jumps at 0


# --------------------------------------------------------------------------- Sinkhorn


class RingPointCloud(PointCloud):
    r"""A :class:`flowkit.geometry.PointCloud` whose columns ``y`` are sharded over the ranks.

    ``x`` (weights ``a``) are this rank's rows; ``y`` (weights ``b``) this rank's shard of
    the columns, the other shards held by the other ranks. :meth:`softmin` and
    :meth:`soft_barycenter` reduce over every rank's columns: the shards ``[y | h]`` travel
    round the ring (:func:`ring_kernel_sum`'s schedule) and each stage's block result, the
    local cloud's own reduction (every backend), is merged stably: the log-sum-exp of
    the blocks' log-sum-exps (``logaddexp``, no overflow however far apart they are), and
    the barycentres weighted by the blocks' shares :math:`e^{\mathrm{lse}_q - \mathrm{lse}}`.
    :meth:`all_reduce` is over the group, so :func:`flowkit.objectives.sinkhorn.sinkhorn`
    runs unchanged on a ring cloud and every rank takes the same iterations. Weights are
    the global measure's (they sum to 1 over every rank, not per shard). Built by
    :class:`ShardedSinkhornDivergence` on validated inputs; a collective, as the ring is.
    """

    #: the process group, and every rank's row counts of ``x`` and ``y`` (set by :meth:`ring`)
    group: Any = None
    x_sizes: list[int] = []
    y_sizes: list[int] = []

    @classmethod
    def ring(cls, x: Tensor, y: Tensor, a: Tensor, b: Tensor, x_sizes: list[int],
             y_sizes: list[int], group: Any, policy: dict[str, Any]) -> RingPointCloud:
        """A ring cloud on validated shards (``*_sizes``: every rank's row counts)."""
        out = cls.checked(x, y, a=a, b=b, **policy)
        out.group, out.x_sizes, out.y_sizes = group, list(x_sizes), list(y_sizes)
        return out

    def transpose(self) -> RingPointCloud:
        return RingPointCloud.ring(self.y, self.x, self.b, self.a, self.y_sizes,
                                   self.x_sizes, self.group, self.policy)

    def all_reduce(self, t: Tensor, op: str = "sum") -> Tensor:
        if op == "max":
            return _all_reduce_max(t, self.group, "RingPointCloud.all_reduce")
        return _all_reduce_sum(t, self.group, "RingPointCloud.all_reduce")

    def _local(self, block: Tensor) -> tuple[PointCloud, Tensor]:
        """The cloud of the local rows against one travelling block ``[y | h]``."""
        y = block[:, :-1]
        return PointCloud.checked(self._x2, y, **self.policy), block[:, -1].contiguous()

    def _lse(self, cloud: PointCloud, h: Tensor, eps: float) -> Tensor:
        # the block's log-sum-exp from its softmin (-eps lse), the one routed reduction
        return cloud.softmin(h, eps) / -eps

    def softmin(self, h: Tensor, eps: float) -> Tensor:
        self._check_h(h)

        def fn(block: Tensor) -> Tensor:
            return self._lse(*self._local(block), eps)

        packed = torch.cat([self._y2, h[:, None]], 1)
        return -eps * _ring(packed, self.y_sizes, self.group, fn, "softmin",
                            combine=torch.logaddexp)

    def soft_barycenter(self, h: Tensor, eps: float) -> Tensor:
        self._check_h(h)

        def fn(block: Tensor) -> Tensor:
            cloud, hb = self._local(block)
            return torch.cat([self._lse(cloud, hb, eps)[:, None],
                              cloud.soft_barycenter(hb, eps)], 1)

        def merge(p: Tensor, q: Tensor) -> Tensor:
            lse = torch.logaddexp(p[:, :1], q[:, :1])
            return torch.cat([lse, (p[:, :1] - lse).exp() * p[:, 1:]
                              + (q[:, :1] - lse).exp() * q[:, 1:]], 1)

        packed = torch.cat([self._y2, h[:, None]], 1)
        return _ring(packed, self.y_sizes, self.group, fn, "soft_barycenter",
                     combine=merge)[:, 1:]

    def plan_cost(self, f: Tensor, g: Tensor, eps: float) -> Tensor:
        raise NotImplementedError("plan_cost is not sharded: gather the particles "
                                  "(gather_particles) and use SinkhornDivergence on rank 0")


class ShardedSinkhornPotential(SinkhornPotential):
    r"""The Sinkhorn first variation :math:`f_{\alpha\beta} - f_{\alpha\alpha}` of a sharded run.

    Holds this rank's particles and data shards with their logits (global weights); its
    softmins and soft barycentres are ring reductions (:class:`RingPointCloud`), so
    ``forward`` and ``grad`` are collectives. :meth:`gathered` is the single-process
    :class:`flowkit.objectives.sinkhorn.SinkhornPotential` holding every rank's state.
    """

    def __init__(self, particles: Tensor, data: Tensor, h_a: Tensor, h_b: Tensor,
                 eps: float, center: Tensor, memory_budget: int, backend: str,
                 sizes: tuple[list[int], list[int]], group: Any):
        Potential.__init__(self)
        for name, t in [("particles", particles), ("data", data), ("h_a", h_a),
                        ("h_b", h_b), ("center", center)]:
            self.register_buffer(name, t)
        self.eps, self.memory_budget, self.backend = eps, memory_budget, backend
        self.sizes, self.group = sizes, group
        self.world_size = world(group)[1]

    def _clouds(self, z: Tensor) -> tuple[PointCloud, PointCloud]:
        _check_world(self, self.world_size, self.group)
        zc = z.flatten(1) - self.center
        policy = {"block_size": None, "memory_budget": self.memory_budget,
                  "backend": self.backend}
        z_sizes = _all_gather_rows(zc, self.group)
        # weights of the evaluated rows: never read by a softmin
        ones = zc.new_ones(zc.shape[0])
        return (RingPointCloud.ring(zc, self.data, ones, self.h_b, z_sizes, self.sizes[1],
                                    self.group, policy),
                RingPointCloud.ring(zc, self.particles, ones, self.h_a, z_sizes,
                                    self.sizes[0], self.group, policy))

    def gathered(self, dst: int = 0) -> SinkhornPotential | None:
        """Every rank's particles, data and logits in one potential on rank ``dst``."""
        parts = [gather_particles(t, dst, self.group) for t in
                 (self.particles, self.h_a[:, None], self.data, self.h_b[:, None])]
        if parts[0] is None:
            return None
        x, h_a, y, h_b = parts
        out = SinkhornPotential.__new__(SinkhornPotential)
        Potential.__init__(out)
        for name, t in [("particles", x), ("data", y), ("h_a", h_a[:, 0]),
                        ("h_b", h_b[:, 0]), ("center", self.center)]:
            out.register_buffer(name, t.clone())
        out.eps, out.memory_budget, out.backend = self.eps, self.memory_budget, self.backend
        return out


class ShardedSinkhornDivergence(SinkhornDivergence):
    r"""The debiased Sinkhorn divergence to a target, particles and target sharded.

    The objective of :class:`flowkit.objectives.SinkhornDivergence` (Feydy et al. 2019
    [FeydyEtAl19]; log-domain Sinkhorn, Peyré & Cuturi 2019, ch. 4) for
    the *union* of the shards, solved by the same loop
    (:func:`flowkit.objectives.sinkhorn.sinkhorn`) on :class:`RingPointCloud` s: each
    softmin is a ring pass over the other ranks' shards, the convergence test and the
    error estimates are maxima and sums over the ranks, the frame is the mean of every
    rank's data. Uniform weights over all ``N`` particles and ``M`` target points.

    Parameters
    ----------
    target : Tensor
        This rank's shard of the target sample (:func:`shard`).
    blur, scaling, max_iter, tol, memory_budget, policy, backend, warm_start
        As in :class:`flowkit.objectives.SinkhornDivergence`.
    group : ProcessGroup, optional
        The group the particles are sharded over (default: the world).

    Notes
    -----
    Construction and every method are collectives (construction exchanges the target's
    row counts and mean). Particle weights are not supported (``weights`` must be
    ``None``); ``value`` is the number only (no autograd graph); ``plan_cost`` is not
    sharded.
    """

    def __init__(self, target: Tensor, blur: float = 0.05, *, group: Any = None,
                 scaling: float = 0.5, max_iter: int = 1000, tol: float = 1e-6,
                 memory_budget: int = DEFAULT_MEMORY_BUDGET, warm_start: bool = True,
                 policy: str = "converge", backend: str = "auto"):
        check_particles(target, "target")
        self.group = group
        m_rows = check_consistent(target, "target", group)
        self._m_rows = m_rows
        b = target.new_full((target.shape[0],), 1.0 / sum(m_rows))
        super().__init__(target, blur, scaling=scaling, max_iter=max_iter, tol=tol,
                         memory_budget=memory_budget, warm_start=warm_start, policy=policy,
                         backend=backend)
        # the target's weights as a measure over every rank (the local cloud's default,
        # 1/M_r, is the shard's own)
        self._geometry = PointCloud.checked(target, target, b=b, **self._geometry.policy)
        total = _all_reduce_sum(target.detach().flatten(1).sum(0, keepdim=True), group,
                                "ShardedSinkhornDivergence")
        self._frame = total / sum(m_rows)

    def validate(self, x: Tensor) -> None:
        super().validate(x)
        check_consistent(x, "x", self.group)

    def _center(self, y2: Tensor) -> Tensor:
        return self._frame

    def _check(self, x: Tensor, weights: Tensor | None) -> Tensor:
        if weights is not None:
            raise ValueError("weights must be None for ShardedSinkhornDivergence (uniform "
                             "particles over every rank); weighted particles are not sharded")
        self.validate(x)
        return x.new_full((x.shape[0],), 1.0 / sum(_all_gather_rows(x, self.group)))

    def _cloud(self, x: Tensor, y: Tensor, a: Tensor | None = None,
               b: Tensor | None = None) -> PointCloud:
        sizes = [_all_gather_rows(x, self.group), _all_gather_rows(y, self.group)]
        a = x.new_full((x.shape[0],), 1.0 / sum(sizes[0])) if a is None else a
        b = y.new_full((y.shape[0],), 1.0 / sum(sizes[1])) if b is None else b
        return RingPointCloud.ring(x, y, a, b, *sizes, self.group, self._geometry.policy)

    def _potential(self, s: dict[str, Any]) -> ShardedSinkhornPotential:
        eps = self.eps
        sizes = ([int(n) for n in _all_gather_rows(s["xc"], self.group)], self._m_rows)
        return ShardedSinkhornPotential(
            s["xc"], s["yc"], s["f_aa"] / eps + s["a"].log(), s["g_ab"] / eps + s["b"].log(),
            eps, s["center"], self.memory_budget, self.backend, sizes, self.group)

    def value(self, x: Tensor, weights: Tensor | None = None) -> Tensor:
        r""":math:`S_\varepsilon` of the union of the shards, the same on every rank."""
        s = self._solve(x, self._check(x, weights))
        g = s["g_ab"] - self._g_bb_cached(s["yc"])
        local = (s["f_ab"] - s["f_aa"]) @ s["a"] + g @ s["b"]
        return _all_reduce_sum(local, self.group, "ShardedSinkhornDivergence.value")

    def ot_eps(self, x: Tensor, weights: Tensor | None = None) -> Tensor:
        s = self._solve(x, self._check(x, weights))
        local = s["f_ab"] @ s["a"] + s["g_ab"] @ s["b"]
        return _all_reduce_sum(local, self.group, "ShardedSinkhornDivergence.ot_eps")

    def plan_cost(self, x: Tensor, weights: Tensor | None = None) -> Tensor:
        raise NotImplementedError("plan_cost is not sharded: gather the particles "
                                  "(gather_particles) and use SinkhornDivergence on rank 0")


# --------------------------------------------------------------------------- Algorithm 1


class DDPCritic:
    r"""A WGAN-GP critic trained with ``DistributedDataParallel`` on sharded particles.

    Algorithm 1 of Nitanda & Suzuki 2018 [NS18] (the critic's inner loop) with the
    particles sharded over the ranks and the data replicated:
    ``AdversarialObjective(DDPCritic(critic), data)`` on every rank, each rank running
    the engine on its shard (``mode="pool"``). The run equals the single-process run with
    the same global minibatch:

    * **randomness**: every rank holds the critic with the same seed and draws, from the
      same stream in the same order, the *global* minibatch's randomness: the data indices,
      the particle indices over all ``N`` particles, the penalty's interpolation weights
      (or DRAGAN's noise), exactly the numbers one process draws;
    * **the generated batch**: the particle rows a rank owns are written into a zero
      ``(b, D)`` buffer and one all-reduce (sum) of ``b D`` numbers per critic step
      assembles the batch on every rank (adding zeros is exact);
    * **the loss**: rank ``r`` evaluates the network on its rows ``shard_bounds(b, P, r)``
      of the batch only (the cost of a step: the forward and double-backward passes)
      through the DDP-wrapped network, its loss scaled by ``P b_r / b``, so DDP's
      gradient average is the gradient of the global batch mean; Adam then takes the same
      step on every rank.

    The snapshot (the layer's potential) is the plain network, the same on every rank,
    so a layer stack replays on one process as it is. Only :class:`flowkit.critics.WGANGPCritic`
    is supported (its network must not read batch statistics, as there). ``batch_size``
    must be at least the world size.

    Parameters
    ----------
    critic : WGANGPCritic
        Built with the same arguments (seed included) on every rank; trained in place.
    group : ProcessGroup, optional
        The group the particles are sharded over (default: the world).
    """

    def __init__(self, critic: Any, group: Any = None):
        from flowkit.critics import WGANGPCritic

        if not isinstance(critic, WGANGPCritic):
            raise TypeError(f"critic must be a flowkit.critics.WGANGPCritic, got "
                            f"{type(critic).__name__}")
        rank, size = world(group)
        if critic.batch_size < size:
            raise ValueError(f"critic.batch_size={critic.batch_size} is smaller than the "
                             f"world size {size}: every rank needs a row of each minibatch")
        self.critic, self.group = critic, group
        self.batch_size, self.steps = critic.batch_size, critic.steps
        self._ddp: Any = None

    def _wrap(self, data: Tensor) -> None:
        """Wrap the network once it has the data's dtype (DDP fixes its buckets then)."""
        critic = self.critic
        critic._ready(data)
        if self._ddp is None and world(self.group)[1] > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            kw = {"process_group": self.group, "gradient_as_bucket_view": True}
            self._ddp = DDP(critic._trained(), **kw)
        rank, size = world(self.group)
        a, b = shard_bounds(critic.batch_size, size, rank)
        factor = size * (b - a) / critic.batch_size
        ddp = self._ddp if self._ddp is not None else critic._trained()

        def rows(fake: Tensor, real: Tensor, points: Tensor) -> tuple[Any, list[Tensor], float]:
            return ddp, [fake[a:b], real[a:b], points[a:b]], factor

        critic.data_parallel = rows

    def fit(self, particles: Tensor, data: Tensor, steps: int | None = None) -> Potential:
        """Train ``steps`` Adam steps on every rank's shard of ``particles`` (a collective)."""
        critic = self.critic
        if not isinstance(particles, Tensor):
            raise TypeError("particles must be this rank's tensor of particles: DDPCritic "
                            "trains on the pool (AdversarialObjective mode='pool'), got "
                            f"{type(particles).__name__}")
        check_particles(data, "data")
        check_particles(particles, "particles")
        check_compatible(particles, data, "particles", "data")
        critic.check_data(data)
        sizes = check_consistent(particles, "particles", self.group)
        rank = world(self.group)[0]
        start, n = sum(sizes[:rank]), sum(sizes)
        pool = particles.detach()
        self._wrap(data)
        g, b = critic._generator, critic.batch_size

        def batch(k0: int) -> Tensor:
            # the pool's draw of one process: b indices over all N particles, same stream
            idx = torch.randint(n, (b,), generator=g, device=pool.device) - start
            mine = (idx >= 0) & (idx < pool.shape[0])
            out = pool.new_zeros((b, *pool.shape[1:]))
            out[mine] = pool[idx[mine]]
            return _all_reduce_sum(out, self.group, "DDPCritic: assembling the minibatch")

        try:
            with warnings.catch_warnings():
                # DDP's note that a (1, k) gradient has strides (1, 1), not (k, 1): the same
                # numbers, laid out as autograd's double backward produced them
                warnings.filterwarnings("ignore", "Grad strides do not match")
                critic.train(batch, data, steps)
        finally:
            critic.data_parallel = None
        critic.n_fits += 1
        return critic.snapshot()

    def snapshot(self, particles: Tensor | None = None, data: Tensor | None = None
                 ) -> Potential:
        return self.critic.snapshot(particles, data)

    def state_dict(self) -> dict[str, Any]:
        return self.critic.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.critic.load_state_dict(state)


# --------------------------------------------------------------------------- replay


def _gathered_potential(potential: Potential, dst: int, rank: int) -> Potential | None:
    """A potential for one process: sharded ones gathered, replicated ones as they are."""
    from flowkit.insertion import PulledBackPotential

    if isinstance(potential, PulledBackPotential):
        inner = _gathered_potential(potential.potential, dst, rank)
        return None if inner is None else PulledBackPotential(inner, potential.inner)
    gathered = getattr(potential, "gathered", None)
    if callable(gathered):
        return gathered(dst)
    # a critic snapshot (DDPCritic) or an analytic potential: the same on every rank
    return potential if rank == dst else None


def gather_layers(layers: Any, dst: int = 0, group: Any = None) -> Any:
    """A sharded run's layer stack for one process, on rank ``dst`` (``None`` elsewhere).

    A collective (every rank passes its own ``result.layers``, in the same order). Each
    sharded potential (:class:`ShardedWitness`, :class:`ShardedSinkhornPotential`, also
    pulled back through an output map) is replaced by its single-process equivalent
    holding *every* rank's particles, target points and potentials; a potential that is
    the same on every rank (a :class:`DDPCritic` snapshot, an analytic one) is kept. The
    noise of a noisy layer is its seeded draw for the whole batch, of which each rank
    added its rows during the run, so the returned stack, applied on one process to the
    initial particles of the whole run, returns the sharded run's particles (Algorithm 2
    of Nitanda & Suzuki 2018 [NS18] on the union of the shards). Save it on rank ``dst``
    with :meth:`flowkit.GradientLayerStack.save`. Costs one gather of every potential's
    state: the stack holds ``T`` copies of the particles (as a single-process stack does).
    """
    from flowkit.layers import GradientLayer, GradientLayerStack

    if layers is None:
        raise ValueError("layers is None: run the flow with keep_layers=True to keep them")
    rank = world(group)[0]
    out = GradientLayerStack() if rank == dst else None
    for layer in layers:
        if not isinstance(layer, GradientLayer):
            raise TypeError(f"layers must hold GradientLayers to be gathered, got "
                            f"{type(layer).__name__}")
        psi = _gathered_potential(layer.potential, dst, rank)
        if out is not None:
            noisy = ({} if layer.temperature is None else
                     {"temperature": layer.temperature, "seed": layer.seed})
            out.append(GradientLayer(psi, layer.step_size, **noisy))
    return out


# --------------------------------------------------------------------------- monitors


def global_mean(values: Tensor, group: Any = None) -> Tensor:
    """The mean over every rank's rows of ``values`` (shape ``(n_r, ...)``), on every rank.

    A collective (one all-reduce of a sum and a count). E.g. the engine's ``grad_norm2``,
    ``global_mean(g.pow(2).flatten(1).sum(1))``, which on one rank is a shard's mean only.
    """
    local = torch.stack([values.sum(0).sum().to(torch.float64),
                         torch.tensor(float(values.shape[0]), dtype=torch.float64,
                                      device=values.device)])
    total = _all_reduce_sum(local, group, "global_mean")
    return (total[0] / total[1]).to(values.dtype)


def gather_particles(x: Tensor, dst: int = 0, group: Any = None) -> Tensor | None:
    """All ranks' shards concatenated in rank order on rank ``dst``; ``None`` elsewhere.

    A collective. Shards may differ in size (sizes are exchanged first and the shards
    padded to the largest for the transport). On one process it returns ``x``. Meant for
    monitors and final results: rank ``dst`` then holds every particle.
    """
    rank, size = world(group)
    if size == 1:
        return x
    sizes = check_consistent(x, "x", group)
    device = _comm_device(group, x)
    biggest = max(sizes)
    flat = x.detach().flatten(1).to(device)
    padded = torch.cat([flat, flat.new_zeros(biggest - flat.shape[0], flat.shape[1])])
    bufs = [torch.empty_like(padded) for _ in range(size)] if rank == dst else None
    try:
        dist.gather(padded, bufs, dst=_global(group, dst), group=group)
    except RuntimeError as err:
        raise _wrap(err, "gather_particles", rank) from err
    if rank != dst:
        return None
    rows = [b[:n] for b, n in zip(bufs, sizes)]
    return torch.cat(rows).view(sum(sizes), *x.shape[1:]).to(x.device)


class ShardedWasserstein:
    r"""W1/W2 monitor for a sharded run: evaluated on rank 0, value returned on every rank.

    A collective: pass it to the engine on every rank. With the default ``estimator``
    (``"auto"``, exact up to ``exact_max`` points, the labelled subsample estimate above)
    the particles and the target shards are gathered to rank 0 (the target once), which
    evaluates :class:`flowkit.monitors.W2` (or ``W1``) on them: ``N D`` numbers of the
    particles' dtype per call reach rank 0 (``D`` the event size). Above ``exact_max``
    particles (an int ``seed``), every rank draws from the seed the rows the subsample
    estimator's solves will read and only those travel (one reduce of at most
    ``n_repeats * exact_max * D`` numbers); rank 0's monitor, drawing the same rows, never
    reads the others.

    With ``estimator="sliced"`` (the sliced distance of Bonneel et al. 2015 [Bonneel15],
    ``n_projections = K`` directions, ``seed`` an int) every rank projects its own rows on
    the ``K`` directions (the same on every rank: they come from the seed) and rank 0
    gathers only the 1-D projections, ``8 N K`` bytes per call, when ``K < D``; when
    ``K >= D`` the particles themselves are fewer bytes (``8 N D``) and are gathered
    instead. The target's projections are gathered once. Either way the number is the
    single-process monitor's (``ot.sliced_wasserstein_distance`` on all the points, the
    same directions): only the order of the per-row products may differ.
    The result is broadcast, so every rank's history holds the same numbers.
    """

    def __init__(self, target: Tensor, p: int = 2, *, group: Any = None, **kwargs: Any):
        from flowkit import monitors

        if p not in (1, 2):
            raise ValueError(f"p must be 1 or 2, got {p}")
        self.target = check_particles(target, "target")
        self.group = group
        self.p = p
        self._make = (monitors.W2 if p == 2 else monitors.W1)
        self._kwargs = kwargs
        self.sliced = kwargs.get("estimator") == "sliced"
        if self.sliced:
            seed = kwargs.get("seed", 0)
            if isinstance(seed, torch.Generator):
                raise TypeError("seed must be an int for a sharded sliced estimate (every "
                                "rank draws the same directions from it), got a Generator")
            check_int(seed, "seed", minimum=0)
        self._monitor: Any = None
        self._gathered = False
        self._m_total = 0
        self._directions: Any = None
        self._target_proj: Any = None

    def _sliced(self, x: Tensor) -> dict[str, Any] | None:
        """The sliced estimate from gathered projections (or particles): rank 0's value."""
        import ot

        from flowkit.validation import numpy_seed

        k = self._kwargs.get("n_projections", 500)
        name = self._kwargs.get("name") or f"W{self.p}"
        d = math.prod(x.shape[1:])
        if self._directions is None:
            self._directions = ot.sliced.get_random_projections(
                d, k, numpy_seed(self._kwargs.get("seed", 0)), type_as=np.zeros(1))
            self._target_proj = self._project(self.target)
        proj = self._project(x)
        if proj is None:
            return None
        xs, yt = proj, self._target_proj
        a, b = np.full(len(xs), 1 / len(xs)), np.full(len(yt), 1 / len(yt))
        emd = ot.lp.wasserstein_1d(xs, yt, a, b, p=self.p)
        value = float((np.sum(emd) / k) ** (1.0 / self.p))
        return {name: value, f"{name}_method": f"sliced({k})"}

    def _project(self, x: Tensor) -> Any:
        """Every rank's rows projected on the directions, on rank 0 (``None`` elsewhere)."""
        dirs = self._directions
        flat = x.detach().flatten(1).to(torch.float64)
        if dirs.shape[1] < flat.shape[1]:  # fewer numbers than the points themselves
            mine = torch.from_numpy(np.dot(flat.cpu().numpy(), dirs))
            full = gather_particles(mine, 0, self.group)
            return None if full is None else full.numpy()
        full = gather_particles(flat, 0, self.group)
        return None if full is None else np.dot(full.cpu().numpy(), dirs)

    def _gather_rows(self, x: Tensor) -> Tensor | None:
        """The particles on rank 0 (``None`` elsewhere); above ``exact_max`` only the rows
        the subsample estimator's solves read, the others left zero (never read)."""
        from flowkit.monitors import EXACT_MAX, subsample_rows

        kw = self._kwargs
        seed, exact_max = kw.get("seed", 0), kw.get("exact_max", EXACT_MAX)
        sizes = check_consistent(x, "x", self.group)
        n, m = sum(sizes), self._m_total
        if (kw.get("estimator", "auto") not in ("auto", "subsample") or n <= exact_max
                or isinstance(seed, torch.Generator) or world(self.group)[1] == 1):
            return gather_particles(x, 0, self.group)
        # every rank draws the solves' rows from the seed, as rank 0's monitor will
        rows = torch.from_numpy(np.unique(np.concatenate(
            [ix for ix, _ in subsample_rows(n, m, exact_max, kw.get("n_repeats", 3), seed)])))
        rank = world(self.group)[0]
        start = sum(sizes[:rank])
        mine = (rows >= start) & (rows < start + x.shape[0])
        flat = x.detach().flatten(1)
        buf = flat.new_zeros((len(rows), flat.shape[1]))
        buf[mine] = flat[rows[mine] - start]
        device = _comm_device(self.group, x)
        buf = buf.to(device)
        try:  # each row comes from one rank, zeros from the others: the sum is exact
            dist.reduce(buf, dst=_global(self.group, 0), group=self.group)
        except RuntimeError as err:
            raise _wrap(err, "ShardedWasserstein", rank) from err
        if rank != 0:
            return None
        full = flat.new_zeros((n, flat.shape[1]), device=device)
        full[rows] = buf
        return full.view(n, *x.shape[1:]).to(x.device)

    def __call__(self, state: Any) -> dict[str, Any]:
        x = state if isinstance(state, Tensor) else state.particles
        rank, _ = world(self.group)
        if self.sliced:
            out = [self._sliced(x)]
        else:
            if not self._gathered:
                self._m_total = sum(check_consistent(self.target, "target", self.group))
                full_target = gather_particles(self.target, 0, self.group)
                if rank == 0:
                    self._monitor = self._make(full_target, **self._kwargs)
                self._gathered = True
            full = self._gather_rows(x)
            out = [self._monitor(full) if rank == 0 else None]
        if world(self.group)[1] > 1:
            dist.broadcast_object_list(out, src=_global(self.group, 0), group=self.group)
        return out[0]


def show_progress(progress: bool = True, group: Any = None) -> bool:
    """Whether this rank should show a progress bar: ``progress`` on rank 0 only.

    Pass ``progress=show_progress()`` to :class:`flowkit.FunctionalGradientDescent` so a
    ``P``-rank job prints one bar, not ``P`` interleaved ones.
    """
    return bool(progress) and world(group)[0] == 0


# --------------------------------------------------------------------------- checkpoints

_MANIFEST_FORMAT = "flowkit.sharded-checkpoint"


def sharded_checkpoint_path(path: str | os.PathLike, rank: int | None = None,
                            world_size: int | None = None) -> Path:
    """This rank's checkpoint file of a sharded run saved under ``path``.

    ``path/rank00001-of-00002.pt``: the world size is part of the name, so a resume with
    another world size finds no file instead of the wrong one. ``rank`` and ``world_size``
    default to the current group's.
    """
    r, p = world()
    rank = r if rank is None else check_int(rank, "rank", minimum=0)
    world_size = p if world_size is None else check_int(world_size, "world_size")
    if rank >= world_size:
        raise ValueError(f"rank must be < world_size={world_size}, got {rank}")
    return Path(path) / f"rank{rank:05d}-of-{world_size:05d}.pt"


def write_manifest(path: str | os.PathLike, x: Tensor, *, step: int | None = None,
                   group: Any = None, extra: dict[str, Any] | None = None) -> Path | None:
    """Write ``path/manifest.json`` for a sharded checkpoint (a collective; rank 0 writes).

    Records the world size, every rank's shard size and file, and the event shape and
    dtype, so a loader can check that a resume uses the same layout. Returns the path on
    rank 0, ``None`` elsewhere.
    """
    rank, size = world(group)
    sizes = check_consistent(x, "x", group)
    if rank != 0:
        return None
    Path(path).mkdir(parents=True, exist_ok=True)
    manifest = {
        "format": _MANIFEST_FORMAT, "version": 1, "world_size": size, "step": step,
        "shard_sizes": sizes, "n_total": sum(sizes), "event_shape": list(x.shape[1:]),
        "dtype": str(x.dtype).replace("torch.", ""),
        "files": [sharded_checkpoint_path(path, r, size).name for r in range(size)],
        "extra": extra or {},
    }
    out = Path(path) / "manifest.json"
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, out)  # atomic, as the engine's own checkpoint files
    return out


def read_manifest(path: str | os.PathLike, world_size: int | None = None) -> dict[str, Any]:
    """Read and check ``path/manifest.json``; ``ValueError`` if its world size differs.

    ``world_size`` defaults to the current group's; every file listed must exist.
    """
    file = Path(path) / "manifest.json"
    if not file.exists():
        raise FileNotFoundError(f"{file} does not exist: path is not a sharded checkpoint")
    manifest = json.loads(file.read_text())
    if manifest.get("format") != _MANIFEST_FORMAT:
        raise ValueError(f"{file} is not a flowkit sharded-checkpoint manifest")
    expected = world()[1] if world_size is None else world_size
    if manifest["world_size"] != expected:
        raise ValueError(
            f"the checkpoint at {path} was written by {manifest['world_size']} ranks but "
            f"world_size is {expected}: resume with --nproc-per-node "
            f"{manifest['world_size']} (reshard by loading every file on one process)"
        )
    missing = [f for f in manifest["files"] if not (Path(path) / f).exists()]
    if missing:
        raise FileNotFoundError(f"sharded checkpoint {path} lacks {missing}")
    return manifest


# --------------------------------------------------------------------------- the engine


class _LocalSeam:
    """What :class:`flowkit.FunctionalGradientDescent` does on one process: no collective.

    The engine calls these hooks at the few places where a sharded run differs; here each
    is the single-process rule, so one process behaves exactly as without this module.
    """

    def progress(self, flag: bool) -> bool:
        return bool(flag)

    def grad_norm2(self, sq: Tensor, weights: Tensor | None) -> Tensor:
        """The squared L2(mu) norm from the per-particle squared norms ``sq``."""
        return sq.mean() if weights is None else (weights * sq).sum()

    def max(self, values: Tensor) -> Tensor:
        """Elementwise maximum over the ranks (the divergence scales, the reference scale)."""
        return values

    def any(self, flag: bool) -> bool:
        return bool(flag)

    def checkpoint_file(self, path: Any) -> Path:
        from flowkit.checkpoints import check_target

        return check_target(path)

    def resume_file(self, path: Any) -> Path:
        path = Path(path)
        if path.is_dir() and (path / "manifest.json").exists():
            read_manifest(path, world_size=1)  # names the world size to resume with
        return path

    def saved(self, file: Path, x: Tensor, step: int) -> None:
        pass

    def noise(self, layer: Any, x: Tensor) -> Tensor | None:
        """The noise a noisy layer adds to the particles ``x`` (``None`` for none)."""
        return layer.noise(x)

    def check_resumed(self, file: Path, step: int) -> None:
        pass


class _ShardedSeam(_LocalSeam):
    """The engine's hooks when the particles are sharded over the ranks of ``group``.

    Every hook is a collective, called by the engine at the same step on every rank: the
    trace's ``grad_norm2`` is the global mean, the divergence checks see the maximum over
    the ranks (so a rank that diverges stops every rank with the same
    :class:`flowkit.FlowDivergedError`, never leaves them waiting in a ring pass), the
    progress bar is rank 0's, and ``checkpoint=`` is a folder holding one file per rank
    (:func:`sharded_checkpoint_path`) and the :func:`write_manifest` written after each
    save.
    """

    def __init__(self, group: Any):
        self.group = group
        self.rank, self.size = world(group)

    def progress(self, flag: bool) -> bool:
        return show_progress(flag, self.group)

    def grad_norm2(self, sq: Tensor, weights: Tensor | None) -> Tensor:
        if weights is None:
            return global_mean(sq, self.group)
        # each rank's weights sum to 1: the global measure gives every shard mass 1/P
        total = _all_reduce_sum((weights * sq).sum(), self.group, "grad_norm2")
        return total / self.size

    def max(self, values: Tensor) -> Tensor:
        return _all_reduce_max(values, self.group, "the divergence check")

    def any(self, flag: bool) -> bool:
        return bool(self.max(torch.tensor([float(bool(flag))]))[0] > 0)

    def noise(self, layer: Any, x: Tensor) -> Tensor | None:
        # the layer's seeded draw for all N particles, of which this rank adds its rows:
        # the noise of particle i is the single-process run's (and the replayed stack's)
        if getattr(layer, "noise_scale", 0.0) == 0.0:
            return None
        sizes = _all_gather_rows(x, self.group)
        start = sum(sizes[:self.rank])
        full = layer.noise(x.new_empty(()).expand(sum(sizes), *x.shape[1:]))
        return full[start:start + x.shape[0]]

    def checkpoint_file(self, path: Any) -> Path:
        from flowkit.checkpoints import check_target

        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"checkpoint must be a path (str or os.PathLike), got "
                            f"{type(path).__name__}")
        if Path(path).exists() and not Path(path).is_dir():
            raise ValueError(f"checkpoint={str(path)!r} is a file, but a run sharded over "
                             f"{self.size} ranks writes a folder (one file per rank and a "
                             "manifest): give a folder path")
        Path(path).mkdir(parents=True, exist_ok=True)
        return check_target(sharded_checkpoint_path(path, self.rank, self.size))

    def resume_file(self, path: Any) -> Path:
        read_manifest(path, world_size=self.size)
        return sharded_checkpoint_path(path, self.rank, self.size)

    def saved(self, file: Path, x: Tensor, step: int) -> None:
        write_manifest(file.parent, x, step=step, group=self.group)
        # the save is complete once the manifest is on disk, for every rank
        self.max(torch.zeros(1))

    def check_resumed(self, file: Path, step: int) -> None:
        # a job stopped while its ranks were writing leaves files of different steps;
        # resuming them would silently mix two states of the flow
        neg_low, high = self.max(torch.tensor([-step, step], dtype=torch.float64)).tolist()
        if -neg_low != high:
            from flowkit.checkpoints import CheckpointError

            raise CheckpointError(
                f"the sharded checkpoint in {file.parent} mixes steps {-neg_low:g}..{high:g} "
                "across its rank files (the job stopped during a save): it cannot be "
                "resumed consistently; resume from an earlier copy or restart")


_LOCAL = _LocalSeam()


def engine_seam(objective: Any = None) -> _LocalSeam:
    """The engine's distributed hooks for ``objective``: sharded iff its group has > 1 rank.

    The group is the objective's ``group`` (as :class:`ShardedMMD` has) when it is a
    process group, else the default one; without an initialized group of more than one
    rank the hooks are the single-process rules.
    """
    group = getattr(objective, "group", None)
    if not (_initialized() and isinstance(group, dist.ProcessGroup)):
        group = None
    return _ShardedSeam(group) if world(group)[1] > 1 else _LOCAL


# --------------------------------------------------------------------------- launching


def init_from_env(backend: str | None = None, *, timeout: float = DEFAULT_TIMEOUT
                  ) -> tuple[int, int]:
    """Join the process group ``torchrun`` describes in the environment; ``(rank, size)``.

    Without ``torchrun`` (no ``RANK``/``WORLD_SIZE`` in the environment) nothing is
    initialized and ``(0, 1)`` comes back, so one script runs on one process or on many.
    ``backend`` defaults to ``"nccl"`` when CUDA is available, else ``"gloo"``; with NCCL
    each process takes GPU ``LOCAL_RANK``. ``timeout`` (seconds) bounds every collective,
    so a dead peer ends the job with an error instead of a hang.
    """
    if _initialized():
        return world()
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return 0, 1
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout))
    return world()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch_worker(rank: int, nprocs: int, port: int, backend: str, timeout: float,
                   threads: int, fn: Callable[..., Any], args: tuple, results: Any) -> None:
    torch.set_num_threads(threads)
    code = 0
    try:
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=nprocs,
                                timeout=datetime.timedelta(seconds=timeout))
        value = fn(*args)
        buf = io.BytesIO()
        torch.save(value, buf)  # bytes, not shared-memory tensors: safe after we exit
        results.put((rank, True, buf.getvalue()))
    except BaseException as err:  # noqa: BLE001 - reported to the parent, then exit
        results.put((rank, False, f"{type(err).__name__}: {err}\n\n{traceback.format_exc()}"))
        code = 1
    results.close()
    results.join_thread()
    if code:
        # no destroy_process_group: it may wait on a peer's pending send; exiting closes
        # the sockets, which is what tells the other ranks to stop
        os._exit(code)
    dist.destroy_process_group()


def launch(fn: Callable[..., Any], nprocs: int, *args: Any, backend: str = "gloo",
           timeout: float = DEFAULT_TIMEOUT, threads: int | None = None,
           start_method: str = "spawn") -> list[Any]:
    """Run ``fn(*args)`` on ``nprocs`` local processes joined in a process group.

    For tests and notebooks (scripts use ``torchrun`` and :func:`init_from_env`). Each
    process initializes ``torch.distributed`` (``backend``, default gloo, over a free local
    port, ``timeout`` seconds per collective) and runs ``fn``; ``fn`` must be importable
    (a module-level function) with the default ``"spawn"`` start method. A function defined
    in a notebook is not: pass ``start_method="fork"`` there (and ``threads=1``, which
    keeps the children out of the parent's OpenMP pool).

    Returns the list of return values in rank order. If any rank fails, the others are
    given a few seconds to report their own error (they see the dead peer as a failed
    collective), the stragglers are terminated, and :class:`DistributedRunError` is raised
    with every rank's message: the job ends, never hangs. ``threads`` is each process's
    torch thread count (default: the CPU count split over the processes).
    """
    nprocs = check_int(nprocs, "nprocs")
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend must be 'gloo' or 'nccl', got {backend!r}")
    if not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    threads = threads or max(1, (os.cpu_count() or 1) // nprocs)
    ctx = mp.get_context(start_method)
    results = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_launch_worker, daemon=True,
                         args=(r, nprocs, port, backend, timeout, threads, fn, args, results))
             for r in range(nprocs)]
    for p in procs:
        p.start()
    values: dict[int, Any] = {}
    errors: dict[int, str] = {}
    grace = min(10.0, timeout)
    deadline = time.monotonic() + timeout + 60.0  # start-up plus one full collective timeout
    first_error: float | None = None
    try:
        while len(values) + len(errors) < nprocs:
            if first_error is not None:
                deadline = min(deadline, first_error + grace)
            if time.monotonic() > deadline:
                break
            try:
                rank, ok, payload = results.get(timeout=0.2)
            except queue_mod.Empty:
                dead = [r for r, p in enumerate(procs) if p.exitcode not in (None, 0)
                        and r not in errors and r not in values]
                for r in dead:  # crashed without reporting (signal, os._exit in user code)
                    errors[r] = f"process exited with code {procs[r].exitcode} without a report"
                if dead and first_error is None:
                    first_error = time.monotonic()
                continue
            if ok:
                values[rank] = torch.load(io.BytesIO(payload), weights_only=False)
            else:
                errors[rank] = payload
                if first_error is None:
                    first_error = time.monotonic()
    finally:
        for r, p in enumerate(procs):
            p.join(timeout=1.0 if (errors or r in values) else 0.0)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5.0)
                if r not in values and r not in errors:
                    errors[r] = ("terminated by launch: no result within the time limit "
                                 f"(timeout={timeout} s) or after another rank failed")
    if errors:
        raise DistributedRunError(errors)
    return [values[r] for r in range(nprocs)]
