"""Network building blocks shared by critics, generators and experiments."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from flowkit.validation import check_choice, check_int

__all__ = ["MLP", "ACTIVATIONS", "DERIVATIVES"]

_LEAKY_SLOPE = 0.2
#: The activations :class:`MLP` accepts by name, each a constructor of a fresh module.
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(_LEAKY_SLOPE),
    "softplus": nn.Softplus,
    "elu": nn.ELU,
    "tanh": nn.Tanh,
}


def _positive(z: Tensor) -> Tensor:
    # 1.0 where z > 0, written straight into z's dtype: building a bool mask and converting
    # it afterwards costs several times more on a CPU
    return torch.gt(z, 0, out=torch.empty_like(z))


#: sigma'(z) of each activation, written in differentiable torch ops: the penalty's gradient
#: in the parameters runs through it (second derivatives of smooth activations included).
DERIVATIVES: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": _positive,
    "leaky_relu": lambda z: _positive(z).mul_(1.0 - _LEAKY_SLOPE).add_(_LEAKY_SLOPE),
    "softplus": torch.sigmoid,
    "elu": lambda z: torch.where(z > 0, torch.ones_like(z), torch.exp(z.clamp(max=0.0))),
    "tanh": lambda z: 1.0 - torch.tanh(z).square(),
}


class MLP(nn.Module):
    """A fully connected network on flattened events: ``depth`` linear layers.

    The one MLP of flowkit: the critics' networks and feature maps, the default generators
    and the experiments' networks are all this class.

    ``depth=4`` is the 4-layer critic of the paper's toy experiment
    (``in -> hidden -> hidden -> hidden -> out``). With ``out_features=None`` the output is
    a scalar per sample, shape ``(B,)``, as a critic needs; otherwise ``(B, out_features)``.
    The weights are drawn from ``generator`` with torch's default ``nn.Linear``
    initialisation, so the network depends on the caller's seed only.
    """

    def __init__(self, in_features: int, out_features: int | None = None, hidden: int = 128,
                 depth: int = 4, activation: str = "relu", *,
                 generator: torch.Generator | None = None):
        super().__init__()
        check_int(in_features, "in_features")
        check_int(hidden, "hidden")
        check_int(depth, "depth")
        if out_features is not None:
            check_int(out_features, "out_features")
        check_choice(activation, "activation", sorted(ACTIVATIONS))
        widths = [in_features] + [hidden] * (depth - 1) + [out_features or 1]
        modules: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            linear = nn.Linear(a, b)
            _init_linear(linear, generator)
            modules.append(linear)
            if i < depth - 1:
                modules.append(ACTIVATIONS[activation]())
        self.body = nn.Sequential(*modules)
        self.in_features = in_features
        self.scalar = out_features is None
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        out = self.body(x.flatten(1))
        return out.squeeze(1) if self.scalar else out

    def check_input(self, x: Tensor, name: str) -> None:
        """Raise ``ValueError`` naming ``name`` unless an event of ``x`` has ``in_features``
        entries (metadata only: call it once per fit, not per step)."""
        if x.dim() < 1 or math.prod(x.shape[1:]) != self.in_features:
            raise ValueError(f"{name} has events of shape {tuple(x.shape[1:])} "
                             f"({math.prod(x.shape[1:])} entries) but the network takes "
                             f"in_features={self.in_features}; build it with "
                             f"dim={math.prod(x.shape[1:])}")

    def values_and_input_gradients(self, x: Tensor, points: Tensor) -> tuple[Tensor, Tensor]:
        r"""``f(x)`` and :math:`\nabla f` at ``points``, the gradient written out by hand.

        For :math:`f(x) = w^\top \sigma(z_{L-1}) + c`, :math:`z_l = W_l h_{l-1} + b_l`,
        :math:`h_l = \sigma(z_l)`, :math:`h_0 = x`, the chain rule reads

        .. math::
            \nabla_x f(x) = W_1^\top D_1 W_2^\top D_2 \cdots W_{L-1}^\top D_{L-1} w,
            \qquad D_l = \operatorname{diag} \sigma'(z_l).

        Both outputs are ordinary differentiable expressions of the parameters, so a
        gradient penalty built on them back-propagates in one first-order backward pass.
        ``torch.autograd.grad(..., create_graph=True)`` gives the same numbers but
        differentiates its own backward graph, which also runs over the rows of ``x`` and
        sums weight gradients of mismatched memory layouts; at ``points`` only the
        pre-activations are needed, not :math:`f`. ``benchmarks/toy_alg1.py`` measures the
        difference (a WGAN-GP critic step of width 512: 1.5x to 1.7x on a CPU). Scalar MLPs
        only.

        Parameters
        ----------
        x : Tensor
            ``(B, *event)``: where the values are wanted.
        points : Tensor
            ``(n, *event)``: where the gradients are wanted (the penalty points).

        Returns
        -------
        values : Tensor
            ``(B,)``.
        gradients : Tensor
            ``(n, *event)``, differentiable with respect to the parameters.
        """
        if not self.scalar:
            raise ValueError("values_and_input_gradients needs a scalar MLP (out_features=None)")
        if points.shape[1:] != x.shape[1:]:
            raise ValueError(f"points must have the event shape of x {tuple(x.shape[1:])}, "
                             f"got {tuple(points.shape)}")
        linears = [m for m in self.body if isinstance(m, nn.Linear)]
        activations = [m for m in self.body if not isinstance(m, nn.Linear)]
        derivative = DERIVATIVES[self.activation]
        h, p, slopes = x.flatten(1), points.flatten(1), []
        for linear, activation in zip(linears[:-1], activations):
            h = activation(F.linear(h, linear.weight, linear.bias))
            z = F.linear(p, linear.weight, linear.bias)
            slopes.append(derivative(z))
            p = activation(z)
        values = F.linear(h, linears[-1].weight, linears[-1].bias).squeeze(1)
        grad = linears[-1].weight.expand(len(points), -1)
        for linear, slope in zip(reversed(linears[:-1]), reversed(slopes)):
            grad = (grad * slope) @ linear.weight
        return values, grad.reshape(points.shape)


def _init_linear(linear: nn.Linear, generator: torch.Generator | None) -> None:
    # nn.Linear's own reset_parameters, redrawn from the caller's generator.
    nn.init.kaiming_uniform_(linear.weight, a=math.sqrt(5), generator=generator)
    bound = 1.0 / math.sqrt(linear.in_features)
    nn.init.uniform_(linear.bias, -bound, bound, generator=generator)


