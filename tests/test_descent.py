"""The Algorithm 3 engine: steps, monitors, stopping, divergence, checkpoint and resume."""

import pytest
import torch

import flowkit as fk
from flowkit.objectives import MMD, QuadraticObjective


def _mmd_problem(n=60, seed=0):
    y = fk.datasets.eight_gaussians(n, seed=seed)
    x0 = 0.5 * torch.randn(n, 2, generator=torch.Generator().manual_seed(seed + 1))
    return y, x0


def test_each_step_is_the_gradient_layer_update():
    y, x0 = _mmd_problem()
    obj = MMD(y, fk.kernels.Gaussian(0.5))
    res = fk.FunctionalGradientDescent(obj, 0.7, progress=False).run(x0, 3)
    x = x0
    for _ in range(3):
        x = x - 0.7 * obj.functional_gradient(x)
    torch.testing.assert_close(res.particles, x)
    assert len(res.layers) == 3 and res.n_steps == 3
    # Algorithm 2: the stack replays the run on its own inputs
    torch.testing.assert_close(res.layers(x0), res.particles)


def test_schedule_monitors_and_callbacks():
    y, x0 = _mmd_problem()
    seen = []
    flow = fk.FunctionalGradientDescent(
        MMD(y), lambda k: 1.0 / (k + 1), monitors=[fk.monitors.W2(y), fk.monitors.GradNorm()],
        monitor_every=4, callbacks=[lambda s: seen.append(s.step)], progress=False)
    res = flow.run(x0, 10)
    assert res.history["step"] == [0, 4, 8, 10]
    assert len(res.history["W2"]) == 4 and res.history["W2"][-1] < res.history["W2"][0]
    assert res.trace["step_size"] == [1.0 / (k + 1) for k in range(10)]
    assert seen == list(range(1, 11))
    # the recorded per-step norm is the L2(mu) norm of the functional gradient
    assert res.trace["grad_norm2"][0] == pytest.approx(res.history["grad_norm2"][0], rel=1e-6)


def test_monitoring_does_not_change_the_particles():
    y, x0 = _mmd_problem()
    plain = fk.FunctionalGradientDescent(MMD(y), 0.5, progress=False).run(x0, 7)
    watched = fk.FunctionalGradientDescent(MMD(y), 0.5, monitors=[fk.monitors.W1(y)],
                                           monitor_every=1, progress=True).run(x0, 7)
    assert torch.equal(plain.particles, watched.particles)


def test_tolerance_stops_early():
    obj = QuadraticObjective(torch.eye(2, dtype=torch.float64))
    x0 = torch.randn(20, 2, dtype=torch.float64)
    res = fk.FunctionalGradientDescent(obj, 0.5, tol=1e-8, progress=False).run(x0, 1000)
    assert res.stop_reason == "tolerance"
    assert res.n_steps < 1000
    assert res.trace["grad_norm2"][-1] <= 1e-8 < res.trace["grad_norm2"][-2]


@pytest.mark.parametrize("check_every", [1, 7])
def test_divergence_names_the_first_nonfinite_step(check_every):
    obj = QuadraticObjective(torch.eye(1))
    x0 = torch.full((3, 1), 1.0)
    # x_k = (1 - 3)^k: |x| = 2^k overflows float32 at k = 128
    flow = fk.FunctionalGradientDescent(obj, 3.0, progress=False, check_every=check_every,
                                        max_growth=None)
    with pytest.raises(fk.FlowDivergedError, match="step 128") as info:
        flow.run(x0, 500)
    assert info.value.step == 128 and info.value.rule == "non-finite"


def test_checkpoint_resume_is_bit_identical(tmp_path):
    y, x0 = _mmd_problem(80)
    kw = dict(monitors=[fk.monitors.W2(y)], monitor_every=3, progress=False)
    full = fk.FunctionalGradientDescent(MMD(y, fk.kernels.Gaussian(0.5)), 0.9, **kw).run(x0, 20)
    ck = tmp_path / "run.ckpt"
    first = fk.FunctionalGradientDescent(MMD(y, fk.kernels.Gaussian(0.5)), 0.9, **kw)
    first.run(x0, 11, checkpoint=ck, checkpoint_every=4)
    resumed = fk.FunctionalGradientDescent(MMD(y, fk.kernels.Gaussian(0.5)), 0.9, **kw)
    res = resumed.resume(ck, n_steps=20)
    assert torch.equal(res.particles, full.particles)
    assert res.trace["grad_norm2"] == full.trace["grad_norm2"]
    assert res.history["step"][-1] == 20 and res.history["W2"][-1] == full.history["W2"][-1]
    assert len(res.layers) == 20
    torch.testing.assert_close(res.layers(x0), full.particles)


def test_checkpoint_is_never_silently_overwritten(tmp_path):
    y, x0 = _mmd_problem()
    ck = tmp_path / "keep.ckpt"
    ck.write_bytes(b"user data")
    flow = fk.FunctionalGradientDescent(MMD(y), 0.5, progress=False)
    with pytest.raises(FileExistsError, match="overwrite_checkpoint"):
        flow.run(x0, 2, checkpoint=ck)
    assert ck.read_bytes() == b"user data"
    flow.run(x0, 2, checkpoint=ck, overwrite_checkpoint=True)
    assert fk.FunctionalGradientDescent(MMD(y), 0.5, progress=False).resume(ck).n_steps == 2
    with pytest.raises(ValueError, match="not a flowkit checkpoint"):
        torch.save({"x": 1}, tmp_path / "other.pt")
        flow.resume(tmp_path / "other.pt")


def test_float64_and_keep_layers_off():
    y, x0 = _mmd_problem()
    res = fk.FunctionalGradientDescent(MMD(y.double()), 0.5, keep_layers=False,
                                       progress=False).run(x0.double(), 3)
    assert res.particles.dtype == torch.float64 and res.layers is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_particles_stay_on_their_device():
    y, x0 = _mmd_problem()
    res = fk.FunctionalGradientDescent(MMD(y.cuda()), 0.5, progress=False).run(x0.cuda(), 3)
    assert res.particles.is_cuda


def _blowup(**kw):
    # x_k = (1 - 3)^k: max|x| = 2^k, finite until step 128 in float32
    return (fk.FunctionalGradientDescent(QuadraticObjective(torch.eye(1)), 3.0, progress=False,
                                         max_growth=None, **kw),
            torch.full((3, 1), 1.0))


def test_nothing_non_finite_leaves_the_loop_between_checks(tmp_path):
    seen = []
    flow, x0 = _blowup(check_every=1000, monitors=[lambda s: {"m": float(s.particles.max())}],
                       monitor_every=10, callbacks=[lambda s: seen.append(s.particles)])
    with pytest.raises(fk.FlowDivergedError, match="step 128"):
        flow.run(x0, 500, checkpoint=tmp_path / "run.ckpt", checkpoint_every=1)
    assert len(seen) == 127 and all(bool(torch.isfinite(x).all()) for x in seen)
    # the last checkpoint is the last good state, not a NaN one
    flow2, _ = _blowup(check_every=1000)
    last = flow2.resume(tmp_path / "run.ckpt", n_steps=127)
    assert last.n_steps == 127 and bool(torch.isfinite(last.particles).all())


def test_monitors_never_see_non_finite_particles():
    flow, x0 = _blowup(check_every=1000, monitors=[lambda s: {"m": float(s.particles.max())}],
                       monitor_every=10)
    with pytest.raises(fk.FlowDivergedError, match="step 128") as info:
        flow.run(x0, 500)
    assert info.value.rule == "non-finite"


@pytest.mark.parametrize("check_every", [1, 16])
def test_growth_that_stays_finite_is_caught(check_every):
    # QuadraticObjective: |x_k| = 2^k passes 1e3 * max|x0| = 1e3 at k = 10
    flow = fk.FunctionalGradientDescent(QuadraticObjective(torch.eye(1)), 3.0, progress=False,
                                        check_every=check_every)
    with pytest.raises(fk.FlowDivergedError, match="step 10.*rule 'growth'") as info:
        flow.run(torch.full((3, 1), 1.0), 100)
    assert (info.value.step, info.value.rule) == (10, "growth")
    # MMD with an absurd step: particles jump to ~1e7 and then sit still, finite
    y, x0 = _mmd_problem()
    flow = fk.FunctionalGradientDescent(MMD(y, fk.kernels.Gaussian(0.5)), 1e8, progress=False,
                                        check_every=check_every)
    with pytest.raises(fk.FlowDivergedError, match="rule 'growth'") as info:
        flow.run(x0, 30)
    assert info.value.step == 1
    # the energy distance at eta = 1e4 walks the particles to ~1e4 without overflowing
    flow = fk.FunctionalGradientDescent(fk.objectives.EnergyDistance(y), 1e4, progress=False,
                                        check_every=check_every)
    with pytest.raises(fk.FlowDivergedError, match="rule 'growth'"):
        flow.run(x0, 50)
    # off switch and warning
    quiet = fk.FunctionalGradientDescent(MMD(y, fk.kernels.Gaussian(0.5)), 1e8,
                                         progress=False, max_growth=None)
    assert quiet.run(x0, 30).n_steps == 30
    loud = fk.FunctionalGradientDescent(MMD(y, fk.kernels.Gaussian(0.5)), 1e8,
                                        progress=False, on_growth="warn")
    with pytest.warns(RuntimeWarning, match="rule 'growth'"):
        assert loud.run(x0, 30).n_steps == 30


def test_a_sensible_run_does_not_trip_the_growth_rule():
    # a start far inside a wide target: the target's scale is the reference
    y = 50.0 * fk.datasets.eight_gaussians(60, seed=0)
    x0 = 1e-3 * torch.randn(60, 2, generator=torch.Generator().manual_seed(0))
    flow = fk.FunctionalGradientDescent(MMD(y, fk.kernels.Gaussian(20.0)), 50.0,
                                        progress=False, max_growth=10.0)
    assert flow.run(x0, 20).n_steps == 20


def test_result_repr_is_short():
    y, x0 = _mmd_problem(500)
    res = fk.FunctionalGradientDescent(MMD(y), 0.5, progress=False).run(
        torch.randn(500, 2), 2)
    text = repr(res)
    assert len(text) < 300 and "(500, 2)" in text and "n_steps=2" in text


def test_record_value_traces_the_objective():
    obj = QuadraticObjective(torch.eye(2, dtype=torch.float64))
    x0 = torch.randn(20, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    res = fk.FunctionalGradientDescent(obj, 0.5, progress=False, record_value=True,
                                       check_every=4).run(x0, 6)
    x, expected = x0, []
    for _ in range(6):
        expected.append(float(obj.value(x)))
        x = x - 0.5 * obj.functional_gradient(x)
    assert res.trace["value"] == pytest.approx(expected, rel=1e-12)
    assert "value" not in fk.FunctionalGradientDescent(obj, 0.5, progress=False).run(
        x0, 1).trace
