"""
Watching a run in TensorBoard
=============================

:class:`flowkit.tensorboard.TensorBoardSink` is a callback that writes the monitored values
of a flow to TensorBoard while it runs (``pip install "flowkit[tensorboard]"``). Follow
the run with ``tensorboard --logdir runs/tb``. Here the log goes to a temporary folder and
is read back, to plot what TensorBoard would show.
"""

import tempfile

import torch

import flowkit as fk
from flowkit.tensorboard import TensorBoardSink

data = fk.datasets.eight_gaussians(200, seed=0)
x0 = 0.5 * torch.randn(200, 2, generator=torch.Generator().manual_seed(1))
objective = fk.objectives.MMD(data, fk.kernels.Gaussian(0.5))
logdir = tempfile.mkdtemp()
sink = TensorBoardSink(logdir, [fk.monitors.ObjectiveValue(), fk.monitors.W2(data)],
                       every=5, prefix="demo/")
flow = fk.FunctionalGradientDescent(objective, step_size=1.0, callbacks=[sink],
                                    progress=False)
flow.run(x0, n_steps=50)
sink.close()

# %%
# What TensorBoard reads from the event files:

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

events = EventAccumulator(logdir)
events.Reload()
curves = {tag: ([e.step for e in events.Scalars(tag)], [e.value for e in events.Scalars(tag)])
          for tag in ("demo/objective", "demo/W2")}
print(sorted(events.Tags()["scalars"]))
fig = fk.plotting.plot_metrics(curves, xlabel="step", ylabel="value (MMD$^2$, W$_2$)")
