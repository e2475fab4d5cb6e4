r"""Sobolev descent with finite features (Mroueh, Sercu & Raj 2019 [MrouehEtAl19]).

For features :math:`\Phi: \mathbb R^d \to \mathbb R^m` and critics :math:`u = a^\top\Phi`,
the gradient-regularised critic between the target :math:`p` and the particles :math:`q`

.. math::
    u^* = \arg\max_u\; \mathbb E_p u - \mathbb E_q u
          - \tfrac12\big(\mathbb E_q\|\nabla_x u\|^2 + \lambda \|a\|^2\big)

is :math:`a^* = (D_q + \lambda I)^{-1}(\mathbb E_p\Phi - \mathbb E_q\Phi)` with
:math:`D_q = \mathbb E_q[\nabla\Phi\,\nabla\Phi^\top]` (the ``m x m`` Gram matrix of the
feature Jacobians over the particles), and particles move as
:math:`x \leftarrow x + \varepsilon \nabla_x u^*(x)`. In flowkit's sign convention the
potential is :math:`\psi = -u^*`, so :class:`FunctionalGradientDescent` with step
``eta = epsilon`` runs it unchanged.

Sobolev descent is a *preconditioned* descent of the feature MMD
:math:`\frac12\|\mathbb E_p\Phi - \mathbb E_q\Phi\|^2` (the MMD decreases along the
continuous flow; Mroueh et al. 2019 [MrouehEtAl19]): its direction is not the :math:`L^2(\mu)`
gradient of that value, so :class:`SobolevDescent` defines no ``value`` (monitor
:meth:`SobolevDescent.feature_mmd2` or an :class:`flowkit.monitors.MMD`). The
linear solve costs :math:`O(m^3)` per step, the price Arbel et al. (2019) point out
against the plain MMD flow.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch
from torch import Tensor, nn

from flowkit._compat import MISSING, renamed_keyword
from flowkit.objective import FunctionalObjective
from flowkit.potential import Potential
from flowkit.validation import (
    as_generator,
    check_compatible,
    check_finite,
    check_int,
    check_particles,
    check_positive,
)

__all__ = ["RandomFourierFeatures", "SobolevDescent", "SobolevCritic"]


class RandomFourierFeatures(nn.Module):
    r"""Random Fourier features of the Gaussian kernel of bandwidth ``h`` (Rahimi & Recht 2007).

    :math:`\Phi(x) = \sqrt{2/m}\,\cos(W x + b)`, :math:`W_{kl} \sim \mathcal N(0, h^{-2})`,
    :math:`b_k \sim U[0, 2\pi]`, so :math:`\Phi(x)^\top\Phi(y) \to e^{-\|x-y\|^2/(2h^2)}`.
    The Jacobian is closed form, :math:`\nabla\Phi(x) = -\sqrt{2/m}\,\sin(Wx+b)\odot W`,
    which makes :math:`D_q` an ``m x m`` product: with
    :math:`s_{ik} = \sqrt{2/m}\sin(W x_i + b)_k`,
    :math:`D_q = \frac1N (S^\top S) \odot (W W^\top)`.
    """

    def __init__(self, dim: int, n_features: int = 256, bandwidth: float = 1.0, *,
                 seed: int | torch.Generator = 0, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu"):
        super().__init__()
        check_int(dim, "dim")
        check_int(n_features, "n_features")
        self.bandwidth = check_positive(bandwidth, "bandwidth")
        g = as_generator(seed, "cpu")  # drawn on the CPU in float64, then moved
        w = torch.randn(n_features, dim, generator=g, dtype=torch.float64) / self.bandwidth
        b = 2 * math.pi * torch.rand(n_features, generator=g, dtype=torch.float64)
        self.register_buffer("W", w.to(device=device, dtype=dtype))
        self.register_buffer("b", b.to(device=device, dtype=dtype))
        self.scale = math.sqrt(2.0 / n_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.scale * torch.cos(x.flatten(1) @ self.W.T + self.b)

    def sines(self, x: Tensor) -> Tensor:
        """``S`` with :math:`\\nabla\\Phi(x_i) = -\\mathrm{diag}(S_i) W`, shape ``(N, m)``."""
        return self.scale * torch.sin(x.flatten(1) @ self.W.T + self.b)


class SobolevCritic(Potential):
    r"""The potential :math:`\psi = -u^* = -a^{*\top}\Phi` (features frozen)."""

    def __init__(self, features: Callable[[Tensor], Tensor], a: Tensor):
        super().__init__()
        self.features = features
        self.register_buffer("a", a)

    def _check(self, z: Tensor) -> None:
        check_particles(z, "z", finite=False)
        if isinstance(self.features, RandomFourierFeatures):
            width = self.features.W.shape[1]
            if z[0].numel() != width:
                raise ValueError(f"z has events of shape {tuple(z.shape[1:])} but the features "
                                 f"take {width} entries per event")
            check_compatible(z.flatten(1), self.features.W, "z", "the features")

    def forward(self, z: Tensor) -> Tensor:
        self._check(z)
        return -(self.features(z) @ self.a)

    def grad(self, z: Tensor, *, create_graph: bool = False) -> Tensor:
        self._check(z)
        if isinstance(self.features, RandomFourierFeatures):
            # grad u = sum_k a_k grad Phi_k = -(S diag(a)) W
            g = (self.features.sines(z) * self.a) @ self.features.W
            return g.view_as(z)  # psi = -u, grad psi = +(S a) W
        return super().grad(z, create_graph=create_graph)


class SobolevDescent(FunctionalObjective):
    r"""Sobolev descent toward ``target`` with finite features (Mroueh et al. 2019).

    Parameters
    ----------
    target : Tensor
        Target sample ``(M, *event)`` (:math:`p`); ``data=`` is a deprecated alias.
    features : nn.Module or callable, optional
        :math:`\Phi: (B, *event) \to (B, m)`. Default: :class:`RandomFourierFeatures` with
        ``n_features`` features of bandwidth ``bandwidth``, drawn from ``seed``. A general
        module gets its Jacobians from ``torch.func`` (vmap of jacrev), in row blocks.
    lam : float
        :math:`\lambda > 0`, the ridge on :math:`a` (also keeps :math:`D_q + \lambda I`
        invertible).
    n_features, bandwidth, seed
        For the default features.
    jacobian_block : int
        Particles per block when Jacobians come from autodiff.

    Examples
    --------
    >>> import torch, flowkit as fk
    >>> y = fk.datasets.eight_gaussians(200, seed=0)
    >>> obj = fk.objectives.SobolevDescent(y, n_features=64, bandwidth=0.5, lam=1e-3)
    >>> obj.functional_gradient(torch.zeros(5, 2)).shape
    torch.Size([5, 2])
    """

    def __init__(self, target: Tensor = MISSING,
                 features: Callable[[Tensor], Tensor] | None = None, *,
                 lam: float = 1e-3, n_features: int = 256, bandwidth: float = 1.0,
                 seed: int | torch.Generator = 0, jacobian_block: int = 256,
                 data: Tensor = MISSING):
        target, self._target_name = renamed_keyword(target, data, "target", "data",
                                                    "SobolevDescent")
        self.target = check_particles(target, self._target_name)
        self.lam = check_positive(lam, "lam")
        if features is None:
            features = RandomFourierFeatures(target[0].numel(), n_features, bandwidth,
                                             seed=seed, dtype=target.dtype,
                                             device=target.device)
        elif not callable(features):
            raise TypeError(f"features must be an nn.Module or a callable, got "
                            f"{type(features).__name__}")
        self.features = features
        self.jacobian_block = check_int(jacobian_block, "jacobian_block")
        with torch.no_grad():
            self.mean_p = self._phi(self.target).mean(0)  # E_p Phi, fixed

    @property
    def data(self) -> Tensor:
        """Deprecated alias of :attr:`target`."""
        warnings.warn("SobolevDescent.data is deprecated; use .target", DeprecationWarning,
                      stacklevel=2)
        return self.target

    def _phi(self, x: Tensor) -> Tensor:
        out = self.features(x)
        if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != x.shape[0]:
            raise ValueError("features must map (B, *event) to (B, m)")
        return out

    def validate(self, x: Tensor, *, finite: bool = True) -> None:
        """Particles of the target's event shape, device and dtype (and finite).

        Every public method runs it in full, :meth:`first_variation` included: its Cholesky
        solve synchronises with the device anyway, so the finiteness test costs nothing more
        (and a NaN would otherwise surface as a linear-algebra error).
        """
        check_particles(x, "x", finite=False)
        check_compatible(x, self.target, "x", self._target_name)
        if finite:
            check_finite(x, "x")

    def gram(self, x: Tensor) -> Tensor:
        r""":math:`D_q = \frac1N\sum_i \nabla\Phi(x_i)\nabla\Phi(x_i)^\top`, ``(m, m)``."""
        self.validate(x)
        return self._gram(x)

    def _gram(self, x: Tensor) -> Tensor:
        f = self.features
        if isinstance(f, RandomFourierFeatures):
            s = f.sines(x)
            return (s.T @ s / x.shape[0]) * (f.W @ f.W.T)
        from torch.func import jacrev, vmap

        def phi1(z: Tensor) -> Tensor:
            return self._phi(z[None])[0]

        total = None
        for start in range(0, x.shape[0], self.jacobian_block):
            jac = vmap(jacrev(phi1))(x[start:start + self.jacobian_block]).flatten(2)
            part = torch.einsum("nmd,nkd->mk", jac, jac)
            total = part if total is None else total + part
        return total / x.shape[0]

    def critic(self, x: Tensor) -> Tensor:
        r""":math:`a^* = (D_q + \lambda I)^{-1}(\mathbb E_p\Phi - \mathbb E_q\Phi)`."""
        self.validate(x)
        return self._critic(x)

    def _critic(self, x: Tensor) -> Tensor:
        x = x.detach()
        with torch.no_grad():
            delta = self.mean_p - self._phi(x).mean(0)
        d = self._gram(x).detach()
        d = d + self.lam * torch.eye(d.shape[0], dtype=d.dtype, device=d.device)
        # D + lam I is symmetric positive definite: Cholesky is the stable, cheap solve
        chol = torch.linalg.cholesky(d)
        return torch.cholesky_solve(delta[:, None], chol)[:, 0]

    def first_variation(self, x: Tensor) -> SobolevCritic:
        self.validate(x)
        return SobolevCritic(self.features, self._critic(x))

    def feature_mmd2(self, x: Tensor) -> Tensor:
        r""":math:`\|\mathbb E_p\Phi - \mathbb E_q\Phi\|^2`, the MMD^2 of the feature kernel."""
        self.validate(x)
        with torch.no_grad():
            return (self.mean_p - self._phi(x).mean(0)).pow(2).sum()
