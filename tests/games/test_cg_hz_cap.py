"""The Hager-Zhang rule with the cap where the paper puts it (after) or where its public
code puts it (on HS, before the correction)."""

import pytest
import torch

from flowkit.games import ConjugateGradient, conjugate_beta


def _two_steps(hz_cap: str, g0: torch.Tensor, g1: torch.Tensor) -> float:
    p = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    opt = ConjugateGradient([p], lr=0.1, beta="HZ", hz_cap=hz_cap)
    for g in (g0, g1):
        p.grad = g.clone()
        opt.step()
    return float(opt.state[p]["beta"])


def test_hz_cap_after_is_the_papers_formula_and_code_caps_hs_first():
    g0 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    g1 = torch.tensor([-0.5, 0.5], dtype=torch.float64)  # HS = 2/3 > 1/2, HZ = -4/9
    d0 = -g0
    hs = float(conjugate_beta("HS", g1, g0, d0))
    hz = float(conjugate_beta("HZ", g1, g0, d0))
    correction = hs - hz
    assert hs > 0.5 and correction != 0
    assert _two_steps("after", g0, g1) == pytest.approx(min(hz, 0.5), rel=1e-12)
    assert _two_steps("code", g0, g1) == pytest.approx(min(0.5 - correction, 0.5), rel=1e-12)
    assert _two_steps("after", g0, g1) != pytest.approx(_two_steps("code", g0, g1))


def test_hz_cap_must_be_a_known_placement():
    p = torch.nn.Parameter(torch.zeros(1))
    with pytest.raises(ValueError, match="hz_cap"):
        ConjugateGradient([p], beta="HZ", hz_cap="before-and-after")
