"""Algorithm 1 (AdversarialObjective run by the engine), Algorithm 2, checkpoints, history."""

from __future__ import annotations

import pytest
import torch

import flowkit as fk
from flowkit.objectives import AdversarialObjective
from flowkit.objectives.adversarial import LayerHistory, gaussian_base


def _eight(n=500, seed=0):
    data = fk.datasets.eight_gaussians(n, seed=seed)
    return data * (0.8 / data.abs().max())  # inside tanh's range, as in the toy experiment


def _objective(data, mode="pool", steps=5, hidden=16, seed=0, **kw):
    critic = fk.critics.WGANGPCritic(dim=2, hidden=hidden, steps=steps, batch_size=20, seed=seed)
    sampler = gaussian_base(0.5) if mode == "paper" else None
    return AdversarialObjective(critic, data, mode, sampler, output_map=torch.tanh, seed=seed,
                                **kw)


def _x0(n, seed=1):
    return 0.5 * torch.randn(n, 2, generator=torch.Generator().manual_seed(seed))


def test_algorithm1_halves_w2_on_eight_gaussians():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small matrices: one thread is fastest on a shared CPU
    try:
        data = _eight(500)
        critic = fk.critics.WGANGPCritic(dim=2, hidden=64, steps=40, lr=3e-4, seed=0)
        objective = AdversarialObjective(critic, data, output_map=torch.tanh)
        flow = fk.FunctionalGradientDescent(
            objective, 0.1, monitors=[fk.monitors.W2(data, transform=torch.tanh)],
            monitor_every=15, progress=False)
        result = flow.run(_x0(500), 15)
    finally:
        torch.set_num_threads(threads)
    w2 = result.history["W2"]
    assert result.history["step"] == [0, 15]
    assert w2[-1] <= 0.5 * w2[0], w2
    assert critic.total_steps == 15 * 40
    assert len(result.layers) == 15


def test_algorithm2_replays_the_particles_and_stack_round_trip(tmp_path):
    data = _eight(100)
    x0 = _x0(100)
    result = fk.FunctionalGradientDescent(_objective(data), 0.1, progress=False).run(x0, 4)
    replay = result.layers(x0)  # Algorithm 2 on the training base samples
    torch.testing.assert_close(replay, result.particles, rtol=0, atol=1e-6)
    path = result.layers.save(tmp_path / "stack.pt")
    loaded = fk.GradientLayerStack.load(path)
    z = _x0(300, seed=7)
    assert torch.equal(loaded(z), result.layers(z))
    # the layers follow -f(tanh(x)): x + eta * grad_x f(tanh x)
    layer = result.layers[0]
    net = layer.potential.potential.net
    zz = z.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(net(torch.tanh(zz)).sum(), zz)
    torch.testing.assert_close(layer(z), z + 0.1 * g)


@pytest.mark.parametrize("mode", ["pool", "paper"])
def test_checkpoint_resume_is_bit_identical(tmp_path, mode):
    data = _eight(100)
    x0 = _x0(100)
    flow = fk.FunctionalGradientDescent(_objective(data, mode), 0.1, progress=False)
    full = flow.run(x0, 6)

    first = fk.FunctionalGradientDescent(_objective(data, mode), 0.1, progress=False)
    first.run(x0, 3, checkpoint=tmp_path / "ckpt.pt")
    # a fresh objective with a different critic seed: everything must come from the file
    fresh = _objective(data, mode, seed=123)
    resumed = fk.FunctionalGradientDescent(fresh, 0.1, progress=False).resume(
        tmp_path / "ckpt.pt", n_steps=6)
    assert torch.equal(resumed.particles, full.particles)
    z = _x0(50, seed=9)
    assert torch.equal(resumed.layers(z), full.layers(z))
    assert fresh.critic.total_steps == 6 * 5
    if mode == "paper":
        assert len(fresh.layers) == 6


def test_paper_mode_pushes_fresh_samples_through_all_layers():
    data = _eight(100)
    calls = []
    base = gaussian_base(0.5)

    def sampler(n, generator):
        calls.append(n)
        return base(n, generator)

    critic = fk.critics.WGANGPCritic(dim=2, hidden=16, steps=5, batch_size=20, seed=0)
    objective = AdversarialObjective(critic, data, "paper", sampler, output_map=torch.tanh)
    seen = []
    fit = critic.fit

    def spy(particles, data, steps=None):
        assert callable(particles) and not isinstance(particles, torch.Tensor)
        seen.append(torch.cat([particles(k) for k in range(critic.steps)]))
        return fit(particles, data, steps)

    critic.fit = spy
    result = fk.FunctionalGradientDescent(objective, 0.1, progress=False).run(_x0(100), 3)
    assert calls == [100, 100, 100]  # T_0 * b fresh samples per outer step
    assert len(objective.layers) == 3 and len(result.layers) == 3
    # step k trains on fresh samples pushed through the k layers so far, seen through tanh
    gen = torch.Generator().manual_seed(0)
    for k in range(3):
        z = base(100, gen)
        torch.testing.assert_close(seen[k], torch.tanh(result.layers[:k](z)))


def test_layer_history_on_disk(tmp_path):
    data = _eight(100)
    x0 = _x0(100)
    kept = fk.FunctionalGradientDescent(_objective(data), 0.1, progress=False).run(x0, 3)
    objective = _objective(data, history_dir=tmp_path / "layers")
    lean = fk.FunctionalGradientDescent(objective, 0.1, keep_layers=False,
                                        progress=False).run(x0, 3)
    assert lean.layers is None
    assert sorted(p.name for p in (tmp_path / "layers").iterdir()) == [
        "layer_00001.pt", "layer_00002.pt", "layer_00003.pt"]
    history = LayerHistory.open(tmp_path / "layers")
    z = _x0(40, seed=5)
    assert len(history) == 3
    assert torch.equal(history(z), kept.layers(z))
    assert torch.equal(history.load_stack()(z), kept.layers(z))
    top = fk.layers.insert_top(None, history, output_map=torch.tanh)
    assert torch.equal(top(z), torch.tanh(kept.layers(z)))


def test_float64_particles_and_data():
    data = _eight(100).double()
    result = fk.FunctionalGradientDescent(_objective(data), 0.1, progress=False).run(
        _x0(100).double(), 2)
    assert result.particles.dtype == torch.float64


def test_adversarial_bad_inputs():
    data = _eight(50)
    critic = fk.critics.WGANGPCritic(dim=2, hidden=8, steps=2)
    with pytest.raises(ValueError, match="mode"):
        AdversarialObjective(critic, data, mode="fresh")
    with pytest.raises(ValueError, match="base_sampler"):
        AdversarialObjective(critic, data, mode="paper")
    with pytest.raises(TypeError, match="base_sampler"):
        AdversarialObjective(critic, data, base_sampler=3)
    with pytest.raises(TypeError, match="critic"):
        AdversarialObjective(object(), data)
    with pytest.raises(TypeError, match="data"):
        AdversarialObjective(critic, data.tolist())
    with pytest.raises(TypeError, match="output_map"):
        AdversarialObjective(critic, data, output_map="tanh")
    with pytest.raises(ValueError, match="push_batch_size"):
        AdversarialObjective(critic, data, push_batch_size=0)
    with pytest.raises(TypeError, match="seed"):
        AdversarialObjective(critic, data, seed=1.5)
    flow = fk.FunctionalGradientDescent(AdversarialObjective(critic, data), 0.1, progress=False)
    with pytest.raises(ValueError, match="x"):
        flow.run(torch.randn(10, 3), 1)
    with pytest.raises(TypeError, match="x"):
        flow.run(torch.zeros(10, 2, dtype=torch.float64), 1)
    with pytest.raises(ValueError, match="missing"):
        AdversarialObjective(critic, data).load_state_dict({"critic": {}})


def test_a_used_history_dir_is_refused_unless_resuming(tmp_path):
    data = _eight(60)
    x0 = _x0(60)
    directory = tmp_path / "layers"
    fk.FunctionalGradientDescent(_objective(data, history_dir=directory), 0.1,
                                 progress=False).run(x0, 2, checkpoint=tmp_path / "a.ckpt")
    stamps = [p.stat().st_mtime_ns for p in sorted(directory.iterdir())]
    second = _objective(data, history_dir=directory)
    with pytest.raises(ValueError, match="already holds 2 layer file"):
        fk.FunctionalGradientDescent(second, 0.1, progress=False).run(x0, 2)
    assert [p.stat().st_mtime_ns for p in sorted(directory.iterdir())] == stamps
    # resuming the run that wrote them continues the same history
    res = fk.FunctionalGradientDescent(_objective(data, history_dir=directory), 0.1,
                                       progress=False).resume(tmp_path / "a.ckpt", 3)
    history = LayerHistory.open(directory)
    assert len(history) == 3 and torch.equal(history(x0), res.layers(x0))
    # the history itself never overwrites an earlier one's files
    with pytest.raises(FileExistsError, match="LayerHistory.open"):
        LayerHistory(directory).append(res.layers[0])


def test_paper_mode_checkpoints_store_the_shared_layers_once(tmp_path):
    data = _eight(60)
    x0 = _x0(60)
    sizes = {}
    for n in (2, 6):
        path = tmp_path / f"paper{n}.ckpt"
        fk.FunctionalGradientDescent(_objective(data, "paper"), 0.1, progress=False).run(
            x0, n, checkpoint=path, checkpoint_every=2)
        sizes[n] = len(torch.load(path, weights_only=True)["payload"])
    # the payload does not grow with the layers: the objective's layers point into the
    # layer segments (one segment file holds two layers)
    segment = (tmp_path / "paper2.ckpt.layers" / "layers_00001-00002.pt").stat().st_size
    assert sizes[6] - sizes[2] < 0.25 * segment
    resumed = _objective(data, "paper", seed=5)
    res = fk.FunctionalGradientDescent(resumed, 0.1, progress=False).resume(path, 7)
    assert len(resumed.layers) == 7 and resumed.layers[0] is res.layers[0]
