"""Checkpoints: what they belong to, corruption, continuation targets, early failures."""

import threading

import pytest
import torch

import flowkit as fk
from flowkit.objectives import MMD, QuadraticObjective


def _problem(n=40):
    y = fk.datasets.eight_gaussians(n, seed=0)
    x0 = 0.5 * torch.randn(n, 2, generator=torch.Generator().manual_seed(1))
    return y, x0


def _flow(y, eta=0.5, bandwidth=0.5, **kw):
    return fk.FunctionalGradientDescent(MMD(y, fk.kernels.Gaussian(bandwidth)), eta,
                                        progress=False, **kw)


@pytest.fixture
def ck(tmp_path):
    y, x0 = _problem()
    path = tmp_path / "run.ckpt"
    _flow(y).run(x0, 6, checkpoint=path, checkpoint_every=2)
    return path


def test_resume_into_a_different_configuration_names_the_difference(ck):
    y, _ = _problem()
    with pytest.raises(fk.CheckpointError, match="kernel was Gaussian\\(bandwidth=0.5\\)"):
        _flow(y, bandwidth=1.0).resume(ck, 8)
    with pytest.raises(fk.CheckpointError, match="target"):
        _flow(y + 1.0).resume(ck, 8)
    with pytest.raises(fk.CheckpointError, match="step_size 0.5"):
        _flow(y, eta=0.3).resume(ck, 8)
    with pytest.raises(fk.CheckpointError, match="belongs to objective .*MMD"):
        fk.FunctionalGradientDescent(QuadraticObjective(torch.eye(2)), 0.5,
                                     progress=False).resume(ck, 8)
    with pytest.raises(fk.CheckpointError, match="keep_layers=False"):
        _flow(y, keep_layers=False).run(_problem()[1], 2, checkpoint=ck.with_name("lean"))
        _flow(y).resume(ck.with_name("lean"), 4)


def test_resume_with_a_different_schedule_is_refused(tmp_path):
    y, x0 = _problem()
    path = tmp_path / "sched.ckpt"
    fk.FunctionalGradientDescent(MMD(y), lambda k: 1.0 / (k + 1), progress=False).run(
        x0, 3, checkpoint=path)
    with pytest.raises(fk.CheckpointError, match="at step 1"):
        fk.FunctionalGradientDescent(MMD(y), lambda k: 1.0 / (k + 2) if k else 1.0,
                                     progress=False).resume(path, 5)


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "empty"])
def test_a_damaged_file_raises_one_named_error(ck, damage):
    data = ck.read_bytes()
    if damage == "truncate":
        ck.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        i = data.index(b"flowkit.checkpoint") + 4000
        ck.write_bytes(data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:])
    elif damage == "garbage":
        ck.write_bytes(b"not a checkpoint at all")
    else:
        ck.write_bytes(b"")
    y, _ = _problem()
    with pytest.raises(fk.CheckpointError):
        _flow(y).resume(ck, 8)
    assert issubclass(fk.CheckpointError, ValueError)


def test_a_damaged_layer_file_is_detected(ck):
    layer = ck.with_name(ck.name + ".layers") / "layers_00003-00004.pt"
    layer.write_bytes(layer.read_bytes()[:-10])
    y, _ = _problem()
    with pytest.raises(fk.CheckpointError, match="layers_00003-00004"):
        _flow(y).resume(ck, 8)


def test_fewer_steps_than_the_checkpoint_holds_is_an_error(ck):
    y, _ = _problem()
    with pytest.raises(ValueError, match="n_steps=4 is fewer than the 6 steps"):
        _flow(y).resume(ck, n_steps=4)
    assert _flow(y).resume(ck).n_steps == 6


def test_resume_never_overwrites_what_it_read(ck, tmp_path):
    y, x0 = _problem()
    before = ck.read_bytes()
    res = _flow(y).resume(ck, 8)
    assert res.n_steps == 8 and ck.read_bytes() == before
    with pytest.raises(FileExistsError, match="overwrite_checkpoint=True"):
        _flow(y).resume(ck, 8, checkpoint=ck)
    # a continuation target gets its own file and layers, resumable bit for bit
    other = tmp_path / "more.ckpt"
    _flow(y).resume(ck, 8, checkpoint=other)
    assert ck.read_bytes() == before
    full = _flow(y).run(x0, 10)
    again = _flow(y).resume(other, 10)
    assert torch.equal(again.particles, full.particles)
    assert torch.equal(again.layers(x0), full.layers(x0))
    _flow(y).resume(ck, 8, checkpoint=ck, overwrite_checkpoint=True)
    assert _flow(y).resume(ck).n_steps == 8


def test_bad_locations_fail_before_the_first_step(tmp_path):
    y, x0 = _problem()
    calls = []
    flow = _flow(y, callbacks=[lambda s: calls.append(s.step)])
    with pytest.raises(ValueError, match="does not exist"):
        flow.run(x0, 3, checkpoint=tmp_path / "missing" / "run.ckpt")
    with pytest.raises(ValueError, match="is a directory"):
        flow.run(x0, 3, checkpoint=tmp_path)
    with pytest.raises(ValueError, match="checkpoint_every"):
        flow.run(x0, 3, checkpoint=tmp_path / "a.ckpt", checkpoint_every=0)
    assert calls == []


class _LambdaObjective(fk.FunctionalObjective):
    def __init__(self, y):
        self.y = y

    def first_variation(self, x):
        c = self.y.mean(0)
        return fk.FunctionPotential(lambda z: 0.5 * ((z - c) ** 2).sum(1))


def test_an_unpicklable_potential_fails_before_the_first_step(tmp_path):
    y, x0 = _problem()
    calls = []
    flow = fk.FunctionalGradientDescent(_LambdaObjective(y), 0.5, progress=False,
                                        callbacks=[lambda s: calls.append(s.step)])
    with pytest.raises(ValueError, match="module-level flowkit.Potential subclass"):
        flow.run(x0, 60, checkpoint=tmp_path / "run.ckpt")
    assert calls == []
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no stray temporary file
    # without layers nothing unpicklable is saved
    lean = fk.FunctionalGradientDescent(_LambdaObjective(y), 0.5, progress=False,
                                        keep_layers=False)
    assert lean.run(x0, 3, checkpoint=tmp_path / "lean.ckpt").n_steps == 3


def test_two_writers_on_one_path_do_not_collide(tmp_path):
    y, x0 = _problem()
    path = tmp_path / "shared.ckpt"
    errors = []

    def work():
        try:
            _flow(y, keep_layers=False).run(x0, 40, checkpoint=path, checkpoint_every=1,
                                            overwrite_checkpoint=True)
        except Exception as err:  # noqa: BLE001 - the test reports any failure
            errors.append(err)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert not list(tmp_path.glob("*.tmp"))
    assert _flow(y, keep_layers=False).resume(path).n_steps == 40


def test_layers_are_appended_not_rewritten(tmp_path):
    y, x0 = _problem()
    path = tmp_path / "run.ckpt"
    _flow(y).run(x0, 4, checkpoint=path, checkpoint_every=2)
    sidecar = path.with_name(path.name + ".layers")
    stamps = {p.name: p.stat().st_mtime_ns for p in sidecar.iterdir()}
    assert sorted(stamps) == ["layers_00001-00002.pt", "layers_00003-00004.pt"]
    _flow(y).resume(path, 8, checkpoint=path, overwrite_checkpoint=True, checkpoint_every=2)
    assert {n: (sidecar / n).stat().st_mtime_ns for n in stamps} == stamps
    assert sorted(p.name for p in sidecar.iterdir()) == [
        "layers_00001-00002.pt", "layers_00003-00004.pt", "layers_00005-00006.pt",
        "layers_00007-00008.pt"]


_OBJECTIVES = {
    "energy": lambda y: fk.objectives.EnergyDistance(y),
    "noisy": lambda y: fk.objectives.NoisyMMDFlow(y, fk.kernels.Gaussian(0.5)),
    "sobolev": lambda y: fk.objectives.SobolevDescent(y),
    "sinkhorn": lambda y: fk.objectives.SinkhornDivergence(y),
    "interaction": lambda y: fk.objectives.InteractionEnergy(1.0, 0.5, torch.zeros(2)),
}


@pytest.mark.parametrize("name", sorted(_OBJECTIVES))
def test_every_builtin_objective_resumes_bit_identically(tmp_path, name):
    # run state restored by load_state_dict (a step counter, a generator inside noisy
    # layers) and diagnostics it does not restore (Sinkhorn's iteration counts) are not
    # taken for a different configuration, with a fresh objective or the same one
    y, x0 = _problem(30)
    make = _OBJECTIVES[name]
    full = fk.FunctionalGradientDescent(make(y), 0.1, progress=False).run(x0, 5)
    flow = fk.FunctionalGradientDescent(make(y), 0.1, progress=False)
    flow.run(x0, 3, checkpoint=tmp_path / "c.ckpt")
    fresh = fk.FunctionalGradientDescent(make(y), 0.1, progress=False).resume(
        tmp_path / "c.ckpt", 5)
    assert torch.equal(fresh.particles, full.particles)
    assert torch.equal(flow.resume(tmp_path / "c.ckpt", 5).particles, full.particles)


def test_record_value_must_match_to_resume(ck):
    y, _ = _problem()
    with pytest.raises(fk.CheckpointError, match="record_value=False"):
        _flow(y, record_value=True).resume(ck, 8)
