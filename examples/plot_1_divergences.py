"""
Algorithm 3 with each divergence
================================

One start, one target (8 gaussians), the particle flow of Algorithm 3 of Nitanda & Suzuki
(2018) [NS18] for each divergence flowkit ships: the MMD with three kernels, the energy
distance and the debiased Sinkhorn divergence. Each step is the gradient layer
``x -> x - eta * grad psi(x)`` with ``psi`` the objective's first variation.
"""

import torch

import flowkit as fk

# 150 points: every kernel matrix is tiny, and a second thread costs more in
# synchronisation than it saves (most on a busy machine)
torch.set_num_threads(1)

data = fk.datasets.eight_gaussians(150, seed=0)
x0 = 0.5 * torch.randn(150, 2, generator=torch.Generator().manual_seed(1))
k = fk.kernels
objectives = {
    "MMD, Gaussian(0.5)": fk.objectives.MMD(data, k.Gaussian(0.5)),
    "MMD, IMQ(0.5)": fk.objectives.MMD(data, k.InverseMultiquadric(0.5)),
    "MMD, Laplacian(0.5)": fk.objectives.MMD(data, k.Laplacian(0.5)),
    "energy distance": fk.objectives.EnergyDistance(data),
    "Sinkhorn (blur 0.1)": fk.objectives.SinkhornDivergence(data, blur=0.1, max_iter=20),
}

# The Sinkhorn divergence solves an entropic OT problem at every step: fewer steps keep
# this page quick (its flow moves fastest per step anyway).
steps = {label: 5 if label.startswith("Sinkhorn") else 25 for label in objectives}
curves, finals = {}, {}
for label, objective in objectives.items():
    flow = fk.FunctionalGradientDescent(objective, step_size=1.0, monitor_every=5,
                                        monitors=[fk.monitors.W2(data)], progress=False)
    result = flow.run(x0, n_steps=steps[label])
    curves[label] = (result.history["step"], result.history["W2"])
    finals[label] = result.particles
    print(f"{label:<22} W2 {result.history['W2'][0]:.3f} -> {result.history['W2'][-1]:.3f}")

# %%
# W2 to the data along each flow (exact optimal transport through POT):

fig = fk.plotting.plot_metrics(curves, xlabel="outer step", ylabel="W$_2$ to the data",
                               title="Algorithm 3, one start, five divergences")

# %%
# The final particles over the data (drawn above it: the Sinkhorn flow puts its particles
# on the data points themselves):

fig = fk.plotting.plot_snapshots(finals, data, lim=2.0, step_label="")
