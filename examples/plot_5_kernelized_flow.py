"""
The parametric kernelized flow
==============================

A generator trained in parameter space by the kernelized MMD flow of Mroueh & Nguyen
(2021) [MN21]: ``theta <- theta - eta (lam I + G_theta)^{-1} grad MMD^2 / 2``, with
conjugate gradients on Jacobian-vector products
(:class:`flowkit.generators.ParametricKernelizedFlow`), against plain gradient descent.
"""

import torch

import flowkit as fk

data = fk.datasets.eight_gaussians(400, seed=0)
curves = {}
for label, solver, eta in (("gradient descent", "none", 5.0), ("kernelized flow", "cg", 0.5)):
    generator = fk.nn.MLP(2, 2, hidden=16, depth=3,
                          generator=torch.Generator().manual_seed(0))
    flow = fk.generators.ParametricKernelizedFlow(
        generator, data, fk.kernels.Gaussian(0.5), eta, 1e-3, batch_size=64,
        solver=solver, cg_iters=5, seed=1)
    mmd2 = [flow.step()["mmd2"] for _ in range(12)]
    curves[label] = (list(range(len(mmd2))), mmd2)
    print(f"{label:<17} MMD^2 {mmd2[0]:.4f} -> {mmd2[-1]:.4f}")

fig = fk.plotting.plot_metrics(curves, xlabel="parameter update",
                               ylabel="MMD$^2$ on the batch")
