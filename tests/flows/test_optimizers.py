"""Particle optimizers: Armijo backtracking, heavy ball / Nesterov, L-BFGS."""

import math

import pytest
import torch

import flowkit as fk
from flowkit.flows import KSD, armijo_descent, lbfgs, momentum_descent

DT = torch.float64
A = torch.diag(torch.tensor([1.0, 0.01], dtype=DT))  # condition number 100
M = torch.tensor([1.0, -1.0], dtype=DT)


def _quad():
    return fk.objectives.QuadraticPotential(A, M)


def _score(x):
    return -x * (x**2).sum(1, keepdim=True)


def test_zero_momentum_is_the_engine_exactly(gen):
    x0 = torch.randn(20, 2, generator=gen, dtype=DT)
    obj = KSD(score=_score)
    mine = momentum_descent(obj, x0, 10, step_size=0.01, momentum=0.0)
    ref = fk.FunctionalGradientDescent(obj, 0.01, progress=False).run(x0, 10).particles
    torch.testing.assert_close(mine.particles, ref, rtol=0, atol=0)


def test_armijo_accepts_only_sufficient_decrease(gen):
    x0 = torch.randn(30, 2, generator=gen, dtype=DT) * 3
    obj = _quad()
    res = armijo_descent(obj, x0, 40, step_size=100.0, c=1e-4)  # far too large a first step
    assert res.n_steps == 40
    assert all(b < a for a, b in zip(res.values, res.values[1:]))
    assert res.values[-1] < 0.5 * res.values[0]


def test_momentum_beats_plain_descent_on_an_ill_conditioned_quadratic(gen):
    # eta = 1 / L; heavy ball with beta = (1 - sqrt(mu / L))^2-ish momentum converges like
    # sqrt(condition number) instead of the condition number
    x0 = torch.randn(10, 2, generator=gen, dtype=DT) * 2
    obj = _quad()
    plain = momentum_descent(obj, x0, 100, step_size=1.0, momentum=0.0).values[-1]
    heavy = momentum_descent(obj, x0, 100, step_size=1.0, momentum=0.8).values[-1]
    nest = momentum_descent(obj, x0, 100, step_size=1.0, momentum=0.8, nesterov=True).values[-1]
    assert heavy < 1e-2 * plain and nest < 1e-2 * plain


def test_lbfgs_solves_the_quadratic_and_descends_ksd(gen):
    x0 = torch.randn(10, 2, generator=gen, dtype=DT) * 2
    res = lbfgs(_quad(), x0, 50)
    torch.testing.assert_close(res.particles, M.expand(10, 2), atol=1e-6, rtol=0)
    obj = KSD(score=_score, kernel=fk.kernels.Gaussian(math.sqrt(0.5)))
    x0 = torch.randn(25, 2, generator=gen, dtype=DT)
    fixed = fk.FunctionalGradientDescent(obj, 0.02, progress=False, keep_layers=False)
    ref = float(obj.value(fixed.run(x0, 30).particles))
    res = lbfgs(obj, x0, 30)
    assert res.values[-1] < ref


def test_lbfgs_matches_ksddescent_lbfgs_final_discrepancy(gen):
    ksdd = pytest.importorskip("ksddescent")
    x0 = torch.randn(25, 2, generator=gen, dtype=DT)
    obj = KSD(score=_score, kernel=fk.kernels.Gaussian(math.sqrt(0.5)))
    peer = ksdd.ksdd_lbfgs(x0.float(), _score, bw=0.5, max_iter=60).double()
    mine = lbfgs(obj, x0, 60).particles
    # two L-BFGS implementations (scipy in float32 vs torch in float64): same minimum level
    assert float(obj.value(mine)) < 1.05 * float(obj.value(peer))


def test_bad_inputs_name_the_argument(gen):
    x = torch.randn(5, 2, generator=gen, dtype=DT)
    with pytest.raises(TypeError, match="objective"):
        lbfgs("ksd", x)
    with pytest.raises(ValueError, match="momentum"):
        momentum_descent(_quad(), x, 3, step_size=0.1, momentum=1.0)
    with pytest.raises(ValueError, match="shrink"):
        armijo_descent(_quad(), x, 3, shrink=1.5)
    with pytest.raises(ValueError, match="step_size"):
        armijo_descent(_quad(), x, 3, step_size=0.0)


def test_lbfgs_callback_sees_every_iteration(gen):
    x0 = torch.randn(10, 2, generator=gen, dtype=DT) * 2
    seen = []
    res = lbfgs(_quad(), x0, 5, callback=lambda k, x: seen.append((k, x.clone())))
    assert [k for k, _ in seen] == list(range(1, res.n_steps + 1))
    torch.testing.assert_close(seen[-1][1], res.particles)
    assert len(res.values) == res.n_steps + 1
