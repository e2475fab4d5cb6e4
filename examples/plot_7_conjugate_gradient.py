"""
Conjugate gradient for games
============================

The conjugate-gradient optimizer of Naganuma & Iiduka (2023) [NI23]
(:class:`flowkit.games.ConjugateGradient`) against SGD on the saddle
``(1 + x^2)(100 - y^2)`` of the paper's code, both players moving at once
(:class:`flowkit.games.TwoPlayerOptimizer`).
"""

import torch
from torch import nn

from flowkit import games, plotting

game = games.ProductSaddle()
curves = {}
for label, make in {"SGD": lambda p: torch.optim.SGD(p, lr=5e-5),
                    "CG-FR": lambda p: games.ConjugateGradient(p, lr=5e-5, beta="FR"),
                    "CG-PRP": lambda p: games.ConjugateGradient(p, lr=5e-5, beta="PRP")
                    }.items():
    x = nn.Parameter(torch.tensor([2.0], dtype=torch.float64))
    y = nn.Parameter(torch.tensor([-4.0], dtype=torch.float64))
    opt = games.TwoPlayerOptimizer(make([x]), make([y]))
    distance = [float(torch.hypot(x, y))]
    for _ in range(100):
        opt.step(lambda x=x, y=y: game.value(x, y))
        distance.append(float(torch.hypot(x, y)))
    curves[label] = (list(range(len(distance))), distance)
    print(f"{label:<7} distance to the saddle point {distance[0]:.3f} -> {distance[-1]:.3f}")

fig = plotting.plot_metrics(curves, xlabel="iteration", ylabel="distance to (0, 0)")
