"""Theory as property tests (hypothesis, float64), with the theorems' own constants.

* Theorem 1 (Nitanda & Suzuki 2018): eta <= 1/L gives
  min_k ||grad L(phi_k)||^2 <= 2 (L(phi_0) - L_*) / (eta T), and L never increases.
* Injectivity (sec. 3.2): eta Lip < 1 gives
  (1 - eta Lip)|x - y| <= |G x - G y| <= (1 + eta Lip)|x - y|.
* Regeneration (Algorithm 2): a saved and reloaded stack maps inputs to the same outputs.
"""

import math
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import flowkit as fk
from flowkit.objectives import MMD, InteractionEnergy, QuadraticObjective

EXAMPLES = settings(max_examples=50, deadline=None)
f64 = torch.float64


def _spd(seed, d, cond):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=f64))
    eig = torch.logspace(0, torch.log10(torch.tensor(cond)).item(), d, dtype=f64)
    return q @ torch.diag(eig) @ q.T


def _objective(kind, seed, d):
    g = torch.Generator().manual_seed(seed)
    if kind == "quadratic":
        return QuadraticObjective(_spd(seed, d, 30.0), torch.randn(d, generator=g, dtype=f64))
    if kind == "interaction":
        return InteractionEnergy(0.1 + torch.rand(1, generator=g).item(),
                                 2 * torch.rand(1, generator=g).item(),
                                 torch.randn(d, generator=g, dtype=f64))
    bw = 0.3 + 2 * torch.rand(1, generator=g).item()
    return MMD(torch.randn(15, d, generator=g, dtype=f64), fk.kernels.Gaussian(bw))


def _value_monitor(state):
    return {"value": float(state.objective.value(state.particles))}


@EXAMPLES
@given(kind=st.sampled_from(["quadratic", "interaction", "mmd"]),
       seed=st.integers(0, 2**16), d=st.integers(1, 4), frac=st.floats(0.05, 1.0),
       T=st.integers(1, 40))
def test_theorem1_rate_and_monotone_descent(kind, seed, d, frac, T):
    obj = _objective(kind, seed, d)
    eta = frac / obj.smoothness
    x0 = 2 * torch.randn(12, d, generator=torch.Generator().manual_seed(seed + 1), dtype=f64)
    res = fk.FunctionalGradientDescent(obj, eta, monitors=[_value_monitor], monitor_every=1,
                                       keep_layers=False, progress=False).run(x0, T)
    values = res.history["value"]
    cert = fk.theory.theorem1_certificate(res.trace["grad_norm2"], values[0], obj.minimum, eta,
                                          obj.smoothness)
    assert cert.step_condition
    assert cert.holds, (cert.min_grad_norm2, cert.bound)
    # monotone: each step decreases L by at least (eta/2)||grad||^2 (the proof's inequality)
    for k in range(T):
        drop = values[k] - values[k + 1]
        assert drop >= 0.5 * eta * res.trace["grad_norm2"][k] - 1e-12 * (1 + abs(values[k]))


@EXAMPLES
@given(kind=st.sampled_from(["quadratic", "mmd", "mmd-imq"]), seed=st.integers(0, 2**16),
       d=st.integers(1, 4), frac=st.floats(0.01, 0.99))
def test_layer_is_bilipschitz_when_eta_lip_below_one(kind, seed, d, frac):
    g = torch.Generator().manual_seed(seed)
    if kind == "mmd-imq":
        obj = MMD(torch.randn(10, d, generator=g, dtype=f64),
                  fk.kernels.InverseMultiquadric(0.5 + torch.rand(1, generator=g).item()))
    else:
        obj = _objective(kind, seed, d)
    psi = obj.first_variation(torch.randn(10, d, generator=g, dtype=f64))
    bound = fk.theory.lipschitz_bound(psi)
    assert bound.kind == "guaranteed"
    layer = fk.GradientLayer(psi, frac / bound.value)
    margin = fk.theory.injectivity_margin(layer)
    assert margin.guaranteed and margin.value > 0
    x = 1.5 * torch.randn(64, d, generator=g, dtype=f64)
    # half the pairs are close, where the linearisation is tightest
    y = torch.cat([1.5 * torch.randn(32, d, generator=g, dtype=f64),
                   x[32:] + 1e-3 * torch.randn(32, d, generator=g, dtype=f64)])
    dist = (x - y).norm(dim=1)
    mapped = (layer(x) - layer(y)).norm(dim=1)
    # relative to the distance plus absolute rounding of the mapped points: when the bound
    # is met exactly (a quadratic in d = 1), |G x - G y| carries eps * |G x| of rounding
    scale = x.norm(dim=1) + y.norm(dim=1) + layer(x).norm(dim=1) + layer(y).norm(dim=1)
    tol = 1e-10 * dist + 64 * torch.finfo(f64).eps * scale
    assert torch.all(mapped >= (1 - frac) * dist - tol)
    assert torch.all(mapped <= (1 + frac) * dist + tol)


@EXAMPLES
@given(seed=st.integers(0, 2**16), n_layers=st.integers(1, 6), bw=st.floats(0.2, 2.0))
def test_saved_stack_regenerates_the_same_outputs(seed, n_layers, bw):
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(20, 2, generator=g, dtype=f64)
    x0 = torch.randn(20, 2, generator=g, dtype=f64)
    res = fk.FunctionalGradientDescent(MMD(y, fk.kernels.Gaussian(bw)), 0.5,
                                       progress=False).run(x0, n_layers)
    z = torch.randn(33, 2, generator=g, dtype=f64)
    with tempfile.TemporaryDirectory() as tmp:
        loaded = fk.GradientLayerStack.load(res.layers.save(Path(tmp) / "stack.pt"))
    assert torch.equal(loaded(z), res.layers(z))
    assert torch.equal(loaded(x0), res.particles)


def test_lipschitz_estimate_is_labelled_and_recovers_the_quadratic_constant():
    A = _spd(0, 3, 10.0)
    psi = QuadraticObjective(A).first_variation(torch.zeros(1, 3, dtype=f64))
    est = fk.theory.lipschitz_bound(fk.FunctionPotential(psi.forward),
                                    torch.randn(8, 3, dtype=f64), n_iter=200)
    assert est.kind == "estimate"
    assert abs(est.value - 10.0) < 1e-6
    # kernels without a bounded Hessian (Laplacian) have no guaranteed bound: estimate only
    lap = MMD(torch.randn(5, 2, dtype=f64), fk.kernels.Laplacian()).first_variation(
        torch.randn(5, 2, dtype=f64))
    assert fk.theory.lipschitz_bound(lap, torch.randn(7, 2, dtype=f64) + 3).kind == "estimate"


def test_guaranteed_kernel_bounds_dominate_sampled_hessians():
    torch.manual_seed(0)
    y = torch.zeros(1, 2, dtype=f64)
    for k in [fk.kernels.Gaussian(0.7), fk.kernels.InverseMultiquadric(1.2, -0.5),
              fk.kernels.InverseMultiquadric(0.8, -0.9)]:
        psi = fk.FunctionPotential(lambda z, k=k: k(z, y)[:, 0])
        pts = torch.linspace(0, 5, 400, dtype=f64)[:, None] * torch.tensor([[1.0, 0.0]], dtype=f64)
        est = fk.theory.lipschitz_bound(psi, pts, n_iter=100).value
        assert est <= k.hessian_bound() * (1 + 1e-9)
        assert est >= 0.99 * k.hessian_bound()  # the bound is attained, not loose


def test_energy_dissipation_to_first_order():
    obj = MMD(torch.randn(30, 2, dtype=f64), fk.kernels.Gaussian(1.0))
    x0 = torch.randn(30, 2, dtype=f64) + 1
    residuals = []
    for eta in (1e-2, 1e-3):
        res = fk.FunctionalGradientDescent(obj, eta, monitors=[_value_monitor], monitor_every=1,
                                           progress=False).run(x0, 5)
        r = fk.theory.dissipation_residuals(res.history["value"], res.trace["grad_norm2"],
                                            res.trace["step_size"])
        residuals.append(max(abs(v) for v in r))
    assert residuals[1] < residuals[0] / 5  # O(eta) residual
    assert residuals[1] < 1e-2


# ---------------------------------------------------------------- regressions: never overstate
def test_theorem1_certificate_needs_its_step_condition():
    cert = fk.theory.theorem1_certificate([1e-3, 1e-4], 1.0, 0.0, 0.5, smoothness=10.0)
    assert not cert.step_condition and cert.bound_met
    assert not cert.holds  # the inequality is met, but Theorem 1 was not applicable
    assert "holds=False" in repr(cert)
    assert fk.theory.Theorem1Certificate.__doc__ and fk.theory.Theorem1Certificate.holds.__doc__


def _wrong_smoothness_run():
    # true constant 2 (A = 2 I), declared 0.1, eta = 0.9: eta <= 1/L for the declared L
    obj = QuadraticObjective(2 * torch.eye(1, dtype=f64))
    obj.smoothness = 0.1
    x0 = torch.full((4, 1), 0.1, dtype=f64)
    res = fk.FunctionalGradientDescent(obj, 0.9, monitors=[_value_monitor], monitor_every=1,
                                       keep_layers=False, progress=False).run(x0, 5)
    return obj, res


def test_declared_smoothness_contradicted_by_the_descent_inequality():
    obj, res = _wrong_smoothness_run()
    values = res.history["value"]
    blind = fk.theory.theorem1_certificate(res.trace["grad_norm2"], values[0], 0.0, 0.9, 0.1)
    assert blind.step_condition  # without the run's values nothing can tell
    cert = fk.theory.theorem1_certificate(res.trace["grad_norm2"], values[0], 0.0, 0.9, 0.1,
                                          values=values)
    assert cert.min_descent_slack < -5e-3
    assert not cert.holds and "descent inequality fails at step 0" in cert.contradiction
    # the true constant passes the same check on a run that respects it
    obj.smoothness = 2.0
    good = fk.FunctionalGradientDescent(obj, 0.4, monitors=[_value_monitor], monitor_every=1,
                                        keep_layers=False, progress=False).run(res.particles, 5)
    ok = fk.theory.theorem1_certificate(good.trace["grad_norm2"], good.history["value"][0], 0.0,
                                        0.4, 2.0, values=good.history["value"])
    assert ok.contradiction is None and ok.holds  # the slack is 0 up to rounding here


def test_declared_smoothness_contradicted_by_a_sampled_curvature():
    obj, res = _wrong_smoothness_run()
    psi = fk.FunctionPotential(obj.first_variation(res.particles).forward)
    est = fk.theory.lipschitz_bound(psi, torch.randn(5, 1, dtype=f64))
    cert = fk.theory.theorem1_certificate(res.trace["grad_norm2"], 0.05, 0.0, 0.9, 0.1,
                                          sampled_curvature=est.value)
    assert not cert.holds and "sampled curvature 2" in cert.contradiction


def test_theorem1_bound_rejects_a_minimum_above_the_start():
    with pytest.raises(ValueError, match="minimum"):
        fk.theory.theorem1_bound(0.0, 1.0, 0.1, 10)
    with pytest.raises(ValueError, match="n_steps"):
        fk.theory.theorem1_bound(1.0, 0.0, 0.1, 0)


def test_dissipation_residuals_at_a_critical_point_are_nan_not_a_crash():
    r = fk.theory.dissipation_residuals([1.0, 0.9, 0.9], [0.2, 0.0], [0.5, 0.5])
    assert abs(r[0]) < 1e-12 and math.isnan(r[1])


def test_lipschitz_estimate_needs_an_iteration():
    psi = fk.FunctionPotential(lambda z: (z ** 2).sum(1))
    with pytest.raises(ValueError, match="n_iter"):
        fk.theory.lipschitz_bound(psi, torch.randn(3, 2, dtype=f64), n_iter=0)


def test_injectivity_margin_is_labelled():
    x = torch.randn(6, 2, dtype=f64)
    quad = QuadraticObjective(torch.eye(2, dtype=f64) * 4).first_variation(x)
    sure = fk.theory.injectivity_margin(fk.GradientLayer(quad, 0.2))
    assert sure.kind == "guaranteed" and sure.guaranteed and abs(sure - 0.2) < 1e-12
    guess = fk.theory.injectivity_margin(fk.GradientLayer(fk.FunctionPotential(quad.forward),
                                                          0.2), x)
    assert guess.kind == "estimate" and not guess.guaranteed
    assert "estimate" in repr(guess) and "power iterations" in guess.method
    assert round(guess, 3) == 0.2 and isinstance(round(guess, 3), float)
