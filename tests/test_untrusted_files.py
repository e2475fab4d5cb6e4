"""Files from elsewhere: loading never runs code named by the file."""

import io
import pathlib

import pytest
import torch

import flowkit as fk
from flowkit import checkpoints as ckpt
from flowkit.objectives import MMD
from flowkit.objectives.adversarial import LayerHistory
from flowkit.serialization import safe_load

MARKER: list[pathlib.Path] = []


def _touch(path):
    pathlib.Path(path).write_text("pwned")
    return 0


class _Payload:
    """Unpickling calls ``_touch(marker)``: the harmless stand-in for malicious code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (_touch, (self.marker,))


def _problem():
    y = fk.datasets.eight_gaussians(30, seed=0)
    return y, 0.5 * torch.randn(30, 2, generator=torch.Generator().manual_seed(1))


def _flow(y):
    return fk.FunctionalGradientDescent(MMD(y, fk.kernels.Gaussian(0.5)), 0.5, progress=False)


def test_a_crafted_stack_file_does_not_run(tmp_path):
    marker = tmp_path / "marker"
    torch.save({"format": "flowkit.GradientLayerStack", "version": 1,
                "stack": _Payload(marker)}, tmp_path / "stack.pt")
    with pytest.raises(fk.UntrustedFileError, match="_touch"):
        fk.GradientLayerStack.load(tmp_path / "stack.pt")
    assert not marker.exists()


def test_a_crafted_history_layer_does_not_run(tmp_path):
    marker = tmp_path / "marker"
    (tmp_path / "h").mkdir()
    torch.save(_Payload(marker), tmp_path / "h" / "layer_00001.pt")
    history = LayerHistory.open(tmp_path / "h")
    with pytest.raises(fk.UntrustedFileError):
        history(torch.zeros(3, 2))
    assert not marker.exists()


def test_a_crafted_checkpoint_does_not_run(tmp_path):
    marker = tmp_path / "marker"
    y, x0 = _problem()
    # crafted main file: the payload sits where the format check would come later
    torch.save({"format": "flowkit.checkpoint", "version": 2, "meta": _Payload(marker)},
               tmp_path / "a.ckpt")
    with pytest.raises(fk.CheckpointError, match="_touch"):
        _flow(y).resume(tmp_path / "a.ckpt")
    assert not marker.exists()
    # a genuine checkpoint whose payload bytes were replaced (checksum recomputed)
    path = tmp_path / "b.ckpt"
    _flow(y).run(x0, 2, checkpoint=path)
    blob = torch.load(path, weights_only=True)
    blob["payload"] = ckpt.to_bytes({"state": _Payload(marker)})
    blob["sha256"] = ckpt.sha256(blob["payload"])
    torch.save(blob, path)
    with pytest.raises(fk.CheckpointError, match="_touch"):
        _flow(y).resume(path)
    assert not marker.exists()


def test_a_crafted_checkpoint_layer_does_not_run(tmp_path):
    marker = tmp_path / "marker"
    y, x0 = _problem()
    path = tmp_path / "c.ckpt"
    _flow(y).run(x0, 2, checkpoint=path)
    blob = torch.load(path, weights_only=True)
    data = ckpt.to_bytes(_Payload(marker))
    (tmp_path / "c.ckpt.layers" / "layers_00001-00002.pt").write_bytes(data)
    blob["layers"]["segments"][0][2] = ckpt.sha256(data)
    torch.save(blob, path)
    with pytest.raises(fk.CheckpointError, match="_touch"):
        _flow(y).resume(path)
    assert not marker.exists()


class MyPotential(fk.Potential):
    def forward(self, x):
        return 0.5 * (x ** 2).sum(1)


def test_builtin_stacks_load_and_own_classes_need_trust(tmp_path):
    y, x0 = _problem()
    stack = _flow(y).run(x0, 2).layers
    stack.append(fk.GradientLayer(MyPotential(), 0.1))
    path = stack.save(tmp_path / "s.pt")
    with pytest.raises(fk.UntrustedFileError, match="MyPotential.*trusted_classes"):
        fk.GradientLayerStack.load(path)
    loaded = fk.GradientLayerStack.load(path, trusted_classes=[MyPotential])
    assert torch.equal(loaded(x0), stack(x0))
    # potentials pulled back through torch.tanh (top insertion) load with no trust; the
    # critics' own classes are loaded in test_adversarial's stack round trip
    layers = fk.insertion.pull_back(_flow(y).run(x0, 2).layers, torch.tanh)
    layers.save(tmp_path / "top.pt")
    top = fk.layers.insert_top(None, fk.GradientLayerStack.load(tmp_path / "top.pt"))
    assert torch.equal(top(x0), torch.tanh(layers(x0)))
    buffer = io.BytesIO()
    torch.save(top, buffer)
    buffer.seek(0)
    assert torch.equal(safe_load(buffer, what="top")(x0), top(x0))
