r"""Distillation: a compact parametric generator that reproduces ``stack o g``.

Algorithm 2 of Nitanda & Suzuki (2018) [NS18] pushes every sample through all :math:`T`
gradient layers, so generating costs time and memory linear in :math:`T` (each layer holds
a copy of the critic); the paper names this its own caveat (sec. 8). :func:`distill` trains
a fixed-size network :math:`s_\theta` to imitate the teacher
:math:`x = h(\text{stack}(g(z)))` on fresh latents, by regression on the pairs
:math:`(z, x)`,

.. math:: \min_\theta\; \mathbb E_z \|s_\theta(z) - h(\text{stack}(g(z)))\|^2
    \;+\; \gamma\, \mathrm{MMD}^2_k\big(s_\theta\sharp\mu_z,\; (h\circ\text{stack}\circ g)
    \sharp\mu_z\big),

the optional MMD term (:func:`flowkit.kernels.mmd2`, weight :math:`\gamma`) matching the
distributions rather than the individual samples. Fresh latents every step: the student
never sees the same pair twice, so it cannot overfit a finite sample of the teacher.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from flowkit.kernels import Kernel, mmd2
from flowkit.validation import as_generator, check_int, check_nonnegative, check_positive

__all__ = ["distill", "DistillResult", "teacher_map"]

LatentSampler = Callable[[int, torch.Generator], Tensor]


class _Teacher(nn.Module):
    def __init__(self, stack: nn.Module, generator: nn.Module | Callable | None,
                 output_map: Callable[[Tensor], Tensor] | None):
        super().__init__()
        self.stack, self.generator, self.output_map = stack, generator, output_map

    def forward(self, z: Tensor) -> Tensor:
        x = z if self.generator is None else self.generator(z)
        x = self.stack(x)
        return x if self.output_map is None else self.output_map(x)


def teacher_map(stack: nn.Module, generator: nn.Module | Callable | None = None,
                output_map: Callable[[Tensor], Tensor] | None = None) -> nn.Module:
    """``z -> output_map(stack(generator(z)))`` (``None`` parts are the identity)."""
    if not callable(stack):
        raise TypeError(f"stack must be callable (a GradientLayerStack), got "
                        f"{type(stack).__name__}")
    for value, name in ((generator, "generator"), (output_map, "output_map")):
        if value is not None and not callable(value):
            raise TypeError(f"{name} must be callable or None, got {type(value).__name__}")
    return _Teacher(stack, generator, output_map)


@dataclass
class DistillResult:
    """The trained student and its training curve.

    ``losses`` holds the total loss of every step, ``mse`` the regression term on the
    ``eval_latents`` at the end (the fidelity to the teacher, per sample, summed over the
    event's entries).
    """

    student: nn.Module
    losses: list[float] = field(default_factory=list)
    mse: float = float("nan")


def distill(stack: nn.Module, student: nn.Module, latents: LatentSampler, *,
            generator: nn.Module | Callable | None = None,
            output_map: Callable[[Tensor], Tensor] | None = None, steps: int = 2000,
            batch_size: int = 256, lr: float = 1e-3, mmd_weight: float = 0.0,
            kernel: Kernel | None = None, eval_latents: Tensor | None = None,
            optimizer: Callable[[list[Tensor]], torch.optim.Optimizer] | None = None,
            seed: int | torch.Generator = 0) -> DistillResult:
    r"""Train ``student`` (in place, Adam) to reproduce ``output_map(stack(generator(z)))``.

    Parameters
    ----------
    stack : nn.Module
        The gradient layers (a :class:`flowkit.GradientLayerStack`), kept frozen.
    student : nn.Module
        Latents ``(B, *latent)`` to samples ``(B, *event)``; e.g. a copy of ``generator``
        (warm start) or any smaller net. Trained in place and returned.
    latents : callable
        ``(n, torch.Generator) -> (n, *latent)`` fresh latents (e.g.
        :func:`flowkit.objectives.adversarial.gaussian_base`).
    generator, output_map : callable, optional
        The parametric generator below the layers and the map above them (``torch.tanh``
        for the paper's top insertion); ``None`` is the identity (``g = id`` in the toys).
    steps, batch_size, lr : int, int, float
        Adam steps, latents per step, learning rate.
    mmd_weight : float
        :math:`\gamma` of the MMD term (0: pure regression).
    kernel : Kernel, optional
        Kernel of the MMD term; required when ``mmd_weight > 0``.
    eval_latents : Tensor, optional
        Latents of the final fidelity ``mse`` (default: ``batch_size`` fresh ones).
    optimizer : callable, optional
        ``params -> torch.optim.Optimizer`` (default ``Adam(params, lr)``); it is stepped
        with a closure, so ``torch.optim.LBFGS`` works too.
    seed : int or torch.Generator
        Source of the latents.

    Returns
    -------
    DistillResult
    """
    if not isinstance(student, nn.Module):
        raise TypeError(f"student must be a torch.nn.Module, got {type(student).__name__}")
    if not callable(latents):
        raise TypeError(f"latents must be callable (n, generator) -> Tensor, got "
                        f"{type(latents).__name__}")
    steps = check_int(steps, "steps", 0)
    batch_size = check_int(batch_size, "batch_size", 2)
    lr = check_positive(lr, "lr")
    mmd_weight = check_nonnegative(mmd_weight, "mmd_weight")
    if mmd_weight > 0 and not isinstance(kernel, Kernel):
        raise ValueError("kernel must be a flowkit.kernels.Kernel when mmd_weight > 0")
    teacher = teacher_map(stack, generator, output_map)
    params = [p for p in student.parameters() if p.requires_grad]
    if not params:
        raise ValueError("student has no trainable parameters")
    g = as_generator(seed, params[0].device)
    opt = torch.optim.Adam(params, lr=lr) if optimizer is None else optimizer(params)
    result = DistillResult(student)
    losses = torch.zeros(steps, dtype=torch.float64, device=params[0].device)
    student.train()
    for i in range(steps):
        z = latents(batch_size, g)
        target = _teacher_forward(teacher, z)

        def closure(z: Tensor = z, target: Tensor = target) -> Tensor:
            out = student(z)
            loss = (out - target).flatten(1).square().sum(1).mean()
            if mmd_weight > 0:
                loss = loss + mmd_weight * mmd2(out.flatten(1), target.flatten(1), kernel,
                                                backend="torch")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            return loss

        losses[i] = opt.step(closure).detach()  # no device synchronisation inside the loop
    result.losses = losses.tolist()
    student.eval()
    z = latents(batch_size, g) if eval_latents is None else eval_latents
    with torch.no_grad():
        target = _teacher_forward(teacher, z)
        result.mse = float((student(z) - target).flatten(1).square().sum(1).mean())
    return result


def _teacher_forward(teacher: nn.Module, z: Tensor) -> Tensor:
    # Under no_grad the layers still differentiate their potentials in the input (on a
    # detached copy), and no graph reaches the teacher's generator or the student.
    gen = teacher.generator
    was = gen.training if isinstance(gen, nn.Module) else False
    if was:
        gen.eval()  # batch norm on its running statistics, as when sampling
    try:
        with torch.no_grad():
            return teacher(z)
    finally:
        if was:
            gen.train()
