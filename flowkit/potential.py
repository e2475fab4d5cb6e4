"""Potentials: the first variations that gradient layers follow.

A :class:`Potential` is a scalar field ``psi : (B, *event) -> (B,)`` on the sample space.
In flowkit it is always the first variation ``dL/dmu`` of the objective being
*minimized*, so a particle moves along ``-grad psi``. The paper's critic ``f`` enters with
the opposite sign, ``psi = -f`` (Nitanda & Suzuki 2018, eq. (1)).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = ["Potential", "FunctionPotential"]


class Potential(nn.Module):
    """A differentiable scalar field ``psi(x)`` with its spatial gradient.

    Subclasses implement :meth:`forward`. :meth:`grad` defaults to autograd; closed forms
    override it where they are cheaper. A potential is an ``nn.Module`` so that the data it
    holds (critic weights, particle snapshots) moves with ``.to()`` and is saved with the
    layer stack.

    Attributes
    ----------
    lipschitz_grad : float or None
        A guaranteed upper bound on the Lipschitz constant of ``grad psi`` when the
        potential knows one (used by :mod:`flowkit.theory`), else ``None``.
    """

    lipschitz_grad: float | None = None

    def forward(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def grad(self, x: Tensor, *, create_graph: bool = False) -> Tensor:
        r"""Spatial gradient ``grad psi(x)``, same shape as ``x``.

        By default :meth:`forward` is differentiated on a detached copy of ``x``, so the
        result carries no graph back to the caller's tensors. With ``create_graph=True`` the
        result stays differentiable in ``x`` and in whatever ``x`` was computed from: this is
        how a loss on a generator with inserted layers reaches the generator's parameters,
        :math:`\nabla_{w_2} = E[J_{w_2} g_2(z)^\top \nabla_{z'} f(g_1(g_2(z)))]` and beyond
        (Nitanda & Suzuki 2018, eq. (2)). Closed-form overrides must honour the flag.
        """
        with torch.enable_grad():
            z = x if create_graph and x.requires_grad else x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.forward(z).sum(), z, create_graph=create_graph)
        return g

    def hvp(self, x: Tensor, v: Tensor) -> Tensor:
        """Hessian-vector product ``(Hess psi)(x_i) v_i`` for each sample, by double backward."""
        with torch.enable_grad():
            z = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.forward(z).sum(), z, create_graph=True)
            (hv,) = torch.autograd.grad((g * v).sum(), z)
        return hv


class FunctionPotential(Potential):
    """Wrap a plain function ``fn: (B, *event) -> (B,)`` as a :class:`Potential`.

    Handy for analytic fields and for the "write a divergence in 20 lines" path: return a
    ``FunctionPotential`` from ``first_variation`` and autograd supplies the gradient.
    """

    def __init__(
        self,
        fn: Callable[[Tensor], Tensor],
        grad_fn: Callable[[Tensor], Tensor] | None = None,
        lipschitz_grad: float | None = None,
    ):
        super().__init__()
        self.fn = fn
        self.grad_fn = grad_fn
        self.lipschitz_grad = lipschitz_grad

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)

    def grad(self, x: Tensor, *, create_graph: bool = False) -> Tensor:
        if self.grad_fn is not None:
            return self.grad_fn(x)  # the caller's closed form, differentiable if written in torch
        return super().grad(x, create_graph=create_graph)
