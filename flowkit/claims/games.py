"""Claims of Liang & Stokes (2019) [LS19] on bilinear and quadratic games: local rates of
SGA, OMD, CO, PM, EG, IU and alternating GDA, OMD's stability threshold, and the slow-down
caused by the interaction term."""

from __future__ import annotations

import cmath
import math

import torch

from flowkit import games
from flowkit.claims.registry import Context, Outcome, register, verdict

f64 = torch.float64
LS19 = "Liang & Stokes 2019 [LS19]"
SIGMAS = (0.6, 1.0)
ETA = 0.3


def _rotation(theta: float) -> torch.Tensor:
    c, s = math.cos(theta), math.sin(theta)
    return torch.tensor([[c, -s], [s, c]], dtype=f64)


def _bilinear(ctx: Context, sigmas=SIGMAS) -> games.Bilinear:
    """C = R(a) diag(sigmas) R(b)^T with seeded angles: no special axes."""
    a, b = (2 * math.pi * torch.rand(2, generator=ctx.generator(7), dtype=f64)).tolist()
    return games.Bilinear(_rotation(a) @ torch.diag(torch.tensor(sigmas, dtype=f64))
                          @ _rotation(b).T)


def _z0(ctx: Context, dim: int = 4) -> torch.Tensor:
    return torch.randn(dim, generator=ctx.generator(11), dtype=f64)


# Per-singular-value contraction factors, written out from the update rules [LS19],
# independently of flowkit.games' own bilinear_factor.
def _omd_root(eta: float, s: float) -> float:
    a = 1j * eta * s
    disc = cmath.sqrt((1 - 2 * a) ** 2 + 4 * a)
    return max(abs((1 - 2 * a + disc) / 2), abs((1 - 2 * a - disc) / 2))


GAMMA = 0.5
FACTORS = {
    "SGA": (lambda: games.SGA(ETA), lambda s: math.sqrt(1 + ETA**2 * s**2),
            "Simultaneous gradient ascent diverges on a bilinear game at rate "
            "sqrt(1 + eta^2 sigma_max^2) for every eta > 0."),
    "OMD": (lambda: games.OMD(ETA), lambda s: _omd_root(ETA, s),
            "OMD converges on a bilinear game at the rate of the largest root of "
            "r^2 - (1 - 2 i eta s) r - i eta s."),
    "CO": (lambda: games.CO(ETA, GAMMA), lambda s: math.sqrt((1 - GAMMA * s**2) ** 2
                                                             + ETA**2 * s**2),
           "Consensus optimization contracts a bilinear game by sqrt((1 - gamma s^2)^2 + "
           "eta^2 s^2) per singular value."),
    "PM": (lambda: games.PM(ETA, GAMMA), lambda s: math.sqrt((1 - ETA * GAMMA * s**2) ** 2
                                                             + ETA**2 * s**2),
           "The predictive method contracts a bilinear game by sqrt((1 - eta gamma s^2)^2 + "
           "eta^2 s^2) per singular value."),
    "EG": (lambda: games.EG(ETA), lambda s: math.sqrt(1 - (ETA * s) ** 2 + (ETA * s) ** 4),
           "Extragradient contracts a bilinear game by sqrt(1 - eta^2 s^2 + eta^4 s^4) per "
           "singular value."),
    "IU": (lambda: games.IU(ETA), lambda s: 1 / math.sqrt(1 + ETA**2 * s**2),
           "Implicit updates contract a bilinear game by 1/sqrt(1 + eta^2 s^2) for every "
           "eta > 0."),
}


def _rate_claim(name: str):
    make, factor, statement = FACTORS[name]

    @register(f"ls19-{name.lower()}-bilinear-rate", source=f"{LS19}, {name} on bilinear "
              "(unstable) games", reference="LS19", statement=statement,
              instance=f"bilinear game, singular values {SIGMAS}, seeded rotations, eta = "
                       f"{ETA}" + (f", gamma = {GAMMA}" if name in ("CO", "PM") else "")
                       + ", 600 steps",
              oracle="the closed-form factor at the largest-factor singular value, written "
                     "for the check", tol=1e-3,
              tolerance="|measured rate - closed form| <= tol")
    def check(ctx: Context) -> Outcome:
        game = _bilinear(ctx)
        closed = max(factor(s) for s in SIGMAS)
        wrong = max(factor(s) for s in (1.3 * SIGMAS[0], 1.3 * SIGMAS[1]))
        want = ctx.oracle(closed, wrong)
        traj = games.run(game, make(), _z0(ctx), 600)
        err = abs(traj.rate - want)
        return verdict(err <= ctx.tol, {"measured": traj.rate, "closed_form": closed,
                                        "abs_error": err, "diverged": float(traj.diverged)},
                       f"measured {traj.rate:.6f} against {want:.6f}")

    return check


for _name in FACTORS:
    _rate_claim(_name)


@register("ls19-altgda-cycles", source=f"{LS19}, bilinear games (alternating updates)",
          reference="LS19",
          statement="Alternating GDA on a bilinear game neither converges nor diverges while "
                    "eta sigma_max <= 2 (spectral radius 1).",
          instance=f"bilinear game, singular values {SIGMAS}, eta = 0.5, 2000 steps",
          oracle="the block's eigenvalues: determinant 1, trace 2 - eta^2 s^2 (modulus 1)",
          tol=1e-3, tolerance="|measured rate - 1| <= tol and the distance stays within a "
                              "constant factor of ||z_0||")
def _altgda(ctx: Context) -> Outcome:
    game = _bilinear(ctx)
    traj = games.run(game, games.AltGDA(0.5), _z0(ctx), 2000)
    want = ctx.oracle(1.0, math.sqrt(1 + 0.25 * SIGMAS[1] ** 2))
    d = traj.distances
    spread = float(max(d) / min(d))
    ok = abs(traj.rate - want) <= ctx.tol and spread < 10
    return verdict(ok, {"measured": traj.rate, "max_over_min_distance": spread},
                   f"measured rate {traj.rate:.6f}, expected {want}")


@register("ls19-omd-threshold", source=f"{LS19}, OMD's learning-rate condition",
          reference="LS19",
          statement="OMD is locally stable on a bilinear game iff eta sigma_max < 1/sqrt(3).",
          instance="C = I (2x2); eta at 0.98 and 1.02 times 1/sqrt(3), 3000 steps each",
          oracle="the threshold 1/sqrt(3) from the characteristic polynomial", tol=0.02,
          tolerance="stable at (1 - tol) x threshold, unstable at (1 + tol) x threshold, "
                    "both measured")
def _omd_threshold(ctx: Context) -> Outcome:
    game = games.Bilinear(torch.eye(2, dtype=f64))
    threshold = ctx.oracle(1 / math.sqrt(3), 0.5)
    below = games.run(game, games.OMD((1 - ctx.tol) * threshold), _z0(ctx), 3000)
    above = games.run(game, games.OMD((1 + ctx.tol) * threshold), _z0(ctx), 3000)
    ok = below.rate < 1 and above.rate > 1
    return verdict(ok, {"threshold": threshold, "rate_below": below.rate,
                        "rate_above": above.rate},
                   f"rates {below.rate:.6f} below and {above.rate:.6f} above {threshold:.4f}")


@register("ls19-omd-small-step", source=f"{LS19}, OMD's rate for small eta",
          reference="LS19",
          statement="For small eta OMD's bilinear rate is 1 - eta^2 sigma^2 / 2 + O(eta^3).",
          instance="C = I, eta in (0.04, 0.02)",
          oracle="1 - eta^2/2; the error must shrink like eta^3", tol=0.05,
          tolerance="error(0.02) / error(0.04) <= 1/8 + tol")
def _omd_small(ctx: Context) -> Outcome:
    game = games.Bilinear(torch.eye(2, dtype=f64))
    c = ctx.oracle(0.5, 0.4)
    errs = [abs(games.predicted_rate(game, games.OMD(eta)) - (1 - c * eta**2))
            for eta in (0.04, 0.02)]
    ratio = errs[1] / errs[0]
    return verdict(ratio <= 1 / 8 + ctx.tol, {"err_0.04": errs[0], "err_0.02": errs[1],
                                               "ratio": ratio},
                   f"the error shrinks by {ratio:.3g} when eta halves, not eta^3")


@register("ls19-interaction-slowdown", source=f"{LS19}, stable games: the interaction "
          "term slows SGA down", reference="LS19",
          statement="On a stable quadratic game SGA's local rate worsens as the interaction "
                    "||C|| grows (rate |1 - eta (a + i c)| for A = B = a I, C = c I).",
          instance="A = B = I, C = c I with c in (0, 1, 2), eta = 0.2, 400 steps",
          oracle="sqrt((1 - eta a)^2 + eta^2 c^2), increasing in c", tol=1e-3,
          tolerance="|measured - closed form| <= tol and measured increasing in c")
def _slowdown(ctx: Context) -> Outcome:
    eye = torch.eye(2, dtype=f64)
    rates, worst = [], 0.0
    for c in (0.0, 1.0, 2.0):
        game = games.Quadratic(eye, c * eye, eye)
        rate = games.run(game, games.SGA(0.2), _z0(ctx), 400).rate
        want = ctx.oracle(math.sqrt(0.8**2 + 0.04 * c * c), 0.8)
        worst = max(worst, abs(rate - want))
        rates.append(rate)
    ok = worst <= ctx.tol and rates[0] < rates[1] < rates[2]
    return verdict(ok, {"rate_c0": rates[0], "rate_c1": rates[1], "rate_c2": rates[2],
                        "max_abs_error": worst}, f"rates {rates}, error {worst:.3g}")


@register("ls19-predicted-rate", source=f"{LS19}, local rate = spectral radius of the "
          "linearized update", reference="LS19",
          statement="The spectral radius of the linearized update (flowkit.games."
                    "predicted_rate) equals the closed-form rate for OMD, EG and IU.",
          instance=f"bilinear game, singular values {SIGMAS}, eta = {ETA}",
          oracle="the closed forms above", tol=1e-8, tolerance="absolute error <= tol")
def _predicted(ctx: Context) -> Outcome:
    game = _bilinear(ctx)
    worst = 0.0
    for name in ("OMD", "EG", "IU"):
        make, factor, _ = FACTORS[name]
        want = ctx.oracle(max(factor(s) for s in SIGMAS), max(factor(s) for s in SIGMAS) + 0.01)
        worst = max(worst, abs(games.predicted_rate(game, make()) - want))
    return verdict(worst <= ctx.tol, {"max_abs_error": worst}, f"error {worst:.3g}")
