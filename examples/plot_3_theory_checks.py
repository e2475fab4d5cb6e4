"""
The theory checks: Theorem 1's rate and layer injectivity
=========================================================

Theorem 1 of Nitanda & Suzuki (2018) [NS18] bounds the smallest squared gradient norm
along the flow by ``(L(mu_0) - L*) / (eta T)`` (with ``eta <= 1/L``);
:func:`flowkit.theory.theorem1_certificate` checks a run against it. A gradient layer is
injective when ``1 - eta Lip(grad psi) > 0`` (:func:`flowkit.theory.injectivity_margin`).
"""

import torch

import flowkit as fk

data = fk.datasets.eight_gaussians(200, seed=0)
x0 = 0.5 * torch.randn(200, 2, generator=torch.Generator().manual_seed(1))
objective = fk.objectives.MMD(data, kernel=fk.kernels.Gaussian(0.5))
eta = 0.5
flow = fk.FunctionalGradientDescent(objective, step_size=eta, monitor_every=5,
                                    monitors=[fk.monitors.ObjectiveValue()], progress=False)
result = flow.run(x0, n_steps=60)
grad_norm2 = result.trace["grad_norm2"]
certificate = fk.theory.theorem1_certificate(
    grad_norm2, initial_value=result.history["objective"][0], minimum=0.0, step_size=eta)
print(certificate)

layer = fk.GradientLayer(objective.first_variation(x0), step_size=0.05)
print(f"injectivity margin 1 - eta Lip = {fk.theory.injectivity_margin(layer):.3f}")

# %%
# The running minimum of the squared gradient norm against the bound of Theorem 1:

steps = list(range(1, len(grad_norm2) + 1))
running = [min(grad_norm2[:t]) for t in steps]
bound = [result.history["objective"][0] / (eta * t) for t in steps]
fig = fk.plotting.plot_metrics({"min over steps of E||grad psi||$^2$": (steps, running),
                                "Theorem 1 bound (L(mu_0) - L*) / (eta T)": (steps, bound)},
                               xlabel="outer steps T", ylabel="squared gradient norm")
