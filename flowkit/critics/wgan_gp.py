r"""The WGAN-GP critic of Algorithm 1, fitted and snapshotted at every outer step.

Nitanda & Suzuki (2018), Algorithm 1, inner loop: starting from the previous parameters
:math:`\tau \leftarrow \tau_k`, repeat :math:`T_0` times

.. math::
    v = \nabla_\tau \frac1b \sum_{i=1}^b \big[f_\tau(z_i) - f_\tau(x_i)
        + \lambda R_{f_\tau}(\tilde x_i)\big], \qquad \tau \leftarrow \mathcal A(\tau, v),

with :math:`x_i` data, :math:`z_i` current generated samples, :math:`\tilde x_i` penalty
points (:mod:`flowkit.critics.penalties`) and :math:`\mathcal A` one Adam step. The fitted
critic is then frozen as the potential :math:`\psi_{k+1} = -f_{\tau_{k+1}}` of the next
gradient layer (flowkit's sign convention: a layer moves particles along
:math:`-\nabla\psi`).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from flowkit._compat import MISSING, renamed_keyword
from flowkit.critics.base import Critic, check_network_input
from flowkit.critics.penalties import (
    check_penalty_kind,
    penalty_and_gradient,
    penalty_from_gradients,
    penalty_points,
)
from flowkit.nn import DERIVATIVES, MLP
from flowkit.potential import Potential
from flowkit.validation import check_int, check_number

__all__ = ["WGANGPCritic", "CriticPotential", "critic_values"]

#: Activations whose derivative is piecewise constant: the penalty's input gradient is then
#: linear in each weight matrix, which is what the explicit backward of the step relies on.
PIECEWISE_LINEAR = ("relu", "leaky_relu")


def critic_values(net: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """``net(x)`` as a ``(B,)`` tensor; a ``(B, 1)`` output is accepted and flattened."""
    out = net(x)
    if isinstance(out, Tensor) and out.dim() == 2 and out.shape[1] == 1:
        out = out.squeeze(1)
    if not isinstance(out, Tensor) or out.shape != x.shape[:1]:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"the critic net must map (B, *event) to (B,), got output {got} for "
                         f"input {tuple(x.shape)}")
    return out


class CriticPotential(Potential):
    r"""A frozen critic snapshot as a potential, :math:`\psi = -f_\tau`.

    The layer built from it, :math:`x - \eta\nabla\psi(x) = x + \eta \nabla f_\tau(x)`, is the
    gradient layer :math:`G^{\tau}_\eta` of Nitanda & Suzuki (2018, eq. (1)). The network is
    the caller's to own: :meth:`WGANGPCritic.snapshot` passes a deep copy with
    ``requires_grad=False``, so later training never changes an earlier layer.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        check_network_input(self.net, x, "x")
        return -critic_values(self.net, x)

    def grad(self, x: Tensor, *, create_graph: bool = False) -> Tensor:
        check_network_input(self.net, x, "x")  # before autograd touches it
        return super().grad(x, create_graph=create_graph)


class WGANGPCritic(Critic):
    r"""A WGAN-GP critic trained with Adam, warm-started across calls to :meth:`fit`.

    Each :meth:`fit` runs the inner loop of Nitanda & Suzuki (2018), Algorithm 1 (formula in
    the module docstring) for ``steps`` Adam steps from the current parameters, then returns
    a frozen :class:`CriticPotential` snapshot :math:`\psi = -f`. Adam's moment estimates
    are kept across fits too, i.e. the optimiser is never reset: the paper only says
    :math:`\tau \leftarrow \tau_k`, and a reset would restart Adam's bias correction at every
    outer step.

    Parameters
    ----------
    dim : int
        Number of entries of one event (``prod(event_shape)``) for the default :class:`MLP`.
    hidden, depth : int
        Width and number of linear layers of the default MLP (paper: 128 or 512, 4).
    penalty : {"one-sided", "two-sided", "dragan"}
        Gradient penalty ``R`` (:mod:`flowkit.critics.penalties`).
    penalty_weight : float
        Penalty weight :math:`\lambda` (``lam=`` is a deprecated alias).
    lr, betas : float, (float, float)
        Adam's :math:`\alpha` and :math:`(\beta_1, \beta_2)`.
    batch_size : int
        Minibatch size ``b`` (for both data and generated samples).
    steps : int
        Default number of Adam steps :math:`T_0` per :meth:`fit`.
    net : nn.Module, optional
        Any module mapping ``(B, *event) -> (B,)`` (or ``(B, 1)``); replaces the default MLP.
        It is trained in place. Layers whose output depends on the rest of the batch
        (BatchNorm) are not suitable: the loss evaluates the critic once on the
        concatenated batch ``[fake, real, penalty points]``. A net with a method
        ``values_and_input_gradients(x, points)`` (like :meth:`MLP.values_and_input_gradients`)
        supplies the penalty's input gradients itself; otherwise autograd's double backward
        does.
    seed : int or torch.Generator
        Source of all randomness: the default MLP's initial weights, minibatch indices and
        penalty points. A generator must live on the device of the data.
    activation : str
        Hidden activation of the default MLP (``"relu"`` as in the WGAN-GP toy critic).
    perturbation : float, optional
        DRAGAN noise scale (see :func:`flowkit.critics.penalties.penalty_points`).
    explicit_backward : bool
        Compute the whole step's parameter gradient in closed form
        (:func:`penalized_loss_gradients`) instead of autograd's backward pass: one matrix
        product per layer for the weight gradients of the critic values and the penalty
        together, and the penalty back-propagated only through the penalty points where it
        is active (``|grad f| > 1`` for the one-sided penalty, about a third of them in the
        toy experiment). The default MLP with ``"relu"`` or ``"leaky_relu"`` only. The
        gradient is the same up to floating-point rounding (a different summation order),
        so a run is statistically, not bitwise, the same as without it.

    Attributes
    ----------
    last_losses : Tensor or None
        Critic loss at each step of the latest fit, kept on the device (no synchronisation
        during training).
    total_steps : int
        Adam steps taken so far.

    See Also
    --------
    flowkit.critics.MMDCritic
        A gradient-regularised MMD critic, same interface.
    flowkit.critics.Critic
        The interface every critic implements.
    flowkit.critics.gradient_penalty
        The penalty term, on its own.

    Examples
    --------
    >>> import torch, flowkit as fk
    >>> critic = fk.critics.WGANGPCritic(dim=2, hidden=32, steps=5, seed=0)
    >>> psi = critic.fit(torch.randn(100, 2), torch.randn(100, 2) + 1.0)
    >>> psi(torch.zeros(3, 2)).shape
    torch.Size([3])
    """

    def __init__(self, dim: int = 2, hidden: int = 128, depth: int = 4,
                 penalty: str = "one-sided", penalty_weight: float = MISSING,
                 lr: float = 1e-4, betas: tuple[float, float] = (0.5, 0.9),
                 batch_size: int = 50, steps: int = 50, net: nn.Module | None = None,
                 seed: int | torch.Generator = 0, *, activation: str = "relu",
                 perturbation: float | None = None, lam: float = MISSING,
                 explicit_backward: bool = False):
        self.penalty = check_penalty_kind(penalty, "penalty")
        if penalty_weight is MISSING and lam is MISSING:
            penalty_weight = 10.0
        weight, name = renamed_keyword(penalty_weight, lam, "penalty_weight", "lam",
                                       "WGANGPCritic")
        self.penalty_weight = check_number(weight, name, minimum=0.0)
        self._configure_training(lr=lr, betas=betas, batch_size=batch_size, steps=steps,
                                 seed=seed, perturbation=perturbation)
        if net is None:
            net = MLP(check_int(dim, "dim"), None, hidden, depth, activation,
                      generator=self._init_stream())
        elif not isinstance(net, nn.Module):
            raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
        self._attach(net)
        if not isinstance(explicit_backward, bool):
            raise TypeError(f"explicit_backward must be a bool, got {explicit_backward!r}")
        if explicit_backward and not (isinstance(net, MLP) and net.scalar
                                      and net.activation in PIECEWISE_LINEAR):
            raise ValueError("explicit_backward=True needs the default MLP (a scalar output) "
                             f"with activation in {PIECEWISE_LINEAR}, got "
                             f"{type(net).__name__}"
                             + (f" with activation {net.activation!r}"
                                if isinstance(net, MLP) else ""))
        self.explicit_backward = explicit_backward

    # ------------------------------------------------------------------ training
    def _loss(self, real: Tensor, fake: Tensor, g: torch.Generator) -> Tensor:
        # One forward pass over [fake, real] (and x~ without an explicit gradient) instead of
        # separate ones: the per-call overhead of a small MLP dominates on CPU. Penalty
        # points need equal batch sizes.
        net, kind = self.net, self.penalty
        nb = min(len(real), len(fake))
        points = penalty_points(real[:nb], fake[:nb], kind, generator=g,
                                perturbation=self.perturbation)
        share = 1.0
        if self.data_parallel is not None:  # this rank's rows of the global minibatch
            net, (fake, real, points), share = self.data_parallel(fake, real[:nb], points)
        explicit = getattr(net, "values_and_input_gradients", None)
        grad = None
        if (self.explicit_backward and self.penalty_weight > 0 and net is self.net
                and not (fake.requires_grad or real.requires_grad or points.requires_grad)):
            return _ExplicitLoss.apply(self, torch.cat([fake, real]), points, len(fake),
                                       *net.parameters())
        if self.penalty_weight > 0 and callable(explicit):
            out, grad = explicit(torch.cat([fake, real]), points)
            if out.shape != (len(fake) + len(real),) or grad.shape != points.shape:
                raise ValueError("net.values_and_input_gradients(x, points) must return values "
                                 f"({len(fake) + len(real)},) and gradients "
                                 f"{tuple(points.shape)}, got {tuple(out.shape)} and "
                                 f"{tuple(grad.shape)}")
        elif self.penalty_weight > 0:
            points.requires_grad_(True)
            out = critic_values(net, torch.cat([fake, real, points]))
            (grad,) = torch.autograd.grad(out[len(out) - nb:].sum(), points, create_graph=True)
        else:  # the points are still drawn, so the random stream does not depend on lam
            out = critic_values(net, torch.cat([fake, real]))
        loss = out[:len(fake)].mean() - out[len(fake):len(fake) + len(real)].mean()
        if grad is not None:
            loss = loss + self.penalty_weight * penalty_from_gradients(grad, kind).mean()
        return loss if share == 1.0 else share * loss

    def snapshot(self, particles: Tensor | None = None, data: Tensor | None = None
                 ) -> CriticPotential:
        """A frozen deep copy of the current critic as :math:`\\psi = -f` (eval mode).

        ``particles`` and ``data`` are accepted for the common :class:`Critic` signature and
        not needed: :math:`f` alone is the potential.
        """
        net = copy.deepcopy(self.net).eval()
        net.requires_grad_(False)
        return CriticPotential(net)

    @property
    def lam(self) -> float:
        """Deprecated alias of :attr:`penalty_weight`."""
        warnings.warn("WGANGPCritic.lam is deprecated; use .penalty_weight", DeprecationWarning,
                      stacklevel=2)
        return self.penalty_weight

    def critic(self, x: Tensor) -> Tensor:
        """The current (live, trainable) critic values ``f(x)``, shape ``(B,)``."""
        return critic_values(self.net, x)

    def __repr__(self) -> str:
        return (f"WGANGPCritic(penalty={self.penalty!r}, "
                f"penalty_weight={self.penalty_weight}, lr={self.lr}, "
                f"betas={self.betas}, batch_size={self.batch_size}, steps={self.steps}, "
                f"net={type(self.net).__name__})")


def penalized_loss_gradients(net: MLP, x: Tensor, points: Tensor, n_fake: int, kind: str,
                             weight: float) -> tuple[Tensor, list[Tensor]]:
    r"""The WGAN-GP critic loss and its gradient in every parameter, written out by hand.

    For a scalar :class:`~flowkit.nn.MLP` with a piecewise-linear activation
    (:data:`PIECEWISE_LINEAR`), layers :math:`z_l = W_l h_{l-1} + b_l`,
    :math:`h_l = \sigma(z_l)` (:math:`l < L`), :math:`f = W_L h_{L-1} + b_L`, slopes
    :math:`S_l = \operatorname{diag}\sigma'(z_l)`, the loss of one step is

    .. math::
        \ell = \operatorname{mean}_{\text{fake}} f - \operatorname{mean}_{\text{real}} f
            + \frac{\lambda}{n} \sum_{i=1}^n R(g_i), \qquad
        g_i = \nabla_x f(\tilde x_i) = W_1^\top S_1 W_2^\top S_2 \cdots S_{L-1} W_L^\top

    (Nitanda & Suzuki 2018 [NS18], Algorithm 1, inner loop; the penalty of Gulrajani et al.
    2017 [GulrajaniEtAl17]). Since :math:`\sigma'` is piecewise constant, :math:`g_i` is linear in
    each :math:`W_l` and does not depend on the biases, so with :math:`u_l = W_{l+1}^\top
    \cdots` the row vectors of the chain, the gradient of the penalty in :math:`W_l` is
    :math:`u_l^\top v_l` (:math:`v_l` the back-propagated :math:`\partial R / \partial g`),
    and it vanishes for every point with :math:`\partial R / \partial g_i = 0` (the
    one-sided penalty where :math:`|g_i| \le 1`): only the active points are
    back-propagated. The chain :math:`u_l` is the backward recursion of the critic values,
    :math:`\delta_l = (\delta_{l+1} W_{l+1}) S_l`, started from 1 instead of
    :math:`\partial\ell/\partial f`, so one product per layer over the rows
    ``[fake, real, points]`` gives both; :math:`\partial R/\partial g` is in closed form
    (:func:`flowkit.critics.penalties.penalty_and_gradient`). The weight gradient of each
    layer, critic values and penalty together, is one matrix product
    ``cat([delta, u]).T @ cat([h, v])``.

    Parameters
    ----------
    net : MLP
        The critic (``out_features=None``, activation ``"relu"`` or ``"leaky_relu"``).
    x : Tensor
        ``(B, *event)``: the fake samples, then the real ones.
    points : Tensor
        ``(n, *event)``: the penalty points.
    n_fake : int
        How many rows of ``x`` are fake samples.
    kind : str
        The penalty :math:`R` (:func:`flowkit.critics.penalties.penalty_from_gradients`).
    weight : float
        :math:`\lambda`.

    Returns
    -------
    loss : Tensor
        The scalar :math:`\ell` (no autograd graph).
    gradients : list of Tensor
        :math:`\partial\ell/\partial\theta` for each of ``net.parameters()``, in order.
    """
    linears = [m for m in net.body if isinstance(m, nn.Linear)]
    slope_of = DERIVATIVES[net.activation]
    n_x, n = len(x), len(points)
    hidden = range(len(linears) - 1)
    with torch.no_grad():
        h = torch.cat([x, points]).flatten(1)
        inputs, slopes = [], []  # per hidden layer: its input rows, and sigma'(z)
        for layer in hidden:
            inputs.append(h)
            z = F.linear(h, linears[layer].weight, linears[layer].bias)
            slope = slope_of(z)
            slopes.append(slope)
            h = z.mul_(slope)  # sigma(z) for a piecewise-linear sigma
        last = linears[-1]
        values = F.linear(h[:n_x], last.weight, last.bias).squeeze(1)
        # d loss / d f = 1/n_fake, -1/n_real on the rows of x; weight 1 on the points turns
        # the same backward recursion into the input-gradient chain u_l there: one product
        # per layer serves both
        rows = torch.ones(n_x + n, 1, dtype=h.dtype, device=h.device)
        rows[:n_fake] = 1.0 / n_fake
        rows[n_fake:n_x] = -1.0 / (n_x - n_fake)
        deltas, delta = [], rows * last.weight
        for layer in reversed(hidden):
            delta = delta.mul_(slopes[layer])  # delta is this loop's own tensor
            deltas.append(delta)
            delta = delta @ linears[layer].weight
        deltas.reverse()
        penalty, dg = penalty_and_gradient(delta[n_x:], kind)
        dg.mul_(weight / n)
        slopes_p = [s[n_x:] for s in slopes]
        us = [d[n_x:] for d in deltas]
        if dg.device.type == "cpu":  # gathering the active rows would synchronise a GPU
            active = dg.ne(0).any(dim=1).nonzero().squeeze(1)
            if len(active) < n:
                dg, us = dg[active], [u[active] for u in us]
                slopes_p = [s[active] for s in slopes_p]
        # back through the chain g = u_1 W_1, u_l = (u_{l+1} W_{l+1}) * sigma'(z_l)
        vs, v = [], dg
        for layer in hidden:
            vs.append(v)
            v = (v @ linears[layer].weight.T).mul_(slopes_p[layer])
        dout = rows[:n_x, 0]
        grads = [(dout @ h[:n_x] + v.sum(0)).unsqueeze(0), dout.sum().reshape(1)]
        for layer in reversed(hidden):
            delta = deltas[layer][:n_x]
            left = torch.cat([delta, us[layer]])
            w_grad = left.T @ torch.cat([inputs[layer][:n_x], vs[layer]])
            grads = [w_grad, delta.sum(0), *grads]
        loss = values[:n_fake].mean() - values[n_fake:].mean() + weight * penalty.mean()
    # (weight, bias) per linear layer is the order of an MLP's parameters()
    return loss, grads


class _ExplicitLoss(torch.autograd.Function):
    """The step's loss with :func:`penalized_loss_gradients` as its backward pass."""

    @staticmethod
    def forward(ctx, critic: WGANGPCritic, x: Tensor, points: Tensor, n_fake: int,
                *params: Tensor) -> Tensor:
        loss, grads = penalized_loss_gradients(critic.net, x, points, n_fake, critic.penalty,
                                               critic.penalty_weight)
        ctx.grads = grads
        return loss

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple:
        grads, ctx.grads = ctx.grads, None
        if grad_output.device.type != "cpu" or float(grad_output) != 1.0:  # 1: loss.backward()
            grads = [grad_output * g for g in grads]
        return (None, None, None, None, *grads)
