"""Sharded flows on torch.distributed: 2 gloo processes against one process.

Every launch costs a few seconds of process start-up, so one launch runs all the sharded
cases and returns their numbers; the tests below judge them against single-process runs.
"""

from __future__ import annotations

import time

import ot  # noqa: F401 - imported before forking, so the children inherit it (seconds)
import pytest
import torch
import torch.distributed as dist

import flowkit as fk
from flowkit import distributed as fkd

N, M, D, STEPS = 23, 17, 2, 5  # uneven: 12 + 11 particles, 9 + 8 target points
# fork skips re-importing torch in each child (seconds on a loaded 2-core machine); one
# torch thread per child keeps the children out of the parent's OpenMP pool
FAST = {"start_method": "fork", "threads": 1}


def _data(dtype):
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(N, D, generator=g, dtype=torch.float64).to(dtype)
    y = (torch.randn(M, D, generator=g, dtype=torch.float64) + 1.0).to(dtype)
    return x0, y


def _flow(objective, **kw):
    return fk.FunctionalGradientDescent(objective, step_size=0.5, progress=False,
                                        keep_layers=False, **kw)


def _sharded_cases(tmp):
    """Run on every rank; returns what the parent compares (gathered tensors on rank 0)."""
    rank, size = fkd.world()
    out = {}
    for name, kernel, dtype in [("mmd64", fk.kernels.Gaussian(1.0), torch.float64),
                                ("mmd32", fk.kernels.Gaussian(1.0), torch.float32),
                                ("energy64", None, torch.float64),
                                ("energy32", None, torch.float32)]:
        x0, y = _data(dtype)
        if kernel is None:
            obj = fkd.ShardedEnergyDistance(fkd.shard(y))
        else:
            obj = fkd.ShardedMMD(fkd.shard(y), kernel)
        w2 = fkd.ShardedWasserstein(fkd.shard(y))
        res = _flow(obj, monitors=[w2], monitor_every=STEPS).run(fkd.shard(x0), STEPS)
        g0 = obj.functional_gradient(fkd.shard(x0))
        out[name] = {"particles": fkd.gather_particles(res.particles),
                     "grad_norm2": fkd.global_mean(g0.pow(2).sum(1)),
                     "value": obj.value(res.particles), "W2": res.history["W2"],
                     "grad0": fkd.gather_particles(g0)}
    # a group of one rank: each rank runs the whole problem alone
    singles = [dist.new_group([r]) for r in range(size)]
    x0, y = _data(torch.float64)
    res = _flow(fkd.ShardedMMD(y, group=singles[rank])).run(x0, STEPS)
    out["single_group"] = res.particles
    # bad input: every rank must raise, naming the argument
    errors = {}
    for case in ("dim", "dtype"):
        x0, y = _data(torch.float64)
        if rank == 1:
            x0, y = ((torch.randn(N, 3), torch.randn(M, 3)) if case == "dim"
                     else (x0.float(), y.float()))
        try:
            _flow(fkd.ShardedMMD(fkd.shard(y))).run(fkd.shard(x0), 1)
        except ValueError as err:
            errors[case] = str(err)
    try:  # not CUDA (none here) but the same rule: gloo sends CPU tensors only
        fkd.ShardedMMD(fkd.shard(y).to("meta")).validate(fkd.shard(x0).to("meta"))
    except ValueError as err:
        errors["device"] = str(err)
    out["errors"] = errors
    # checkpoint= is a folder: one file per rank + manifest; resume equals the straight run
    x0, y = _data(torch.float64)
    obj = fkd.ShardedMMD(fkd.shard(y))
    first = _flow(obj, monitors=[fk.monitors.GradNorm()], monitor_every=2)
    first.run(fkd.shard(x0), 3, checkpoint=tmp, checkpoint_every=2)
    out["manifest"] = fkd.read_manifest(tmp)
    resumed = _flow(obj, monitors=[fk.monitors.GradNorm()], monitor_every=2).resume(tmp, 6)
    straight = _flow(obj, monitors=[fk.monitors.GradNorm()], monitor_every=2).run(
        fkd.shard(x0), 6)
    out["resume_equal"] = torch.equal(resumed.particles, straight.particles)
    out["trace"] = straight.trace["grad_norm2"]
    out["monitor"] = straight.history["grad_norm2"]
    out["resumed_trace"] = resumed.trace["grad_norm2"]
    try:  # an existing checkpoint on any rank stops every rank
        _flow(obj).run(fkd.shard(x0), 1, checkpoint=tmp)
    except FileExistsError as err:
        errors["exists"] = str(err)
    # a job stopped during a save leaves rank files of different steps: refused on all
    mixed = tmp / "mixed"
    _flow(obj).run(fkd.shard(x0), 2, checkpoint=mixed, checkpoint_every=2)
    mine = fkd.sharded_checkpoint_path(mixed)
    old = mine.read_bytes()
    _flow(obj).resume(mixed, 4, checkpoint=mixed, overwrite_checkpoint=True)
    if rank == 1:
        mine.write_bytes(old)
    dist.barrier()
    try:
        _flow(obj).resume(mixed, 5)
    except fk.CheckpointError as err:
        errors["mixed"] = str(err)
    # rank 1 alone blows up (its particles move far off; the Gaussian kernel barely
    # couples them to rank 0's): every rank must stop at the same step, not wait in a ring
    def blow_up(state):
        if rank == 1 and state.step == 2:
            state.particles.mul_(1e6)

    try:
        _flow(fkd.ShardedMMD(fkd.shard(y)), callbacks=[blow_up]).run(fkd.shard(x0), STEPS)
    except fk.FlowDivergedError as err:
        out["diverged"] = (err.rule, err.step)
    out["progress"] = fkd.show_progress(True)
    out["engine_progress"] = fkd.engine_seam(obj).progress(True)  # the engine's bar
    out["demo"] = (_demo(tmp / "demo"), tmp / "demo")  # the command, as under torchrun
    return out


def _gradient_and_value():
    x0, y = _data(torch.float64)
    obj = fkd.ShardedEnergyDistance(fkd.shard(y))
    obj.validate(fkd.shard(x0))
    return (fkd.gather_particles(obj.functional_gradient(fkd.shard(x0))),
            obj.value(fkd.shard(x0)))


def test_three_ranks_pass_every_block_round_the_ring():
    # with 3 ranks each stage's source rank matters (with 2 any order is right)
    out = fkd.launch(_gradient_and_value, 3, timeout=60, **FAST)
    x0, y = _data(torch.float64)
    obj = fk.objectives.EnergyDistance(y)
    torch.testing.assert_close(out[0][0], obj.functional_gradient(x0), rtol=0, atol=1e-12)
    for r in range(3):
        torch.testing.assert_close(out[r][1], obj.value(x0), rtol=0, atol=1e-12)


def _fail_mid_run():
    """Rank 1 raises in a callback at step 2; rank 0 is then waiting in a ring pass."""
    x0, y = _data(torch.float64)

    def boom(state):
        if fkd.world()[0] == 1 and state.step == 2:
            raise RuntimeError("injected failure on rank 1")

    _flow(fkd.ShardedMMD(fkd.shard(y)), callbacks=[boom]).run(fkd.shard(x0), STEPS)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ckpt")
    return fkd.launch(_sharded_cases, 2, tmp, timeout=60, **FAST)


@pytest.mark.parametrize("name,tol", [("mmd64", 1e-10), ("mmd32", 1e-5), ("energy64", 1e-10),
                                      ("energy32", 1e-5)])
def test_sharded_flow_equals_the_single_process_flow(sharded, name, tol):
    dtype = torch.float64 if name.endswith("64") else torch.float32
    x0, y = _data(dtype)
    obj = (fk.objectives.MMD(y, fk.kernels.Gaussian(1.0)) if name.startswith("mmd")
           else fk.objectives.EnergyDistance(y))
    ref = _flow(obj, monitors=[fk.monitors.W2(y)], monitor_every=STEPS).run(x0, STEPS)
    got = sharded[0][name]
    assert sharded[1][name]["particles"] is None  # gathered on rank 0 only
    assert got["particles"].dtype == dtype
    g0 = obj.functional_gradient(x0)
    torch.testing.assert_close(got["grad0"], g0, rtol=0, atol=tol)
    torch.testing.assert_close(got["particles"], ref.particles, rtol=0, atol=tol)
    for r in (0, 1):  # the value and the monitor are the same numbers on every rank
        torch.testing.assert_close(sharded[r][name]["value"], obj.value(ref.particles),
                                   rtol=0, atol=tol)
        assert sharded[r][name]["W2"] == pytest.approx(ref.history["W2"], abs=tol)
        torch.testing.assert_close(sharded[r][name]["grad_norm2"], g0.pow(2).sum(1).mean(),
                                   rtol=0, atol=tol)


def test_a_group_of_one_rank_runs_the_single_process_flow(sharded):
    x0, y = _data(torch.float64)
    ref = _flow(fk.objectives.MMD(y)).run(x0, STEPS).particles
    for r in (0, 1):
        torch.testing.assert_close(sharded[r]["single_group"], ref, rtol=0, atol=1e-12)


def test_mismatched_ranks_raise_on_every_rank_naming_the_argument(sharded):
    for r in (0, 1):
        errs = sharded[r]["errors"]
        assert "x differs across ranks" in errs["dim"] and "event shape (3,)" in errs["dim"]
        assert "float32" in errs["dtype"] and "float64" in errs["dtype"]
        assert "gloo backend" in errs["device"] and "backend='nccl'" in errs["device"]


def test_per_rank_checkpoints_resume_bit_identically(sharded):
    assert sharded[0]["resume_equal"] and sharded[1]["resume_equal"]
    manifest = sharded[0]["manifest"]
    assert manifest["world_size"] == 2 and manifest["step"] == 3
    assert manifest["files"] == ["rank00000-of-00002.pt", "rank00001-of-00002.pt"]
    assert manifest["shard_sizes"] == [12, 11]
    for r in (0, 1):  # the resumed run records the same trace as the straight one
        assert sharded[r]["resumed_trace"] == sharded[r]["trace"]
        assert "exists" in sharded[r]["errors"]["exists"]
        assert "mixes steps 2..4" in sharded[r]["errors"]["mixed"]


def test_a_sharded_checkpoint_refuses_another_world_size(tmp_path):
    import json

    (tmp_path / "manifest.json").write_text(json.dumps(
        {"format": "flowkit.sharded-checkpoint", "world_size": 2, "files": []}))
    x0, y = _data(torch.float64)
    with pytest.raises(ValueError, match="written by 2 ranks but world_size is 1"):
        _flow(fkd.ShardedMMD(y)).resume(tmp_path)


def test_the_engine_records_the_global_gradient_norm_on_every_rank(sharded):
    x0, y = _data(torch.float64)
    ref = _flow(fk.objectives.MMD(y), monitors=[fk.monitors.GradNorm()],
                monitor_every=2).run(x0, 6)
    for r in (0, 1):
        assert sharded[r]["trace"] == pytest.approx(ref.trace["grad_norm2"], abs=1e-12)
        assert sharded[r]["monitor"] == pytest.approx(ref.history["grad_norm2"], abs=1e-12)


def test_a_rank_that_diverges_stops_every_rank(sharded):
    # rank 1's particles were scaled by 1e6 after step 2: the growth rule fires at step 3
    assert sharded[0]["diverged"] == sharded[1]["diverged"] == ("growth", 3)
    assert [sharded[r]["progress"] for r in (0, 1)] == [True, False]
    assert [sharded[r]["engine_progress"] for r in (0, 1)] == [True, False]


def test_a_rank_failing_mid_run_ends_the_job_with_errors_on_every_rank():
    t0 = time.monotonic()
    with pytest.raises(fkd.DistributedRunError) as info:
        fkd.launch(_fail_mid_run, 2, timeout=30, **FAST)
    assert time.monotonic() - t0 < 25  # the peer's death is seen, not waited out
    errors = info.value.errors
    assert "injected failure on rank 1" in errors[1]
    assert "DistributedFlowError" in errors[0] and "rank 0" in errors[0]


def test_gloo_with_cuda_tensors_names_the_fix():
    with pytest.raises(ValueError, match="backend='nccl'.*or move x to the CPU"):
        fkd._check_backend_device("gloo", torch.device("cuda", 0), "x")
    with pytest.raises(ValueError, match="backend='gloo'"):
        fkd._check_backend_device("nccl", torch.device("cpu"), "x")


def test_without_a_process_group_everything_is_one_process():
    x0, y = _data(torch.float64)
    assert fkd.world() == (0, 1) and fkd.show_progress()
    assert fkd.gather_particles(x0) is x0
    sharded, single = fkd.ShardedMMD(y), fk.objectives.MMD(y)
    a = _flow(sharded).run(x0, 2).particles
    b = _flow(single).run(x0, 2).particles
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    torch.testing.assert_close(sharded.value(a), single.value(b), rtol=0, atol=1e-12)


def test_shard_bounds_cover_the_rows_once():
    for n in (0, 1, 5, 23):
        for p in (1, 2, 3, 7):
            bounds = [fkd.shard_bounds(n, p, r) for r in range(p)]
            assert bounds[0][0] == 0 and bounds[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
            assert max(b - a for a, b in bounds) - min(b - a for a, b in bounds) <= 1
    with pytest.raises(ValueError, match="rank"):
        fkd.shard_bounds(5, 2, 2)


def _demo(out):
    from flowkit.cli import main

    return main(["demo", "--out", str(out), "--n", "60", "--steps", "10", "--every", "5",
                 "--no-progress"])


def test_the_demo_runs_sharded_and_rank_0_writes_the_run_folder(sharded, tmp_path):
    import json

    assert sharded[0]["demo"][0] == sharded[1]["demo"][0] == 0
    assert _demo(tmp_path) == 0
    (two,), (one,) = list(sharded[0]["demo"][1].iterdir()), list(tmp_path.iterdir())
    sharded, single = (json.loads((run / "metrics.json").read_text())["history"]
                       for run in (two, one))
    assert json.loads((two / "config.json").read_text())["config"]["world_size"] == 2
    assert sharded["step"] == single["step"] == [0, 5, 10]
    for name in ("W2", "MMD"):  # float32: the same flow up to the order of the sums
        assert sharded[name] == pytest.approx(single[name], rel=1e-4, abs=1e-6)
    assert (two / "snapshots.png").stat().st_size > 10_000
