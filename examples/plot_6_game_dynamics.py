"""
Game dynamics and their local rates
===================================

Liang & Stokes (2019) [LS19]: on the bilinear game ``U = x^T C y`` the local rate of each
dynamics (SGA, alternating GDA, OMD, CO, PM, EG, IU) is the spectral radius of its
linearized update. :func:`flowkit.games.predicted_rate` computes it,
:func:`flowkit.games.run` measures it on a run.
"""

import torch

from flowkit import games, plotting

C = torch.tensor([[1.0, 0.3], [0.0, 0.8]], dtype=torch.float64)
game = games.Bilinear(C)
z0 = torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=torch.float64)
etas = [0.1, 0.2, 0.3, 0.4, 0.5]
curves = {}
for make in (games.OMD, games.EG, lambda eta: games.CO(eta, 0.1)):
    predicted, measured = [], []
    for eta in etas:
        dyn = make(eta)
        predicted.append(games.predicted_rate(game, dyn))
        measured.append(games.run(game, dyn, z0, 200).rate)
    curves[f"{dyn.name} predicted"] = (etas, predicted)
    curves[f"{dyn.name} measured"] = (etas, measured)
    print(dyn.name, [f"{p:.4f}/{m:.4f}" for p, m in zip(predicted, measured)])

fig = plotting.plot_metrics(curves, xlabel="step size eta", ylabel="local rate per step",
                            logy=False, references={"rate 1: no convergence": 1.0})
