"""Sharded Sinkhorn, Algorithm 1 under DDP, sharded noise, the sliced W2 monitor from
projections, and replaying a sharded stack on one process: 2 gloo processes against one.

One launch (process start-up costs seconds) runs every sharded case and returns its
numbers; the tests below compare them with single-process runs of the same problems.
"""

from __future__ import annotations

import ot  # noqa: F401 - imported before forking, so the children inherit it
import pytest
import torch

import flowkit as fk
import flowkit.flows
from flowkit import distributed as fkd

N, M, D = 23, 17, 2  # uneven: 12 + 11 particles, 9 + 8 target points
FAST = {"start_method": "fork", "threads": 1}
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def _data(dtype, d=D):
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(N, d, generator=g, dtype=torch.float64).to(dtype)
    y = (torch.randn(M, d, generator=g, dtype=torch.float64) + 1.0).to(dtype)
    return x0, y


def _flow(objective, **kw):
    return fk.FunctionalGradientDescent(objective, step_size=0.5, progress=False, **kw)


def _sinkhorn(dtype, sharded):
    _, y = _data(dtype)
    kw = {"blur": 1.0, "tol": 1e-6 if dtype == torch.float64 else 1e-4}
    if sharded:
        return fkd.ShardedSinkhornDivergence(fkd.shard(y), **kw)
    return fk.objectives.SinkhornDivergence(y, **kw)


def _adversarial(dtype, sharded):
    _, y = _data(dtype)
    critic = fk.critics.WGANGPCritic(dim=D, hidden=8, depth=3, steps=3, batch_size=7, seed=0)
    if sharded:
        critic = fkd.DDPCritic(critic)
    return fk.objectives.AdversarialObjective(critic, 0.7 * torch.tanh(y),
                                              output_map=torch.tanh)


def _score(x):  # module level: the layers holding it pickle
    return 1.0 - x


def _langevin(dtype, sharded):
    return fk.flows.Langevin(score=_score, beta=2.0)


def _mmd(dtype, sharded):
    _, y = _data(dtype)
    return fkd.ShardedMMD(fkd.shard(y)) if sharded else fk.objectives.MMD(y)


CASES = {"sinkhorn": _sinkhorn, "ddp": _adversarial, "langevin": _langevin, "mmd": _mmd}
STEPS = 2


def _sharded_cases(tmp):
    out = {}
    for name, make in CASES.items():
        for dtype in (torch.float64, torch.float32):
            if name == "mmd" and dtype == torch.float32:
                continue  # the ring itself is tested in test_distributed.py
            x0, _ = _data(dtype)
            obj = make(dtype, True)
            res = _flow(obj, noise_seed=3).run(fkd.shard(x0), STEPS)
            out[name, dtype] = {"particles": fkd.gather_particles(res.particles),
                                "stack": fkd.gather_layers(res.layers),
                                "own": res.layers}
            if name == "sinkhorn":
                out[name, dtype]["value"] = obj.value(res.particles)
            if dtype == torch.float64 and name in ("sinkhorn", "ddp"):
                # stopped after one step, resumed to STEPS: the warm start's potentials,
                # the critic's weights, Adam and RNG state come back on every rank
                _flow(make(dtype, True), noise_seed=3).run(fkd.shard(x0), 1,
                                                          checkpoint=tmp / name)
                resumed = _flow(make(dtype, True), noise_seed=3).resume(tmp / name, STEPS)
                out[name, dtype]["resumed"] = torch.equal(resumed.particles, res.particles)
    for k in (3, 5):  # fewer directions than dimensions: projections travel; else points
        x0, y = _data(torch.float64, d=4)
        w2 = fkd.ShardedWasserstein(fkd.shard(y), estimator="sliced", n_projections=k, seed=7)
        out["sliced", k] = w2(fkd.shard(x0))
    x0, y = _data(torch.float64)  # above exact_max: only the solves' rows travel
    w2 = fkd.ShardedWasserstein(fkd.shard(y), exact_max=6, n_repeats=2, seed=5)
    out["subsample"] = w2(fkd.shard(x0))
    errors = {}
    try:
        fkd.ShardedSinkhornDivergence(fkd.shard(_data(torch.float64)[1])).value(
            fkd.shard(_data(torch.float64)[0]), torch.full((12 - fkd.world()[0],), 0.1))
    except ValueError as err:
        errors["weights"] = str(err)
    out["errors"] = errors
    return out


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    # DistributedDataParallel's constructor imports torch._dynamo (seconds): once, here,
    # so that the forked children inherit it instead of each importing it
    import torch._dynamo  # noqa: F401

    return fkd.launch(_sharded_cases, 2, tmp_path_factory.mktemp("ckpt"), timeout=60, **FAST)


def _single(name, dtype):
    x0, _ = _data(dtype)
    return _flow(CASES[name](dtype, False), noise_seed=3).run(x0, STEPS)


@pytest.mark.parametrize("name", ["sinkhorn", "ddp", "langevin"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_sharded_run_equals_the_single_process_run(sharded, name, dtype):
    ref = _single(name, dtype)
    got = sharded[0][name, dtype]["particles"]
    assert sharded[1][name, dtype]["particles"] is None
    assert got.dtype == dtype
    torch.testing.assert_close(got, ref.particles, rtol=0, atol=TOL[dtype])
    x0, _ = _data(dtype)
    assert (ref.particles - x0).abs().max() > 1e-2  # the flow moved: a real comparison


@pytest.mark.parametrize("name", ["sinkhorn", "ddp"])
def test_a_sharded_run_resumes_bit_identically(sharded, name):
    assert sharded[0][name, torch.float64]["resumed"]
    assert sharded[1][name, torch.float64]["resumed"]


def test_sharded_sinkhorn_value_is_the_global_one_on_every_rank(sharded):
    for dtype in (torch.float64, torch.float32):
        ref = _single("sinkhorn", dtype)
        want = _sinkhorn(dtype, False).value(ref.particles)
        for r in (0, 1):
            torch.testing.assert_close(sharded[r]["sinkhorn", dtype]["value"], want,
                                       rtol=0, atol=TOL[dtype])


def test_sharded_noise_is_the_rows_of_the_global_draw(sharded):
    # a rank drawing its own shard's noise from the shared seed would repeat rows
    # 0..10 of the noise on both ranks: the particles would then differ here
    ref = _single("langevin", torch.float64)
    xi = ref.layers[0].noise(_data(torch.float64)[0])
    assert not torch.allclose(xi[:11], xi[12:23])
    torch.testing.assert_close(sharded[0]["langevin", torch.float64]["particles"],
                               ref.particles, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["sinkhorn", "ddp", "langevin", "mmd"])
def test_the_gathered_stack_replays_the_sharded_run_on_one_process(sharded, name):
    x0, _ = _data(torch.float64)
    out = sharded[0][name, torch.float64]
    assert sharded[1][name, torch.float64]["stack"] is None
    stack = out["stack"]
    assert len(stack) == STEPS
    torch.testing.assert_close(stack(x0), out["particles"], rtol=0, atol=1e-10)


def test_the_gathered_stack_saves_and_loads(sharded, tmp_path):
    stack = sharded[0]["sinkhorn", torch.float64]["stack"]
    path = stack.save(tmp_path / "stack.pt")
    x0, _ = _data(torch.float64)
    loaded = fk.GradientLayerStack.load(path)
    torch.testing.assert_close(loaded(x0), stack(x0), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["sinkhorn", "mmd"])
def test_one_ranks_layers_refuse_to_replay_on_one_process(sharded, name):
    own = sharded[0][name, torch.float64]["own"]
    with pytest.raises(RuntimeError, match="gather_layers"):
        own(_data(torch.float64)[0])


@pytest.mark.parametrize("k", [3, 5])
def test_the_sliced_w2_from_gathered_projections_equals_one_process(sharded, k):
    x0, y = _data(torch.float64, d=4)
    ref = fk.monitors.W2(y, estimator="sliced", n_projections=k, seed=7)(x0)
    for r in (0, 1):
        assert sharded[r]["sliced", k]["W2_method"] == ref["W2_method"] == f"sliced({k})"
        assert sharded[r]["sliced", k]["W2"] == pytest.approx(ref["W2"], rel=1e-12)


def test_the_subsample_w2_from_gathered_rows_equals_one_process(sharded):
    x0, y = _data(torch.float64)
    ref = fk.monitors.W2(y, exact_max=6, n_repeats=2, seed=5)(x0)
    assert ref["W2_method"] == "subsample(6x2)"
    for r in (0, 1):
        assert sharded[r]["subsample"] == pytest.approx(ref, rel=1e-12)


def test_sharded_sinkhorn_refuses_particle_weights(sharded):
    for r in (0, 1):
        assert "weights must be None" in sharded[r]["errors"]["weights"]


def test_ddp_critic_checks_its_arguments():
    with pytest.raises(TypeError, match="critic must be a flowkit.critics.WGANGPCritic"):
        fkd.DDPCritic(object())
    critic = fk.critics.WGANGPCritic(dim=D, hidden=8, steps=1, batch_size=1, seed=0)
    ddp = fkd.DDPCritic(critic)  # one process: the critic itself
    psi = ddp.fit(torch.randn(5, D), torch.randn(6, D))
    assert psi(torch.zeros(2, D)).shape == (2,)


def test_sharded_sliced_monitor_needs_an_int_seed():
    with pytest.raises(TypeError, match="seed must be an int"):
        fkd.ShardedWasserstein(torch.randn(4, 2), estimator="sliced",
                               seed=torch.Generator())


def test_algorithm1_resumes_bit_identically_in_float64(tmp_path):
    # regression: the resumed critic was a fresh float32 network into which the float64
    # weights were loaded (rounded to float32) before the network followed the data
    x0, _ = _data(torch.float64)
    ref = _flow(_adversarial(torch.float64, False)).run(x0, 2)
    _flow(_adversarial(torch.float64, False)).run(x0, 1, checkpoint=tmp_path / "c.pt")
    res = _flow(_adversarial(torch.float64, False)).resume(tmp_path / "c.pt", 2)
    assert torch.equal(res.particles, ref.particles)
