r"""The parametric kernelized MMD flow of a generator ([MN21], a *reconstruction*).

Mroueh & Nguyen (AISTATS 2021) [MN21] describe a "parametric kernelized gradient flow" that
mimics gradient-regularised MMD GAN training; only their abstract was retrievable, so this
module implements a reconstruction from that abstract and the Sobolev-descent lineage
[MrouehEtAl19], not a verified transcription of the paper. For a generator :math:`g_\theta` with
latent :math:`z` and the operator :math:`B_\theta: \mathbb R^P \to \mathcal H`,
:math:`B_\theta v = \mathbb E_z[\nabla_1 k(g_\theta(z), \cdot)^\top J_\theta(z) v]`, the
update is the natural-gradient step

.. math::
    \theta \leftarrow \theta - \eta\,(\lambda I + G_\theta)^{-1}
        \nabla_\theta \tfrac12 \mathrm{MMD}^2(p, q_\theta), \qquad
    G_\theta = B_\theta^\top B_\theta, \quad
    (G_\theta)_{ij} = \mathbb E_{z,z'}\big[\partial_{\theta_i} g(z)^\top
        \nabla_1\nabla_2 k(g(z), g(z'))\, \partial_{\theta_j} g(z')\big]

(the natural-gradient reading of [MN21]'s abstract). Because
:math:`\lambda I + G_\theta \succ 0`, it always descends:
:math:`\frac{d}{dt}\frac12\mathrm{MMD}^2 = -\nabla^\top(\lambda I + G_\theta)^{-1}\nabla \le 0`.

The solve never forms a ``P x P`` matrix: conjugate gradients run on the matrix-vector
product :math:`v \mapsto \lambda v + J^\top H J v / n^2`, with :math:`Jv` a forward-mode
Jacobian-vector product (``torch.func.jvp``), :math:`J^\top c` a reverse-mode one
(``torch.func.vjp``), and :math:`(Hu)_j = \sum_i \nabla_1\nabla_2 k(x_j, x_i) u_i` one
backward pass through the blocked kernel-gradient sum
(:func:`flowkit.kernels.kernel_grad_sum`). ``solver="direct"`` builds :math:`G_\theta`
column by column and solves it densely (small ``P`` only, as a check);
``solver="none"`` is plain gradient descent on :math:`\frac12\mathrm{MMD}^2`, the baseline.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, jvp, vjp

from flowkit._compat import LegacyMapping, deprecated_module_attribute
from flowkit.descent import FlowDivergedError
from flowkit.kernels import Kernel, kernel_grad_sum, mmd2
from flowkit.objectives.mmd import MMD
from flowkit.validation import (
    as_generator,
    check_choice,
    check_finite,
    check_int,
    check_number,
    check_particles,
    check_positive,
    check_seed,
)

__all__ = ["ParametricKernelizedFlow", "KernelizedFlowResult", "cg_solve"]

SOLVERS = ("cg", "direct", "none")


def cg_solve(matvec: Callable[[Tensor], Tensor], b: Tensor, *, max_iter: int = 50, tol: float = 1e-6
                       ) -> tuple[Tensor, int, Tensor]:
    r"""Solve :math:`A s = b` for symmetric positive definite ``A`` given by ``matvec``.

    The linear solve of conjugate gradients (not the optimizer
    :class:`flowkit.games.ConjugateGradient`); the former name ``conjugate_gradient`` is a
    deprecated alias.

    Hestenes & Stiefel (1952); stops when :math:`\|r\| \le` ``tol`` :math:`\|b\|`. Returns
    ``(s, iterations, relative residual)``; the residual check synchronises once per
    iteration (the loop is over CG iterations, not over particles).
    """
    max_iter = check_int(max_iter, "max_iter")
    check_number(tol, "tol", minimum=0.0)
    if not isinstance(b, Tensor) or b.dim() != 1 or not b.is_floating_point():
        got = tuple(b.shape) if isinstance(b, Tensor) else type(b).__name__
        raise ValueError(f"b must be a vector (P,) of floats, got {got}")
    check_finite(b, "b")
    s = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rr = r @ r
    bnorm = b.norm()
    target = (tol * bnorm) ** 2
    it = 0
    while it < max_iter and bool(rr > target):
        ap = matvec(p)
        alpha = rr / (p @ ap)
        s = s + alpha * p
        r = r - alpha * ap
        rr_new = r @ r
        p = r + (rr_new / rr) * p
        rr = rr_new
        it += 1
    return s, it, rr.sqrt() / bnorm.clamp_min(torch.finfo(b.dtype).tiny)


class ParametricKernelizedFlow:
    r"""Train a generator by the parametric kernelized MMD flow (module docstring).

    Parameters
    ----------
    generator : nn.Module
        :math:`g_\theta: (n, \text{latent}) \to (n, *event)`; its parameters are updated in
        place.
    data : Tensor
        Target sample ``(M, *event)`` (:math:`p`).
    kernel : Kernel
        A smooth radial kernel (finite ``hessian_bound``; the Laplacian and energy kernels
        have no cross Hessian at coincident points).
    step_size : float
        :math:`\eta`.
    lam : float
        :math:`\lambda > 0`; large :math:`\lambda` tends to gradient descent with step
        :math:`\eta/\lambda`.
    latent_dim : int, optional
        Dimension of :math:`z \sim \mathcal N(0, I)`; default ``generator.in_features``.
    batch_size : int
        Latent samples ``n`` per step (:math:`\mathbb E_z` is their mean).
    latent : Tensor, optional
        A fixed latent batch used at every step instead of fresh draws (deterministic).
    solver : {"cg", "direct", "none"}
        Conjugate gradients, dense solve (``P <= max_direct``), or plain gradient descent.
    cg_iters, cg_tol : int, float
        CG's iteration cap and relative residual tolerance.
    max_direct : int
        Largest ``P`` the dense solve accepts.
    seed : int or torch.Generator
        Source of the latent draws.

    Examples
    --------
    >>> import torch, flowkit as fk
    >>> gen = fk.nn.MLP(2, 2, hidden=16, depth=2, generator=torch.Generator().manual_seed(0))
    >>> flow = fk.generators.ParametricKernelizedFlow(
    ...     gen, fk.datasets.eight_gaussians(200), fk.kernels.Gaussian(0.5),
    ...     step_size=0.5, lam=1e-2, batch_size=64)
    >>> sorted(flow.step())
    ['cg_iters', 'cg_residual', 'mmd2']
    """

    def __init__(self, generator: nn.Module, data: Tensor, kernel: Kernel, step_size: float,
                 lam: float, *, latent_dim: int | None = None, batch_size: int = 256,
                 latent: Tensor | None = None, solver: str = "cg", cg_iters: int = 50,
                 cg_tol: float = 1e-6, max_direct: int = 2000,
                 seed: int | torch.Generator = 0):
        if not isinstance(generator, nn.Module):
            raise TypeError(f"generator must be a torch.nn.Module, got {type(generator).__name__}")
        self.generator = generator
        self.data = check_particles(data, "data")
        if not isinstance(kernel, Kernel):
            raise TypeError(f"kernel must be a flowkit.kernels.Kernel, got {type(kernel).__name__}")
        if kernel.singular_at_zero:
            raise ValueError(f"kernel {kernel!r} is not twice differentiable at zero distance; "
                             "use a smooth kernel (Gaussian, InverseMultiquadric)")
        self.kernel = kernel
        self.step_size = check_positive(step_size, "step_size")
        self.lam = check_positive(lam, "lam")
        self.solver = check_choice(solver, "solver", SOLVERS)
        self.cg_iters = check_int(cg_iters, "cg_iters")
        self.cg_tol = check_number(cg_tol, "cg_tol", minimum=0.0)
        self.max_direct = check_int(max_direct, "max_direct")
        self.names = [n for n, p in generator.named_parameters() if p.requires_grad]
        if not self.names:
            raise ValueError("generator has no trainable parameters")
        self.n_params = sum(p.numel() for n, p in generator.named_parameters()
                            if p.requires_grad)
        if solver == "direct" and self.n_params > max_direct:
            raise ValueError(f"solver='direct' forms a {self.n_params} x {self.n_params} matrix;"
                             f" use solver='cg' (or raise max_direct above {self.n_params})")
        in_features = getattr(generator, "in_features", None)
        if latent_dim is not None:
            check_int(latent_dim, "latent_dim")
            if isinstance(in_features, int) and latent_dim != in_features:
                raise ValueError(f"latent_dim={latent_dim} but the generator takes "
                                 f"in_features={in_features}")
        self.latent_dim = latent_dim if latent_dim is not None else in_features
        if latent is not None:
            check_particles(latent, "latent")
            width = self.latent_dim if isinstance(self.latent_dim, int) else None
            if latent.dim() != 2 or (width is not None and latent.shape[1] != width):
                raise ValueError(f"latent must have shape (n, {width or 'latent_dim'}), got "
                                 f"{tuple(latent.shape)}")
        self.latent = latent
        if latent is None and not isinstance(self.latent_dim, int):
            raise ValueError("pass latent_dim (the generator has no in_features attribute)")
        self.batch_size = check_int(batch_size, "batch_size")
        self._seed = check_seed(seed)
        self._gen: torch.Generator | None = seed if isinstance(seed, torch.Generator) else None
        self._objective = MMD(self.data, kernel, backend="torch")
        self.steps_taken = 0

    # ------------------------------------------------------------------ pieces
    def _params(self) -> dict[str, Tensor]:
        return {n: p.detach() for n, p in self.generator.named_parameters() if n in self.names}

    def _latent(self) -> Tensor:
        if self.latent is not None:
            return self.latent
        ref = self.data
        if self._gen is None:
            self._gen = as_generator(self._seed, ref.device)
        return torch.randn(self.batch_size, self.latent_dim, generator=self._gen,
                           device=ref.device, dtype=ref.dtype)

    def sample(self, n: int, seed: int | torch.Generator = 0) -> Tensor:
        """``n`` generated samples from a seeded latent draw (no gradient)."""
        n = check_int(n, "n")
        g = as_generator(seed, self.data.device)
        z = torch.randn(n, self.latent_dim, generator=g, device=self.data.device,
                        dtype=self.data.dtype)
        with torch.no_grad():
            return self.generator(z)

    def _cross_hessian(self, x: Tensor, u: Tensor) -> Tensor:
        r"""``(H u)_j / n = (1/n) sum_i grad_1 grad_2 k(x_j, x_i) u_i`` by one backward pass.

        ``q(x') = (1/n) sum_ij u_i . grad_1 k(x_i, x'_j)`` has
        :math:`\partial q/\partial x'_j = \frac1n\sum_i \nabla_1\nabla_2 k(x_i, x'_j)^\top u_i`,
        which is the product above because a symmetric kernel's cross Hessian satisfies
        :math:`\nabla_1\nabla_2 k(x, y)^\top = \nabla_1\nabla_2 k(y, x)`.
        """
        with torch.enable_grad():
            xp = x.detach().requires_grad_(True)
            g = kernel_grad_sum(x.detach(), xp, self.kernel, backend="torch")
            (h,) = torch.autograd.grad((g * u).sum(), xp)
        return h

    def _flat(self, tree: dict[str, Tensor]) -> Tensor:
        return torch.cat([tree[n].reshape(-1) for n in self.names])

    def _unflat(self, v: Tensor, like: dict[str, Tensor]) -> dict[str, Tensor]:
        out, i = {}, 0
        for n in self.names:
            k = like[n].numel()
            out[n] = v[i:i + k].view_as(like[n])
            i += k
        return out

    def _operators(self, z: Tensor):
        params = self._params()

        def f(p: dict[str, Tensor]) -> Tensor:
            return functional_call(self.generator, p, (z,)).flatten(1)

        x, vjp_fn = vjp(f, params)
        n = x.shape[0]
        if x.shape[1] != self.data[0].numel():
            raise ValueError(f"generator maps latents {tuple(z.shape)} to events of "
                             f"{x.shape[1]} entries, but data has events of shape "
                             f"{tuple(self.data.shape[1:])}")
        if not bool(torch.isfinite(x).all()):  # the step synchronises anyway (CG, mmd2)
            raise FlowDivergedError(self.steps_taken, "the generator's samples are non-finite "
                                    f"(NaN or inf) at step {self.steps_taken}; lower "
                                    "step_size or raise lam")

        def gram_matvec(v: Tensor) -> Tensor:
            u = jvp(f, (params,), (self._unflat(v, params),))[1]
            return self._flat(vjp_fn(self._cross_hessian(x, u) / n)[0])

        # d(1/2 MMD^2)/dx_i = functional gradient / (2 n)  (flowkit's L2(mu) convention)
        c = self._objective.functional_gradient(x.detach()) / (2 * n)
        grad = self._flat(vjp_fn(c)[0])
        return x, params, grad, gram_matvec

    def natural_direction(self, z: Tensor | None = None, solver: str | None = None
                          ) -> tuple[Tensor, dict[str, Any]]:
        r"""The direction :math:`(\lambda I + G_\theta)^{-1}\nabla_\theta\frac12\mathrm{MMD}^2`
        (flattened), with solver statistics; ``solver`` overrides the instance's."""
        solver = self.solver if solver is None else check_choice(solver, "solver", SOLVERS)
        z = self._latent() if z is None else z
        x, params, grad, gram_matvec = self._operators(z)
        info: dict[str, Any] = {"cg_iters": 0, "cg_residual": 0.0}
        if solver == "none":
            return grad, info
        if solver == "direct":
            if self.n_params > self.max_direct:
                raise ValueError(f"solver='direct' forms a {self.n_params}^2 matrix; use 'cg'")
            eye = torch.eye(self.n_params, dtype=grad.dtype, device=grad.device)
            gram = torch.stack([gram_matvec(e) for e in eye], 1)
            gram = 0.5 * (gram + gram.T)  # symmetric up to rounding
            return torch.linalg.solve(self.lam * eye + gram, grad), info
        s, it, res = cg_solve(lambda v: self.lam * v + gram_matvec(v), grad,
                                        max_iter=self.cg_iters, tol=self.cg_tol)
        info.update(cg_iters=it, cg_residual=float(res))
        return s, info

    # ------------------------------------------------------------------ training
    def step(self) -> dict[str, Any]:
        """One update; returns ``mmd2`` (before the step, on this step's latent batch),
        ``cg_iters`` and ``cg_residual``."""
        z = self._latent()
        s, info = self.natural_direction(z)
        with torch.no_grad():
            x = self.generator(z).flatten(1)
            info["mmd2"] = float(mmd2(x, self.data.flatten(1), self.kernel))
            params = dict(self.generator.named_parameters())
            for n, d in self._unflat(s, self._params()).items():
                params[n].sub_(self.step_size * d)
        self.steps_taken += 1
        return info

    def run(self, n_steps: int, *,
            callback: Callable[[int, dict[str, Any]], None] | None = None
            ) -> KernelizedFlowResult:
        """``n_steps`` updates; ``callback(k, info)`` after each (``info`` as :meth:`step`).

        Returns the per-step metrics and timings; a step whose generated samples are
        non-finite stops the run with :class:`flowkit.FlowDivergedError`.
        """
        check_int(n_steps, "n_steps", 0)
        result = KernelizedFlowResult()
        start = time.perf_counter()
        for k in range(n_steps):
            t0 = time.perf_counter()
            info = self.step()  # synchronises (CG's residual test, the float MMD^2)
            result.seconds.append(time.perf_counter() - t0)
            result.step.append(k)
            result.mmd2.append(info["mmd2"])
            result.cg_iters.append(info["cg_iters"])
            result.cg_residual.append(info["cg_residual"])
            if callback is not None:
                callback(k, info)
        result.wall_time = time.perf_counter() - start
        return result


@dataclass(eq=False)
class KernelizedFlowResult(LegacyMapping):
    r"""Per-step record of :meth:`ParametricKernelizedFlow.run`.

    Attributes
    ----------
    step : list of int
        Step index ``k`` (0-based).
    mmd2 : list of float
        :math:`\mathrm{MMD}^2` before the step, on that step's latent batch.
    cg_iters : list of int
        CG iterations of the step's solve (0 for ``solver="direct"`` or ``"none"``).
    cg_residual : list of float
        CG's final relative residual.
    seconds : list of float
        Wall time of each step (each one synchronises with the device).
    wall_time : float
        Seconds of the whole call, callbacks included.

    ``result["mmd2"]``, the dictionary this method returned before, still works for one
    release (deprecated); :meth:`as_dict` gives that dictionary.
    """

    step: list[int] = field(default_factory=list)
    mmd2: list[float] = field(default_factory=list)
    cg_iters: list[int] = field(default_factory=list)
    cg_residual: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    wall_time: float = 0.0

    def as_dict(self) -> dict[str, list]:
        """``{"step", "mmd2", "cg_iters", "cg_residual"}``, the former return value."""
        return {"step": self.step, "mmd2": self.mmd2, "cg_iters": self.cg_iters,
                "cg_residual": self.cg_residual}

_DEPRECATED = {"conjugate_gradient": ("cg_solve", cg_solve)}


def __getattr__(name: str) -> Any:
    return deprecated_module_attribute(__name__, name, _DEPRECATED)
