r"""The gradient-regularised MMD critic: a learned feature map under a fixed kernel.

An MMD GAN critic (Li et al. 2017; Bińkowski et al. 2018) is a feature map
:math:`\Phi_\theta` (any ``nn.Module``) composed with a base kernel :math:`k`, so the
critic's kernel is :math:`k_\theta(x, y) = k(\Phi_\theta(x), \Phi_\theta(y))`. Given data
:math:`p` and generated samples :math:`q`, its witness is

.. math::
    f_\theta(z) = \mathbb E_{x\sim p}\, k_\theta(z, x) - \mathbb E_{y\sim q}\, k_\theta(z, y),
    \qquad \|f_\theta\|^2_{\mathcal H} = \mathrm{MMD}^2_{k_\theta}(p, q),

and the features are trained to maximise the MMD minus a gradient penalty on the witness
(Bińkowski et al. 2018; the gradient-regularised critic that Mroueh & Nguyen's
flow mimics [MN21]):

.. math::
    \max_\theta\; \mathrm{MMD}^2_{k_\theta}(p_b, q_b)
        - \lambda\, \mathbb E_{\tilde x}\, R\big(\|\nabla f_\theta(\tilde x)\|\big),

with minibatches :math:`p_b, q_b`, penalty points :math:`\tilde x` and penalty :math:`R`
from :mod:`flowkit.critics.penalties` (two-sided by default, as Bińkowski et al.).
:meth:`MMDCritic.fit` returns the frozen witness as the potential :math:`\psi = -f_\theta`
(flowkit's sign convention: a layer moves particles along :math:`-\nabla\psi`),
evaluated against the *whole* particle pool and data, so Algorithm 1
(:class:`flowkit.objectives.AdversarialObjective`) runs with it unchanged.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
from torch import Tensor, nn

from flowkit._compat import MISSING, renamed_keyword
from flowkit.critics.base import Critic, check_network_input
from flowkit.critics.penalties import check_penalty_kind, penalty_from_gradients, penalty_points
from flowkit.geometry import DEFAULT_MEMORY_BUDGET, PointCloud
from flowkit.kernels import Gaussian, Kernel, kernel_sum, mmd2
from flowkit.nn import MLP
from flowkit.potential import Potential
from flowkit.validation import check_compatible, check_int, check_number, check_particles

__all__ = ["MMDCritic", "MMDWitnessPotential"]


class MMDWitnessPotential(Potential):
    r""":math:`\psi(z) = -f_\theta(z) = \frac1N\sum_j k(\Phi(z), \Phi(x_j))
    - \frac1M\sum_m k(\Phi(z), \Phi(y_m))` with frozen features.

    Holds a frozen copy of :math:`\Phi` and the feature snapshots of the particle pool
    (:math:`x_j`) and data (:math:`y_m`); the gradient in ``z`` is autograd through
    :math:`\Phi` and the blocked kernel sum.
    """

    def __init__(self, features: nn.Module, kernel: Kernel, feat_particles: Tensor,
                 feat_data: Tensor, memory_budget: int = DEFAULT_MEMORY_BUDGET):
        super().__init__()
        self.features = features
        self.kernel = kernel
        points, weights = PointCloud.signed_stack(feat_particles, feat_data, 1.0, -1.0)
        self.register_buffer("points", points)
        self.register_buffer("weights", weights)
        PointCloud.check_policy(None, memory_budget, "torch")
        self.memory_budget = memory_budget

    def grad(self, z: Tensor, *, create_graph: bool = False) -> Tensor:
        check_network_input(self.features, z)  # before autograd touches it
        return super().grad(z, create_graph=create_graph)

    def forward(self, z: Tensor) -> Tensor:
        check_network_input(self.features, z)
        return kernel_sum(self.features(z), self.points, self.kernel, self.weights,
                          memory_budget=self.memory_budget)


class MMDCritic(Critic):
    r"""A gradient-regularised MMD critic trained with Adam, warm-started across fits.

    Same interface as :class:`flowkit.critics.WGANGPCritic` (``fit``, ``train``,
    ``snapshot``, ``state_dict``, ``batch_size``, ``steps``), so
    ``AdversarialObjective(MMDCritic(...), data)`` is Algorithm 1 with an MMD critic.

    Parameters
    ----------
    features : nn.Module, optional
        :math:`\Phi_\theta: (B, *event) \to (B, m)`, trained in place. Default: an
        :class:`flowkit.nn.MLP` from ``dim`` to ``feature_dim`` outputs.
    kernel : Kernel
        Base kernel on the features (default ``Gaussian(1.0)``).
    penalty : {"two-sided", "one-sided", "dragan"}
        :math:`R` and its points (:mod:`flowkit.critics.penalties`); ``penalty_kind=`` is a
        deprecated alias, and a *number* as ``penalty`` (its former meaning, the weight) is
        read as ``penalty_weight`` with a ``DeprecationWarning``.
    penalty_weight : float
        Weight :math:`\lambda \ge 0` of the gradient penalty (default 1).
    lr, betas : float, (float, float)
        Adam's step and moments.
    batch_size : int
        Minibatch size ``b`` of data and of generated samples per step.
    steps : int
        Default Adam steps per :meth:`fit`.
    dim, feature_dim, hidden, depth : int
        Shape of the default feature MLP.
    seed : int or torch.Generator
        Source of all randomness (default MLP weights, minibatches, penalty points).
    perturbation : float, optional
        DRAGAN noise scale.
    memory_budget : int
        For the snapshot's kernel sums over the pool and data.

    See Also
    --------
    flowkit.critics.WGANGPCritic
        The network critic of Algorithm 1.
    flowkit.critics.Critic
        The interface every critic implements.
    flowkit.objectives.MMD
        The MMD with a fixed kernel, no critic to fit.

    Examples
    --------
    >>> import torch, flowkit as fk
    >>> critic = fk.critics.MMDCritic(dim=2, steps=5, seed=0)
    >>> psi = critic.fit(torch.randn(100, 2), torch.randn(100, 2) + 1.0)
    >>> psi.grad(torch.zeros(3, 2)).shape
    torch.Size([3, 2])
    """

    _module_key = "features"

    def __init__(self, features: nn.Module | None = None, kernel: Kernel | None = None,
                 penalty: str = MISSING, *, penalty_weight: float = MISSING, lr: float = 1e-3,
                 betas: tuple[float, float] = (0.5, 0.9), batch_size: int = 64,
                 steps: int = 20, dim: int = 2, feature_dim: int = 16, hidden: int = 64,
                 depth: int = 3, seed: int | torch.Generator = 0,
                 perturbation: float | None = None,
                 memory_budget: int = DEFAULT_MEMORY_BUDGET, penalty_kind: str = MISSING):
        self.kernel = Gaussian(1.0) if kernel is None else kernel
        if not isinstance(self.kernel, Kernel):
            raise TypeError(f"kernel must be a flowkit.kernels.Kernel, got "
                            f"{type(kernel).__name__}")
        weight_name = "penalty_weight"
        if penalty is not MISSING and not isinstance(penalty, str):
            # the old meaning of penalty: the weight (now penalty_weight)
            if penalty_weight is not MISSING:
                raise TypeError("MMDCritic got a number as penalty and penalty_weight; penalty "
                                "is the kind of penalty, penalty_weight its weight")
            warnings.warn("MMDCritic(penalty=<number>) is deprecated: penalty is now the kind "
                          "(as in WGANGPCritic); pass the weight as penalty_weight=",
                          DeprecationWarning, stacklevel=2)
            penalty_weight, penalty, weight_name = penalty, MISSING, "penalty"
        if penalty is MISSING and penalty_kind is MISSING:
            penalty = "two-sided"
        kind, kind_name = renamed_keyword(penalty, penalty_kind, "penalty", "penalty_kind",
                                          "MMDCritic")
        self.penalty = check_penalty_kind(kind, kind_name)
        self.penalty_weight = check_number(1.0 if penalty_weight is MISSING else penalty_weight,
                                           weight_name, minimum=0.0)
        self._configure_training(lr=lr, betas=betas, batch_size=batch_size, steps=steps,
                                 seed=seed, perturbation=perturbation, min_batch=2)
        if features is None:
            features = MLP(check_int(dim, "dim"), check_int(feature_dim, "feature_dim"),
                           hidden, depth, "elu", generator=self._init_stream())
        elif not isinstance(features, nn.Module):
            raise TypeError(f"features must be a torch.nn.Module, got {type(features).__name__}")
        self._attach(features)
        PointCloud.check_policy(None, memory_budget, "torch")  # the one check of the budget
        self.memory_budget = memory_budget
        self._pool: Tensor | None = None

    # ------------------------------------------------------------------ training
    def _after_train(self, fresh: list[Tensor]) -> None:
        if fresh:
            self._pool = torch.cat(fresh)  # the latest fresh samples stand for q

    def _loss(self, real: Tensor, fake: Tensor, g: torch.Generator) -> Tensor:
        """``-MMD^2_theta(real, fake) + penalty_weight * mean R(|grad f(x~)|)``."""
        nb = min(len(real), len(fake))
        points = penalty_points(real[:nb], fake[:nb], self.penalty, generator=g,
                                perturbation=self.perturbation).requires_grad_(True)
        feats = self.features(torch.cat([fake, real, points]))
        f_fake, f_real, f_points = feats.split([len(fake), len(real), nb])
        # differentiable plain-torch sums (autograd flows into the features)
        loss = -mmd2(f_real, f_fake, self.kernel, backend="torch")
        if self.penalty_weight > 0:
            pts, w = PointCloud.signed_stack(f_real, f_fake, 1.0, -1.0)
            witness = kernel_sum(f_points, pts, self.kernel, w, backend="torch")
            (grad,) = torch.autograd.grad(witness.sum(), points, create_graph=True)
            loss = loss + self.penalty_weight * penalty_from_gradients(
                grad, self.penalty).mean()
        return loss

    def snapshot(self, particles: Tensor | None = None, data: Tensor | None = None
                 ) -> MMDWitnessPotential:
        """A frozen copy of the features and the witness between ``particles`` and ``data``.

        ``particles`` defaults to the last fresh batches seen by :meth:`train` (when it was
        given a callable); ``data`` is required.
        """
        if particles is None:
            particles = self._pool
        if particles is None:
            raise ValueError("particles is required: the witness is between the particle pool "
                             "and data (or call fit() with a sampler first)")
        if data is None:
            raise ValueError("data is required: the witness is between particles and data")
        check_particles(particles, "particles")
        check_particles(data, "data")
        check_compatible(particles, data, "particles", "data")
        net = copy.deepcopy(self.features).eval()
        net.requires_grad_(False)
        with torch.no_grad():
            fx, fy = net(particles), net(data)
        return MMDWitnessPotential(net, self.kernel, fx, fy, self.memory_budget)

    def witness(self, z: Tensor, particles: Tensor, data: Tensor) -> Tensor:
        r"""The live witness :math:`f_\theta(z)` between ``data`` and ``particles``."""
        for value, name in ((z, "z"), (particles, "particles")):
            check_particles(value, name)
            check_compatible(value, data, name, "data")
        fz, fx, fy = self.features(z), self.features(particles), self.features(data)
        pts, w = PointCloud.signed_stack(fy, fx, 1.0, -1.0)
        return kernel_sum(fz, pts, self.kernel, w, backend="torch")

    @property
    def penalty_kind(self) -> str:
        """Deprecated alias of :attr:`penalty` (the kind)."""
        warnings.warn("MMDCritic.penalty_kind is deprecated; use .penalty", DeprecationWarning,
                      stacklevel=2)
        return self.penalty

    # ------------------------------------------------------------------ state
    def _extra_state(self) -> dict[str, Any]:
        return {"pool": self._pool}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self._pool = state.get("pool")

    def __repr__(self) -> str:
        return (f"MMDCritic(kernel={self.kernel!r}, penalty={self.penalty!r}, "
                f"penalty_weight={self.penalty_weight}, lr={self.lr}, "
                f"batch_size={self.batch_size}, steps={self.steps}, "
                f"features={type(self.features).__name__})")
