"""Wasserstein monitors against closed forms and POT called directly."""

import numpy as np
import ot
import pytest
import torch

import flowkit as fk
from flowkit.monitors import OTSolverError, wasserstein


def test_translation_gives_the_shift_for_w1_and_w2(gen):
    x = torch.randn(200, 3, generator=gen, dtype=torch.float64)
    shift = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)
    # For a pure translation the identity coupling is optimal: W1 = W2 = ||shift||.
    assert wasserstein(x, x + shift, 2).value == pytest.approx(float(shift.norm()), rel=1e-9)
    assert wasserstein(x, x + shift, 1).value == pytest.approx(float(shift.norm()), rel=1e-9)


def test_one_dimensional_sorted_formula(gen):
    x = torch.randn(150, 1, generator=gen, dtype=torch.float64)
    y = 2 * torch.rand(150, 1, generator=gen, dtype=torch.float64)
    xs, ys = x.sort(0).values, y.sort(0).values
    assert wasserstein(x, y, 1).value == pytest.approx(float((xs - ys).abs().mean()), rel=1e-9)
    assert wasserstein(x, y, 2).value == pytest.approx(
        float((xs - ys).pow(2).mean().sqrt()), rel=1e-9)


def test_matches_pot_called_directly_with_unequal_sizes(gen):
    x = torch.randn(70, 2, generator=gen)
    y = torch.randn(45, 2, generator=gen) + 1
    a, b = np.full(70, 1 / 70), np.full(45, 1 / 45)
    xn, yn = x.double().numpy(), y.double().numpy()
    w2 = np.sqrt(ot.emd2(a, b, ot.dist(xn, yn)))
    w1 = ot.emd2(a, b, ot.dist(xn, yn, metric="euclidean"))
    assert fk.monitors.W2(y)(x)["W2"] == pytest.approx(w2, rel=1e-9)
    assert fk.monitors.W1(y)(x)["W1"] == pytest.approx(w1, rel=1e-9)


def test_the_sliced_estimate_is_reported_as_such(gen):
    x = torch.randn(300, 2, generator=gen)
    out = fk.monitors.W2(x + 1.0, estimator="sliced", n_projections=200)(x)
    assert out["W2_method"] == "sliced(200)"
    # sliced W2 of a translation is ||shift|| * sqrt(E_theta cos^2) = ||shift|| / sqrt(2) in 2-D
    assert out["W2"] == pytest.approx(np.sqrt(2.0) / np.sqrt(2.0), rel=0.1)


def test_unconverged_exact_solve_is_an_error_or_a_flag(gen):
    x = torch.randn(300, 2, generator=gen)
    y = torch.randn(300, 2, generator=gen)
    with pytest.raises(OTSolverError, match="before optimality"):
        wasserstein(x, y, 2, num_iter_max=50)
    est = wasserstein(x, y, 2, num_iter_max=50, on_failure="flag")
    assert est.converged is False
    assert fk.monitors.W2(y, on_failure="flag")(x).get("W2_converged", True) is True


def test_mmd_monitor_and_transform(gen):
    y = torch.randn(40, 2, generator=gen)
    k = fk.kernels.Gaussian(1.0)
    out = fk.monitors.MMD(y, k)(y.clone())
    assert out["MMD"] == pytest.approx(0.0, abs=1e-3)
    z = torch.atanh(torch.tanh(y) * 0.999)
    assert fk.monitors.W2(torch.tanh(y), transform=torch.tanh)(z)["W2"] < 1e-2


def test_bad_arguments():
    with pytest.raises(ValueError, match="p must be"):
        wasserstein(torch.zeros(2, 1), torch.zeros(2, 1), 3)
    with pytest.raises(ValueError, match="event shape"):
        wasserstein(torch.zeros(2, 1), torch.zeros(2, 2))
