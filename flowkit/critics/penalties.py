r"""Gradient penalties that keep a WGAN critic close to 1-Lipschitz.

With :math:`\tilde x` a penalty point and :math:`n(\tilde x) = \|\nabla_{\tilde x} f(\tilde x)\|_2`
(the Euclidean norm over all event dimensions), Nitanda & Suzuki (2018, sec. 2 and 3.3) use

.. math::
    R^{\text{two-sided}} = (n(\tilde x) - 1)^2, \qquad
    R^{\text{one-sided}} = \max(n(\tilde x) - 1, 0)^2,
    \qquad \tilde x = \epsilon x + (1 - \epsilon) z, \quad \epsilon \sim U[0, 1],

for a real sample :math:`x` and a generated one :math:`z` (Gulrajani et al. 2017, eq. (3)
for the two-sided form). DRAGAN (Kodali et al. 2017) penalises the two-sided form at
perturbed real samples instead, :math:`\tilde x = x + \delta`,
:math:`\delta \sim \mathcal N(0, \sigma^2 I)`.

The helpers are split so that a training loop can evaluate the critic once on the
concatenated batch ``[fake, real, x~]`` (see :class:`flowkit.critics.WGANGPCritic`) while
:func:`gradient_penalty` stays a one-call reference for any critic.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from flowkit.validation import check_particles

__all__ = [
    "PENALTIES",
    "gradient_penalty",
    "penalty_points",
    "penalty_from_gradients",
    "penalty_and_gradient",
]

PENALTIES = ("one-sided", "two-sided", "dragan")


def check_penalty_kind(kind: object, name: str = "kind") -> str:
    """Return ``kind`` if it names a penalty of :data:`PENALTIES`, else raise."""
    if not isinstance(kind, str) or kind not in PENALTIES:
        raise ValueError(f"{name} must be one of {PENALTIES}, got {kind!r}")
    return kind


def penalty_points(real: Tensor, fake: Tensor | None, kind: str = "one-sided", *,
                   generator: torch.Generator | None = None, eps: Tensor | None = None,
                   perturbation: float | None = None) -> Tensor:
    r"""The points :math:`\tilde x` where the penalty is evaluated, shape of ``real``.

    Parameters
    ----------
    real, fake : Tensor
        Batches ``(B, *event)``; ``fake`` is not used (and may be ``None``) for DRAGAN.
    kind : {"one-sided", "two-sided", "dragan"}
        Interpolates :math:`\epsilon x + (1-\epsilon) z` for the first two, perturbed real
        samples :math:`x + \delta` for ``"dragan"``.
    generator : torch.Generator, optional
        Source of :math:`\epsilon` or :math:`\delta` (on the batch's device).
    eps : Tensor, optional
        Interpolation weights ``(B,)`` to use instead of drawing them.
    perturbation : float, optional
        DRAGAN's noise scale :math:`\sigma`; default ``0.5 * real.std()`` (per batch, so the
        neighbourhood follows the data's scale).
    """
    check_penalty_kind(kind)
    _check_batch(real, "real")
    shape = (real.shape[0],) + (1,) * (real.dim() - 1)
    if kind == "dragan":
        sigma = 0.5 * real.std() if perturbation is None else perturbation
        noise = torch.randn(real.shape, generator=generator, device=real.device, dtype=real.dtype)
        return real + sigma * noise
    _check_batch(fake, "fake")
    if fake.shape != real.shape:
        raise ValueError(f"fake must have the shape of real {tuple(real.shape)}, "
                         f"got {tuple(fake.shape)}")
    if eps is None:
        eps = torch.rand(shape, generator=generator, device=real.device, dtype=real.dtype)
    elif eps.shape not in ((real.shape[0],), shape):
        raise ValueError(f"eps must have shape ({real.shape[0]},), got {tuple(eps.shape)}")
    eps = eps.reshape(shape)
    return eps * real + (1.0 - eps) * fake


def penalty_from_gradients(grad: Tensor, kind: str = "one-sided") -> Tensor:
    r"""Per-sample penalty :math:`R` from critic gradients ``(B, *event)``, shape ``(B,)``.

    ``"one-sided"`` is :math:`\max(n - 1, 0)^2`; ``"two-sided"`` and ``"dragan"`` are
    :math:`(n - 1)^2`, with :math:`n` the Euclidean norm of each sample's gradient.
    """
    check_penalty_kind(kind)
    norm = torch.linalg.vector_norm(grad.flatten(1), dim=1)
    excess = norm - 1.0
    if kind == "one-sided":
        excess = excess.clamp(min=0.0)
    return excess.square()


def penalty_and_gradient(grad: Tensor, kind: str = "one-sided") -> tuple[Tensor, Tensor]:
    r"""Per-sample penalty :math:`R` and its derivative :math:`\partial R / \partial g`.

    With :math:`n = \|g\|_2` and :math:`e = n - 1` (clamped at 0 for ``"one-sided"``),
    :math:`R = e^2` and :math:`\partial R / \partial g = 2 e\, g / n`; at :math:`g = 0` the
    derivative is taken as 0, as autograd's subgradient of the norm does. The closed form
    lets a hand-written backward pass (:func:`flowkit.critics.wgan_gp.penalized_loss_gradients`)
    skip autograd for this small ``(B, *event)`` tensor.

    Returns
    -------
    penalty : Tensor
        ``(B,)``, as :func:`penalty_from_gradients`.
    derivative : Tensor
        ``(B, *event)``, zero for every sample where the penalty is flat (one-sided:
        :math:`n \le 1`).
    """
    check_penalty_kind(kind)
    norm = torch.linalg.vector_norm(grad.flatten(1), dim=1)
    excess = norm - 1.0
    if kind == "one-sided":
        excess = excess.clamp(min=0.0)
    scale = 2.0 * excess / norm.clamp(min=torch.finfo(norm.dtype).tiny)
    scale = scale.reshape((-1,) + (1,) * (grad.dim() - 1))
    return excess.square(), grad * scale


def gradient_penalty(f: Callable[[Tensor], Tensor], real: Tensor, fake: Tensor | None = None,
                     kind: str = "one-sided", generator: torch.Generator | None = None, *,
                     eps: Tensor | None = None, perturbation: float | None = None) -> Tensor:
    r"""Mean gradient penalty :math:`\frac1B \sum_i R_f(\tilde x_i)` of a critic.

    Nitanda & Suzuki (2018), sec. 3.3 (one- and two-sided) and sec. 2 (DRAGAN); the
    formulas are in the module docstring. The graph is kept (``create_graph=True``), so
    the result can be added to a critic loss and back-propagated to ``f``'s parameters.

    Parameters
    ----------
    f : callable
        Critic ``(B, *event) -> (B,)``; any event shape.
    real, fake : Tensor
        Same-shape batches ``(B, *event)``; ``fake`` may be ``None`` for ``"dragan"``.
    kind : {"one-sided", "two-sided", "dragan"}
    generator : torch.Generator, optional
        Draws :math:`\epsilon \sim U[0,1]` (or DRAGAN's noise); ``None`` uses torch's global
        generator.
    eps, perturbation
        See :func:`penalty_points`.

    Returns
    -------
    Tensor
        0-dim tensor.

    Examples
    --------
    A linear critic :math:`f(x) = w^\top x` has :math:`\nabla f = w` everywhere:

    >>> import torch
    >>> w = torch.tensor([3.0, 4.0])
    >>> x, z = torch.randn(4, 2), torch.randn(4, 2)
    >>> float(gradient_penalty(lambda t: t @ w, x, z, kind="two-sided"))  # (5 - 1)^2
    16.0
    """
    if not callable(f):
        raise TypeError(f"f must be callable (B, *event) -> (B,), got {type(f).__name__}")
    for x, name in ((real, "real"), (fake, "fake")):
        if x is not None:  # a public entry point: the values are checked here, once
            check_particles(x, name)
    points = penalty_points(real, fake, kind, generator=generator, eps=eps,
                            perturbation=perturbation)
    with torch.enable_grad():
        points = points.detach().requires_grad_(True)
        out = f(points)
        if not isinstance(out, Tensor) or out.shape != points.shape[:1]:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"f must map (B, *event) to (B,), got output {got} for input "
                             f"{tuple(points.shape)}")
        (grad,) = torch.autograd.grad(out.sum(), points, create_graph=True)
    return penalty_from_gradients(grad, kind).mean()


def _check_batch(x: object, name: str) -> None:
    # Shape and type only: no device synchronisation, since this runs at every critic step.
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, *event), "
                        f"got {type(x).__name__}")
    if x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(f"{name} must have shape (B, *event) with B >= 1, got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
