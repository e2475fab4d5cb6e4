"""
Noise injection in the MMD flow
===============================

Arbel et al. (2019) [ArbelKorbaSalimGretton19] evaluate the MMD's first variation at noisy particles
``x + beta_n u`` to keep the flow from stalling far from the target;
:class:`flowkit.objectives.NoisyMMDFlow` with the schedule
:func:`flowkit.objectives.arbel_schedule`. A reduced version of their Gaussian experiment
(``flowkit reproduce noisy-mmd`` for the full one). flowkit's step on ``MMD^2`` is
``eta = gamma / 2`` of their step ``gamma`` on ``MMD^2 / 2``.
"""

import torch

import flowkit as fk

g = torch.Generator().manual_seed(0)
target = torch.randn(40, 1, generator=g, dtype=torch.float64)
x0 = 10.0 + 0.5 * torch.randn(40, 1, generator=g, dtype=torch.float64)
curves = {}
for beta in (0.0, 10.0):
    objective = fk.objectives.NoisyMMDFlow(
        target, fk.kernels.Gaussian(2.0),
        noise_level=fk.objectives.arbel_schedule(beta, 150), seed=1)
    flow = fk.FunctionalGradientDescent(objective, step_size=0.5, monitor_every=25,
                                        monitors=[fk.monitors.ObjectiveValue()],
                                        keep_layers=False, progress=False)
    result = flow.run(x0, n_steps=400)
    label = f"beta = {beta:g}" if beta else "no noise"
    curves[label] = (result.history["step"], result.history["objective"])
    print(f"{label:<10} final MMD^2 {result.history['objective'][-1]:.3e}")

fig = fk.plotting.plot_metrics(curves, xlabel="step", ylabel="MMD$^2$",
                               references={}, title="noise until step 150")
fk.plotting.reference_line(fig.axes[0], 150, "noise stops", axis="x")
