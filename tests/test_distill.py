"""flowkit.distill: a compact generator reproducing ``stack o g``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import flowkit as fk
from flowkit.distill import distill, teacher_map
from flowkit.objectives.adversarial import gaussian_base


def _linear_stack(d: int, etas=(0.3, 0.2, 0.1)) -> fk.GradientLayerStack:
    # psi(x) = x^T A x / 2 with A symmetric: each layer is the linear map I - eta A
    g = torch.Generator().manual_seed(0)
    b = torch.randn(d, d, generator=g, dtype=torch.float64)
    a = (b + b.T) / 4
    psi = fk.FunctionPotential(lambda x: 0.5 * ((x @ a) * x).sum(1))
    return fk.GradientLayerStack([fk.GradientLayer(psi, eta) for eta in etas]), a


def test_linear_stack_into_a_linear_generator_is_exact():
    d_z, d = 3, 4
    stack, a = _linear_stack(d)
    torch.manual_seed(0)
    gen = nn.Linear(d_z, d).double()
    student = nn.Linear(d_z, d).double()
    res = distill(stack, student, gaussian_base(1.0, (d_z,), dtype=torch.float64),
                  generator=gen, steps=1, batch_size=64, seed=1,
                  optimizer=lambda p: torch.optim.LBFGS(p, max_iter=50,
                                                        line_search_fn="strong_wolfe"))
    # the composite is linear: M (W z + c) with M = prod (I - eta A)
    m = torch.eye(d, dtype=torch.float64)
    for eta in (0.3, 0.2, 0.1):
        m = (torch.eye(d, dtype=torch.float64) - eta * a) @ m
    with torch.no_grad():
        torch.testing.assert_close(student.weight, m @ gen.weight, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(student.bias, m @ gen.bias, atol=1e-6, rtol=1e-6)
    assert res.mse < 1e-12


def test_teacher_and_mmd_term():
    stack, _ = _linear_stack(2)
    teacher = teacher_map(stack, None, torch.tanh)
    z = torch.randn(5, 2, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(teacher(z), torch.tanh(stack(z)))
    student = nn.Linear(2, 2).double()
    res = distill(stack, student, gaussian_base(1.0, (2,), dtype=torch.float64), steps=5,
                  mmd_weight=1.0, kernel=fk.kernels.Gaussian(1.0), batch_size=16)
    assert len(res.losses) == 5


def test_bad_inputs():
    stack, _ = _linear_stack(2)
    base = gaussian_base(1.0, (2,))
    with pytest.raises(TypeError, match="student"):
        distill(stack, lambda z: z, base)
    with pytest.raises(TypeError, match="latents"):
        distill(stack, nn.Linear(2, 2), None)
    with pytest.raises(ValueError, match="kernel"):
        distill(stack, nn.Linear(2, 2), base, mmd_weight=1.0)
    with pytest.raises(ValueError, match="steps"):
        distill(stack, nn.Linear(2, 2), base, steps=-1)
    with pytest.raises(TypeError, match="stack"):
        teacher_map(3)
