"""Every flow under the engine: gradient convention with weights, descent, dtype/device,
save/load and Algorithm 2 replay, bit-identical checkpoint/resume (noise and weights)."""

import math

import pytest
import torch

import flowkit as fk
from flowkit import flows
from flowkit.kernels import Gaussian

DT = torch.float64
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def score(x):  # module level: layers holding it pickle into checkpoints
    return -(x - 1.0)


def log_density(x):
    return -0.5 * ((x - 1.0) ** 2).sum(1)


def _target(device="cpu", dtype=DT):
    g = torch.Generator().manual_seed(7)
    return torch.randn(25, 2, generator=g, dtype=DT).to(device, dtype)


# name -> (factory(target), step size)
FLOWS = {
    "svgd": (lambda y: flows.SVGD(score=score, bandwidth=1.0), 0.3),
    "ksd": (lambda y: flows.KSD(score=score, kernel=Gaussian(1.0)), 0.05),
    "sliced": (lambda y: flows.SlicedWasserstein(y, 8, resample=True, seed=3), 0.5),
    "blob": (lambda y: flows.BlobKL(log_density, score=score, bandwidth=0.5), 0.05),
    "langevin": (lambda y: flows.Langevin(score=score, log_density=log_density, beta=2.0),
                 0.05),
    "wfr": (lambda y: flows.WFR(y, Gaussian(1.0), weight_step=2.0), 0.5),
}
WITH_VALUE = ["ksd", "sliced", "blob", "wfr"]
TRUSTED = [score, log_density]


def _x0(device="cpu", dtype=DT, n=20):
    g = torch.Generator().manual_seed(11)
    return (torch.randn(n, 2, generator=g, dtype=DT) + 2.0).to(device, dtype)


def _weights(n=20):
    g = torch.Generator().manual_seed(5)
    w = torch.rand(n, generator=g, dtype=DT) + 0.1
    return w / w.sum()


def _engine(name, y, **kw):
    factory, eta = FLOWS[name]
    kw.setdefault("progress", False)
    return fk.FunctionalGradientDescent(factory(y), eta, noise_seed=4, **kw)


@pytest.mark.parametrize("name", WITH_VALUE)
def test_gradient_convention_with_weights(name):
    # functional_gradient(x, w)[i] == (1 / w_i) d value(x, w) / d x_i
    obj = FLOWS[name][0](_target())
    x, w = _x0(), _weights()
    if name == "sliced":
        obj.resample = False  # one fixed set of directions: value and gradient agree
    z = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(obj.value(z, w), z)
    torch.testing.assert_close(obj.functional_gradient(x, w), g / w[:, None],
                               rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", WITH_VALUE)
def test_descent_property_for_a_small_step(name):
    obj = FLOWS[name][0](_target())
    x, w = _x0(), _weights()
    g = obj.functional_gradient(x, w)
    eta = 1e-3
    slope = float((w * g.pow(2).sum(1)).sum())
    drop = float(obj.value(x, w) - obj.value(x - eta * g, w))
    assert drop > 0.5 * eta * slope > 0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(FLOWS))
def test_dtype_and_device_invariance(name, device):
    out = {}
    for dtype in (torch.float32, torch.float64):
        res = _engine(name, _target(device, dtype), keep_layers=False).run(
            _x0(device, dtype), 5)
        assert res.particles.dtype == dtype and res.particles.device.type == device
        if res.weights is not None:
            assert res.weights.dtype == dtype and res.weights.device.type == device
        out[dtype] = res.particles.double().cpu()
    if name == "langevin":
        # the engine's layers draw their noise in the particles' dtype (VelocityLayer.noise):
        # the same seed gives other numbers in float32, so compare the law, not the draws
        assert abs(float(out[torch.float32].mean() - out[torch.float64].mean())) < 0.5
        return
    torch.testing.assert_close(out[torch.float32], out[torch.float64], rtol=0, atol=1e-4)


@pytest.mark.parametrize("name", list(FLOWS))
def test_layers_replay_and_survive_save_load(name, tmp_path):
    x0 = _x0()
    res = _engine(name, _target()).run(x0, 6)
    assert len(res.layers) == 6
    torch.testing.assert_close(res.layers(x0), res.particles, rtol=0, atol=1e-12)
    path = res.layers.save(tmp_path / "stack.pt")
    loaded = fk.GradientLayerStack.load(path, trusted_classes=TRUSTED)
    torch.testing.assert_close(loaded(x0), res.particles, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", list(FLOWS))
def test_checkpoint_resume_is_bit_identical(name, tmp_path):
    x0 = _x0()
    full = _engine(name, _target()).run(x0, 6)
    _engine(name, _target()).run(x0, 3, checkpoint=tmp_path / "c.pt", checkpoint_every=2)
    resumed = _engine(name, _target()).resume(tmp_path / "c.pt", 6, trusted_classes=TRUSTED)
    assert torch.equal(resumed.particles, full.particles)
    if full.weights is not None:
        assert torch.equal(resumed.weights, full.weights)
    assert torch.equal(resumed.layers(x0), full.layers(x0))


def test_engine_langevin_is_langevin_step_with_each_layers_generator():
    x = _x0()
    res = _engine("langevin", None, callbacks=[]).run(x, 5)
    xs = [x]
    for layer in res.layers:
        xs.append(layer(xs[-1]))
    for k, layer in enumerate(res.layers):
        gen = torch.Generator().manual_seed(layer.seed)
        ref = flows.langevin_step(xs[k], score(xs[k]), layer.step_size, gen, beta=2.0)
        assert torch.equal(ref, xs[k + 1])
    assert torch.equal(xs[-1], res.particles)
    assert len({layer.seed for layer in res.layers}) == 5


def test_engine_langevin_follows_the_ula_moments():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(4000, 1, generator=g, dtype=DT) * 0.5 + 3.0
    obj = flows.Langevin(score=lambda x: -x)
    res = fk.FunctionalGradientDescent(obj, 0.05, progress=False, keep_layers=False,
                                       noise_seed=1).run(x0, 20)
    one = torch.ones(1, 1, dtype=DT)
    m, c = flows.ula_moments(x0.mean(0), x0.T.cov().reshape(1, 1), torch.zeros(1, dtype=DT),
                             one, 0.05, 20)
    n = x0.shape[0]
    assert abs(float(res.particles.mean()) - float(m)) < 4 * math.sqrt(float(c) / n)
    assert abs(float(res.particles.var()) - float(c)) < 4 * float(c) * math.sqrt(2 / n)


def test_svgd_engine_matches_svgd_velocity_and_run():
    x0, eta = _x0(), 0.3
    res = _engine("svgd", None).run(x0, 4)
    x = x0
    for _ in range(4):
        x = x + eta * flows.svgd_velocity(x, score, Gaussian(1.0))
    assert torch.equal(res.particles, x)
    assert torch.equal(flows.SVGD(score=score, bandwidth=1.0).run(x0, eta, 4).particles, x)


def test_wfr_engine_weights_stay_a_probability_and_zero_rate_is_mmd():
    y, x0 = _target(), _x0()
    res = _engine("wfr", y).run(x0, 10)
    assert bool((res.weights >= 0).all()) and abs(float(res.weights.sum()) - 1) < 1e-12
    flat = fk.FunctionalGradientDescent(flows.WFR(y, Gaussian(1.0), weight_step=0.0), 0.5,
                                        progress=False).run(x0, 10)
    mmd = fk.FunctionalGradientDescent(fk.objectives.MMD(y, Gaussian(1.0)), 0.5,
                                       progress=False).run(x0, 10)
    assert torch.equal(flat.particles, mmd.particles)
    assert torch.equal(flat.weights, torch.full((20,), 1 / 20, dtype=DT))


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="beta"):
        flows.Langevin(score=score, beta=0.0)
    with pytest.raises(ValueError, match="weight_step"):
        flows.WFR(_target(), weight_step=-1.0)
    with pytest.raises(ValueError, match="score"):
        flows.Langevin()


def test_svgd_engine_passes_the_particle_weights():
    x0, w = _x0(), _weights()
    res = fk.FunctionalGradientDescent(flows.SVGD(score=score, bandwidth=1.0), 0.3,
                                       progress=False).run(x0, 1, weights=w)
    expect = x0 + 0.3 * flows.svgd_velocity(x0, score, Gaussian(1.0), w)
    assert torch.equal(res.particles, expect)
    unweighted = x0 + 0.3 * flows.svgd_velocity(x0, score, Gaussian(1.0))
    assert not torch.allclose(res.particles, unweighted)


@pytest.mark.parametrize("make", [
    lambda: flows.SVGD(score=score, kernel=flows.LinearKernel()),
    lambda: flows.KSD(log_density=log_density),
    lambda: flows.Langevin(log_density=log_density),
], ids=["svgd-linear", "ksd-log-density", "langevin-log-density"])
def test_layers_holding_flowkit_helpers_load_safely(make, tmp_path):
    # the linear kernel and the autograd score are flowkit's own: only the user's function
    # needs trusting
    x0 = _x0()
    res = fk.FunctionalGradientDescent(make(), 0.01, progress=False).run(x0, 2)
    path = res.layers.save(tmp_path / "stack.pt")
    loaded = fk.GradientLayerStack.load(path, trusted_classes=TRUSTED)
    torch.testing.assert_close(loaded(x0), res.particles, rtol=0, atol=1e-12)
