"""Particle optimizers: Armijo backtracking, heavy ball / Nesterov, L-BFGS."""

import math

import pytest
import torch

import flowkit as fk
from flowkit import flows
from flowkit.flows import KSD, armijo_descent, lbfgs, momentum_descent

DT = torch.float64
A = torch.diag(torch.tensor([1.0, 0.01], dtype=DT))  # condition number 100
M = torch.tensor([1.0, -1.0], dtype=DT)


def _quad():
    return fk.objectives.QuadraticObjective(A, M)


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


# ---------------------------------------------------------------- the engine's step rules
RULES = {
    "armijo": lambda: flows.Armijo(),
    "momentum": lambda: flows.Momentum(0.8, nesterov=True),
    "lbfgs": lambda: flows.LBFGS(),
}


def _ksd():
    return KSD(score=_score, kernel=fk.kernels.Gaussian(math.sqrt(0.5)))


def _engine(rule, step_size=0.05, **kw):
    keep = rule.keeps_layers
    return fk.FunctionalGradientDescent(_ksd(), step_size, step_rule=rule, keep_layers=keep,
                                        progress=False, **kw)


@pytest.mark.parametrize("name", ["momentum", "lbfgs"])
def test_rules_that_are_not_per_sample_maps_refuse_layers(name):
    with pytest.raises(ValueError, match="keep_layers=True.*not a per-sample map"):
        fk.FunctionalGradientDescent(_ksd(), 0.1, step_rule=RULES[name]())


def test_armijo_keeps_replayable_layers_with_the_accepted_steps(gen):
    x0 = torch.randn(20, 2, generator=gen, dtype=DT)
    res = _engine(flows.Armijo(), step_size=5.0, record_value=True).run(x0, 8)
    assert [layer.step_size for layer in res.layers] == res.trace["step_size"]
    assert min(res.trace["step_size"]) < 5.0  # some trials were rejected
    torch.testing.assert_close(res.layers(x0), res.particles, rtol=0, atol=1e-12)
    values = res.trace["value"] + [float(_ksd().value(res.particles))]
    assert all(b < a for a, b in zip(values, values[1:]))


@pytest.mark.parametrize("name", list(RULES))
def test_rule_checkpoint_resume_is_bit_identical(name, gen, tmp_path):
    x0 = torch.randn(20, 2, generator=gen, dtype=DT)
    full = _engine(RULES[name]()).run(x0, 6)
    _engine(RULES[name]()).run(x0, 3, checkpoint=tmp_path / "c.pt", checkpoint_every=2)
    resumed = _engine(RULES[name]()).resume(tmp_path / "c.pt", 6, trusted_classes=[_score])
    assert torch.equal(resumed.particles, full.particles)
    assert resumed.trace["step_size"] == full.trace["step_size"]
    with pytest.raises(fk.CheckpointError, match="step_rule"):
        fk.FunctionalGradientDescent(_ksd(), 0.05, keep_layers=name == "armijo",
                                     progress=False).resume(tmp_path / "c.pt", 6,
                                                            trusted_classes=[_score])


def test_armijo_with_moving_weights_descends(gen):
    y = torch.randn(30, 2, generator=gen, dtype=DT)
    x0 = torch.randn(20, 2, generator=gen, dtype=DT) + 2.0
    obj = flows.WFR(y, fk.kernels.Gaussian(1.0), weight_step=1.0)
    flow = fk.FunctionalGradientDescent(obj, 4.0, step_rule=flows.Armijo(), progress=False,
                                        record_value=True)
    res = flow.run(x0, 10)
    assert res.trace["value"][-1] < 0.5 * res.trace["value"][0]
    assert abs(float(res.weights.sum()) - 1) < 1e-12


def test_step_rule_misuse_is_refused_with_a_reason():
    with pytest.raises(TypeError, match="step_rule"):
        fk.FunctionalGradientDescent(_ksd(), 0.1, step_rule="armijo")
    with pytest.raises(TypeError, match="needs the objective's value"):
        fk.FunctionalGradientDescent(flows.SVGD(score=_score, bandwidth=1.0), 0.1,
                                     step_rule=flows.Armijo())
    with pytest.raises(ValueError, match="constant"):
        fk.FunctionalGradientDescent(_ksd(), lambda k: 0.1, step_rule=flows.Armijo())
    with pytest.raises(ValueError, match="noisy"):
        fk.FunctionalGradientDescent(flows.Langevin(score=_score), 0.1, keep_layers=False,
                                     step_rule=flows.Momentum())


def test_armijo_stops_with_a_reason_when_no_trial_decreases(gen):
    x0 = torch.randn(5, 2, generator=gen, dtype=DT)
    # eta = 100 overshoots the curvature-1 direction and no backtrack is allowed
    res = fk.FunctionalGradientDescent(_quad(), 100.0, step_rule=flows.Armijo(max_backtracks=0),
                                       progress=False).run(x0, 50)
    assert res.stop_reason == "line_search" and res.n_steps == 0
    assert torch.equal(res.particles, x0) and len(res.layers) == 0
