r"""Squared MMD to a fixed sample, with the kernel witness as first variation.

For a kernel :math:`k`, particles :math:`\mu = \sum_i a_i\delta_{x_i}` (uniform
:math:`a_i = 1/N` unless weights are given) and a target sample
:math:`\nu = \sum_m b_m \delta_{y_m}` (uniform :math:`1/M` unless ``target_weights``),

.. math::
    \mathcal L(\mu) = \mathrm{MMD}^2(\mu, \nu), \qquad
    \frac{\delta \mathcal L}{\delta\mu}(z) = 2\Big(\sum_j a_j k(z, x_j)
        - \sum_m b_m k(z, y_m)\Big) = 2 f_{\nu,\mu}(z),

where :math:`f_{\nu,\mu}` is the witness function of Arbel et al. (2019, sec. 2). A step
of Algorithm 3 with this first variation is the MMD gradient flow's Euler scheme
(Arbel et al. 2019, eq. (12)) with step ``2 eta``. With weights,
:math:`\partial\mathcal L/\partial x_i = a_i \nabla\frac{\delta\mathcal L}{\delta\mu}(x_i)`,
so the functional gradient is the witness' gradient for any
weights (the engine's convention, :mod:`flowkit.objective`).

Every sum runs on :class:`flowkit.geometry.PointCloud`: the objective holds one cloud on
the target (its weights, the kernel, the blocking policy and the backend, validated once).
"""

from __future__ import annotations

from torch import Tensor

from flowkit.geometry import DEFAULT_MEMORY_BUDGET, PointCloud
from flowkit.kernels import Gaussian, Kernel
from flowkit.objective import FunctionalObjective
from flowkit.objectives._target import SampleTarget
from flowkit.potential import Potential
from flowkit.validation import check_compatible, check_particles, check_weights

__all__ = ["MMD", "KernelWitness"]


class KernelWitness(Potential):
    r"""The potential :math:`\psi(z) = c\,(\sum_j a_j k(z,x_j) - \sum_m b_m k(z,y_m))`.

    Holds a snapshot of the particles (and their weights ``a``, uniform ``1/N`` unless
    given) at the step it was built, so a layer made from it can be evaluated anywhere
    (Algorithm 2). Its gradient is computed in closed form, in blocks. ``lipschitz_grad``
    is :math:`2|c|\,\sup\|\nabla^2 k\|`, a guaranteed bound.

    Both sums run as *one* reduction over the ``N + M`` points ``[x; y]`` with signed
    weights ``c a`` and ``-c b`` (:meth:`flowkit.geometry.PointCloud.signed_stack`). The
    blocking policy and backend are kept as plain settings (checked once, by
    :meth:`flowkit.geometry.PointCloud.check_policy`) so that a saved layer loads safely.
    """

    def __init__(self, particles: Tensor, target: Tensor, kernel: Kernel, scale: float = 2.0,
                 block_size: int | None = None, memory_budget: int = DEFAULT_MEMORY_BUDGET,
                 backend: str = "auto", *, weights: Tensor | None = None,
                 target_weights: Tensor | None = None):
        super().__init__()
        self.register_buffer("particles", particles.detach())
        self.register_buffer("target", target)
        self.register_buffer("weights", None if weights is None else weights.detach())
        self.register_buffer("target_weights", target_weights)
        self.kernel = kernel
        self.scale = float(scale)
        PointCloud.check_policy(block_size, memory_budget, backend)
        self._kw = {"block_size": block_size, "memory_budget": memory_budget,
                    "backend": backend}
        self.lipschitz_grad = 2.0 * abs(self.scale) * kernel.hessian_bound()

    def _cloud(self, z: Tensor) -> PointCloud:
        check_particles(z, "z", finite=False)
        check_compatible(z, self.particles, "z", "particles")
        points, w = PointCloud.signed_stack(self.particles, self.target, self.scale,
                                            -self.scale, self.weights, self.target_weights)
        # the cloud's own screen refuses non-finite points (one sum per tensor), so a
        # potential built on diverged particles never returns a plausible number; both
        # are points of the particles' space, named x as the objective's argument
        return PointCloud(z, points, b=w, kernel=self.kernel, **self._kw,
                          names=("x", "x", "x", "weights"))

    def forward(self, z: Tensor) -> Tensor:
        return self._cloud(z).kernel_sum()

    def grad(self, z: Tensor, *, create_graph: bool = False) -> Tensor:
        # torch ops throughout (the native path steps aside when z requires grad), so the
        # result is differentiable in z whenever z carries a graph
        return self._cloud(z).kernel_grad_sum()


class MMD(SampleTarget, FunctionalObjective):
    r"""Squared maximum mean discrepancy to a fixed target sample.

    Parameters
    ----------
    target : Tensor or PointCloud
        Target sample ``(M, *event)``; the particles must share its event shape, device and
        dtype. A :class:`flowkit.geometry.PointCloud` on the target (``PointCloud(y,
        b=target_weights, kernel=k, backend=...)``) gives the target, its weights, the
        kernel and the compute settings at once; then ``kernel``, ``target_weights`` and
        the three settings below must be left at their defaults.
    kernel : Kernel, default ``Gaussian(1.0)``
        Any radial kernel of :mod:`flowkit.kernels`.
    target_weights : Tensor, optional
        ``(M,)`` probability weights of the target sample (default uniform ``1/M``).
    block_size : int, optional
        Rows per block in the kernel sums; by default derived from ``memory_budget``.
    memory_budget : int
        Bytes of temporaries allowed per block (default 256 MiB); a budget too small for
        one row of ``N + M`` columns raises ``ValueError`` at the first evaluation.
    backend : {"auto", "torch", "native", "keops", "triton"}
        Where the kernel sums run (see :mod:`flowkit.backends`): ``"auto"`` takes the fused
        native Gaussian path on CPU float32 when available, else plain torch.

    See Also
    --------
    flowkit.objectives.EnergyDistance
        The MMD of the energy kernel: no bandwidth to choose.
    flowkit.objectives.SinkhornDivergence
        The debiased entropic optimal-transport divergence.
    flowkit.objectives.NoisyMMDFlow
        This flow with noise injection (Arbel et al. 2019).
    flowkit.critics.MMDCritic
        The MMD on learned features with a gradient penalty (a critic).

    Notes
    -----
    Smoothness: if :math:`\nabla_1 k` is ``L``-Lipschitz, the objective is ``6 L``-smooth in
    :math:`L^2(\mu)` (the Hessian quadratic form is bounded by ``4L`` for the
    particle-particle term and ``2L`` for the particle-target term; this is the constant
    behind Arbel et al. 2019, Prop. 4's step condition ``gamma <= 2/(3L)`` for
    :math:`\frac12\mathrm{MMD}^2`). The minimum is 0. ``first_variation``,
    ``functional_gradient`` and ``value`` take particle ``weights`` (``None``: uniform).

    Examples
    --------
    >>> import torch, flowkit as fk
    >>> y = fk.datasets.eight_gaussians(200, seed=0)
    >>> obj = fk.objectives.MMD(y, kernel=fk.kernels.Gaussian(1.0))
    >>> obj.functional_gradient(torch.zeros(5, 2)).shape
    torch.Size([5, 2])
    """

    minimum = 0.0
    #: the caller's name for the target sample in error messages (a subclass accepting a
    #: deprecated alias sets it on the instance before calling ``__init__``)
    _target_name = "target"

    def __init__(self, target: Tensor | PointCloud, kernel: Kernel | None = None, *,
                 target_weights: Tensor | None = None, block_size: int | None = None,
                 memory_budget: int = DEFAULT_MEMORY_BUDGET, backend: str = "auto"):
        self._geometry = _target_cloud(
            target, kernel, target_weights, self._target_name,
            {"block_size": block_size, "memory_budget": memory_budget, "backend": backend})
        self.target = self._geometry.y
        self.kernel = self._geometry.kernel
        self.smoothness = 6.0 * self.kernel.hessian_bound()

    def validate(self, x: Tensor, *, finite: bool = True) -> None:
        """Particles of the target's event shape, device and dtype (and finite).

        The one check behind :meth:`first_variation`, :meth:`functional_gradient` and
        :meth:`value`, and the engine's at the start of a run. ``first_variation`` is the
        engine's per-step hook and passes ``finite=False``: shapes, dtype and device are
        metadata, but a finiteness test would synchronise with the device at every step,
        and the engine already checks the particles after each update.
        """
        self._geometry.particles(x, finite=finite, target=self._target_name)

    def _check(self, x: Tensor, weights: Tensor | None, *, finite: bool = True) -> None:
        """:meth:`validate`, then the particles' weights (a probability vector or None)."""
        if finite:
            self.validate(x)
        else:
            self.validate(x, finite=False)
        PointCloud.particle_weights(weights, x, finite=finite)

    def first_variation(self, x: Tensor, weights: Tensor | None = None) -> KernelWitness:
        self._check(x, weights, finite=False)
        return self._witness(x, weights)

    def functional_gradient(self, x: Tensor, weights: Tensor | None = None) -> Tensor:
        self._check(x, weights)
        return self._witness(x, weights).grad(x)

    def _witness(self, x: Tensor, weights: Tensor | None = None) -> KernelWitness:
        # unchecked: for subclasses that validate once and add to the witness
        return KernelWitness(x, self.target, self.kernel, 2.0, **self._geometry.policy,
                             weights=weights, target_weights=self.target_weights)

    def value(self, x: Tensor, weights: Tensor | None = None) -> Tensor:
        self._check(x, weights)
        # the first two terms in one pass over [x; y] with weights [a, -2 b]
        points, w = PointCloud.signed_stack(x, self.target, 1.0, -2.0, weights,
                                            self.target_weights)
        s = PointCloud.checked(x, points, b=w, kernel=self.kernel,
                               **self._geometry.policy).kernel_sum()
        return (s.mean() if weights is None else s @ weights) + self._kyy()

    def _kyy(self) -> Tensor:
        # The target term is constant along the flow: compute it once.
        if getattr(self, "_kyy_cache", None) is None:
            s = self._geometry.kernel_sum()
            b = self.target_weights
            self._kyy_cache = s.mean() if b is None else s @ b
        return self._kyy_cache


def _target_cloud(target: Tensor | PointCloud, kernel: Kernel | None,
                  target_weights: Tensor | None, name: str, policy: dict) -> PointCloud:
    """The target's cloud: the one given, or one built from the keyword arguments."""
    if isinstance(target, PointCloud):
        given = [k for k, v in [("kernel", kernel), ("target_weights", target_weights)]
                 if v is not None]
        given += [k for k, v in policy.items()
                  if v != {"block_size": None, "memory_budget": DEFAULT_MEMORY_BUDGET,
                           "backend": "auto"}[k]]
        if given:
            raise ValueError(f"{name} is a PointCloud, which already fixes {', '.join(given)}:"
                             f" set them on the PointCloud, not here")
        b = target.given_b
        if b is not None:
            check_weights(b, target.y.shape[0], "target_weights", like=target.y)
        return PointCloud.checked(target.y, target.y, b=b, kernel=target.kernel or Gaussian(1.0),
                                  **target.policy)
    check_particles(target, name)
    kernel = Gaussian(1.0) if kernel is None else kernel
    if target_weights is not None:
        check_weights(target_weights, target.shape[0], "target_weights", like=target)
    return PointCloud(target, b=target_weights, kernel=kernel, **policy,
                      names=(name, name, "target_weights", "target_weights"))
