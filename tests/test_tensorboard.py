"""The TensorBoard sink writes the monitored values of a flow."""

import pytest
import torch

import flowkit as fk
from flowkit.tensorboard import TensorBoardSink


class FakeWriter:
    def __init__(self):
        self.calls = []

    def add_scalar(self, tag, value, step):
        self.calls.append((tag, value, step))


def _run(sink, steps=6):
    data = fk.datasets.eight_gaussians(64, seed=0)
    objective = fk.objectives.MMD(data, fk.kernels.Gaussian(0.5))
    x0 = 0.5 * torch.randn(64, 2, generator=torch.Generator().manual_seed(1))
    flow = fk.FunctionalGradientDescent(objective, 1.0, callbacks=[sink], progress=False,
                                        monitor_every=3, monitors=[fk.monitors.ObjectiveValue()])
    return flow.run(x0, steps)


def test_sink_writes_monitor_values_at_the_chosen_steps():
    writer = FakeWriter()
    result = _run(TensorBoardSink(writer, [fk.monitors.ObjectiveValue()], every=3,
                                  prefix="mmd/"))
    objective = [(s, v) for t, v, s in writer.calls if t == "mmd/objective"]
    assert [s for s, _ in objective] == [3, 6]
    # the same numbers the flow's own monitor recorded at those steps
    assert [v for _, v in objective] == pytest.approx(result.history["objective"][1:])
    assert all(isinstance(v, float) for _, v, _ in writer.calls)
    assert ("mmd/step_size", 1.0, 3) in writer.calls


def test_sink_skips_non_numbers_and_rejects_bad_arguments():
    writer = FakeWriter()
    TensorBoardSink(writer).log({"a": 1.5, "flag": True, "method": "exact",
                                 "nan": float("nan"), "t": torch.tensor(2.0)}, 4)
    assert writer.calls == [("a", 1.5, 4), ("t", 2.0, 4)]
    with pytest.raises(ValueError, match="every"):
        TensorBoardSink(writer, every=0)
    with pytest.raises(TypeError, match="writer"):
        TensorBoardSink(object())
    with pytest.raises(TypeError, match=r"monitors\[0\]"):
        TensorBoardSink(writer, [3])


def test_sink_writes_real_event_files(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    sink = TensorBoardSink(tmp_path, [fk.monitors.ObjectiveValue()], every=2)
    _run(sink, steps=4)
    sink.close()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert [e.step for e in events.Scalars("objective")] == [2, 4]
