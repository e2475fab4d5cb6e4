"""Claims on the flows of :mod:`flowkit.flows`: SVGD's Gaussian fixed point (Liu & Wang 2018
[LiuWang18]) and the unadjusted Langevin algorithm's law on a Gaussian target (Roberts &
Tweedie 1996 [RobertsTweedie96])."""

from __future__ import annotations

import torch

from flowkit.claims.registry import Context, Outcome, register, verdict
from flowkit.flows import SVGD, LinearKernel, langevin, ula_moments

f64 = torch.float64
MEAN = torch.tensor([1.0, -2.0], dtype=f64)
COV = torch.tensor([[2.0, 0.6], [0.6, 1.0]], dtype=f64)


def _score(x: torch.Tensor) -> torch.Tensor:
    """The score of N(MEAN, COV), written here independently of flowkit."""
    return -(x - MEAN) @ torch.linalg.inv(COV)


def _moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    m = x.mean(0)
    xc = x - m
    return m, xc.T @ xc / x.shape[0]


@register("lw18-svgd-linear-kernel-moments", source="Liu & Wang 2018 [LiuWang18], sec. 3 "
          "(SVGD with a linear kernel matches moments)", reference="LiuWang18",
          statement="SVGD with the kernel 1 + x.y drives any sample of a Gaussian target to its "
                    "exact mean and covariance (empirical, 1/N).",
          instance="200 particles of N(0, 0.25 I) in R^2, target N((1, -2), [[2, .6], [.6, 1]]), "
                   "eta = 0.05, 1500 steps",
          oracle="the target's mean and covariance", tol=1e-6,
          tolerance="max absolute error of mean and covariance <= tol")
def _svgd_moments(ctx: Context) -> Outcome:
    x0 = 0.5 * torch.randn(200, 2, generator=ctx.generator(), dtype=f64)
    x = SVGD(score=_score, kernel=LinearKernel()).run(x0, 0.05, 1500).particles
    m, c = _moments(x)
    want_m, want_c = ctx.oracle((MEAN, COV), (MEAN + 0.01, COV))
    err = max(float((m - want_m).abs().max()), float((c - want_c).abs().max()))
    return verdict(err <= ctx.tol, {"max_error": err}, f"moments off by {err:.3g}")


@register("rt96-ula-gaussian-law", source="Roberts & Tweedie 1996 [RobertsTweedie96], the "
          "unadjusted Langevin algorithm", reference="RobertsTweedie96",
          statement="On a Gaussian target, ULA's particles have the mean and covariance of the "
                    "linear recursion m' = m + B(m - mu), C' = B C B^T + 2 eta I, "
                    "B = I - eta Sigma^-1.",
          instance="4000 particles of N((2, 2), 0.25 I), the target above, eta = 0.01, "
                   "100 steps, seed 7",
          oracle="the recursion's exact moments from the empirical start moments", tol=4.0,
          tolerance="every mean and covariance entry within tol standard errors")
def _ula_law(ctx: Context) -> Outcome:
    x0 = 0.5 * torch.randn(4000, 2, generator=ctx.generator(), dtype=f64) + 2.0
    m0, c0 = _moments(x0)
    x = langevin(x0, 0.01, 100, score=_score, seed=7).particles
    m, c = _moments(x)
    want_m, want_c = ula_moments(m0, c0, MEAN, COV, 0.01, 100)
    want_m = ctx.oracle(want_m, want_m + 0.2)
    var = torch.diagonal(want_c)
    se_m, se_c = (var / 4000).sqrt(), ((var[:, None] * var[None] + want_c**2) / 4000).sqrt()
    z = max(float(((m - want_m).abs() / se_m).max()), float(((c - want_c).abs() / se_c).max()))
    return verdict(z <= ctx.tol, {"max_standard_errors": z},
                   f"a moment is {z:.3g} standard errors from the recursion")
