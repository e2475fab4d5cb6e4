"""Monitors refuse non-finite or mismatched particles; the W2 estimator keeps its quantity."""

import math

import numpy as np
import pytest
import torch

from flowkit.monitors import MMD, W1, W2, GradNorm, ObjectiveValue, WallTime, wasserstein


def _clouds(n, m, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, generator=g), 0.5 * torch.randn(m, 2, generator=g) + 1.0


@pytest.mark.parametrize("monitor", [MMD, W1, W2])
def test_non_finite_particles_are_an_error_not_a_number(monitor):
    x, y = _clouds(40, 30)
    x[2, 1] = float("nan")
    with pytest.raises(ValueError, match="particles contains 1 non-finite"):
        monitor(y)(x)


@pytest.mark.parametrize("monitor", [MMD, W1, W2])
def test_bad_particles_name_the_argument(monitor):
    _, y = _clouds(40, 30)
    with pytest.raises(ValueError, match="particles has event shape"):
        monitor(y)(torch.randn(5, 3))
    with pytest.raises(TypeError, match="particles must be a torch.Tensor"):
        monitor(y)(np.zeros((5, 2)))
    with pytest.raises(ValueError, match="particles is empty"):
        monitor(y)(torch.zeros(0, 2))
    with pytest.raises(TypeError, match="state must be"):
        monitor(y)("abc")


def test_monitors_that_need_a_flow_state_say_so():
    x, _ = _clouds(10, 10)
    for monitor in (WallTime(), ObjectiveValue(), GradNorm()):
        with pytest.raises(TypeError, match="FlowState"):
            monitor(x)


def test_wasserstein_arguments():
    x, y = _clouds(30, 30)
    with pytest.raises(ValueError, match="n_projections"):
        wasserstein(x, y, estimator="sliced", n_projections=0)
    with pytest.raises(ValueError, match="exact_max"):
        wasserstein(x, y, exact_max=0)
    with pytest.raises(ValueError, match="exact_max"):
        wasserstein(x, y, exact_max="a")
    with pytest.raises(ValueError, match="p must be"):
        wasserstein(x, y, p=True)
    with pytest.raises(TypeError, match="seed"):
        wasserstein(x, y, estimator="sliced", seed="a")
    with pytest.raises(ValueError, match="num_iter_max"):
        wasserstein(x, y, num_iter_max=0)
    with pytest.raises(ValueError, match="estimator"):
        wasserstein(x, y, estimator="fast")
    with pytest.raises(ValueError, match="n_repeats"):
        wasserstein(x, y, n_repeats=0)
    with pytest.raises(ValueError, match="y contains"):
        wasserstein(x, torch.full((4, 2), float("inf")))
    with pytest.raises(ValueError, match="exact_max"):
        W2(y, exact_max=-1)
    with pytest.raises(ValueError, match="estimator"):
        W2(y, estimator="x")
    with pytest.raises(TypeError, match="transform"):
        W2(y, transform=3)
    with pytest.raises(TypeError, match="kernel"):
        MMD(y, "gauss")


def test_above_exact_max_the_same_quantity_is_estimated():
    # 2-D, N = 600 with exact_max lowered to 400: the subsample estimate stays within 5%
    # of the exact W2 (the sliced distance, a different quantity, is about 0.7x of it)
    x, y = _clouds(600, 600, seed=3)
    exact = wasserstein(x, y, 2, exact_max=600)
    est = wasserstein(x, y, 2, exact_max=400, n_repeats=3, seed=0)
    assert exact.method == "exact" and exact.estimator == "exact"
    assert est.estimator == "subsample" and est.method == "subsample(400x3)"
    assert est.value == pytest.approx(exact.value, rel=0.05)
    assert 0 < est.spread < 0.05 * exact.value
    sliced = wasserstein(x, y, 2, estimator="sliced", n_projections=200)
    assert sliced.estimator == "sliced" and sliced.value < 0.8 * exact.value


def test_the_monitor_records_its_estimator_at_every_size():
    x, y = _clouds(300, 300, seed=4)
    small = W2(y)(x)
    assert small["W2_method"] == "exact" and "W2_spread" not in small
    big = W2(y, exact_max=200, n_repeats=2)(x)
    assert big["W2_method"] == "subsample(200x2)" and big["W2_spread"] >= 0
    assert big["W2"] == pytest.approx(small["W2"], rel=0.1)
    sliced = W2(y, estimator="sliced", n_projections=100)(x)
    assert sliced["W2_method"] == "sliced(100)"


def test_subsample_is_seeded_and_exact_when_everything_fits():
    x, y = _clouds(120, 100, seed=5)
    a = wasserstein(x, y, exact_max=80, seed=1)
    b = wasserstein(x, y, exact_max=80, seed=1)
    assert a == b
    full = wasserstein(x, y, estimator="subsample", exact_max=500)
    assert full.value == pytest.approx(wasserstein(x, y).value, rel=1e-12)
    assert math.isfinite(full.spread)


def test_meta_tensors_have_no_distance():
    _, y = _clouds(10, 10)
    with pytest.raises(ValueError, match="x is a meta tensor"):
        wasserstein(torch.zeros(5, 2, device="meta"), y)
    with pytest.raises(ValueError, match="particles is a meta tensor"):
        W2(y)(torch.zeros(5, 2, device="meta"))
