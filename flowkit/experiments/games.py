"""``flowkit reproduce games``: local rates of game dynamics, predicted against measured.

Liang & Stokes (2019) [LS19] explain the local behaviour of GAN dynamics by the interaction
term ``C`` of the game's Jacobian. This experiment checks the rate predictions of
:mod:`flowkit.games` against runs:

1. the rate table: on ``U = x^T C y`` with ``C = U diag(sigmas) V^T`` (random rotations
   from the seed), for every dynamics and step size, the closed form per singular value
   of ``C`` (docs/games.md),
   the spectral radius of the linearized update and the rate fitted to a run;
2. OMD on ``C = I`` against the rates computed by hand from the characteristic roots of
   its linearization;
3. the figure "interaction matters": rate against ``||C||`` for SGA on a stable quadratic
   game (fixed and tuned step size: more interaction, slower) and for OMD, CO, PM and EG on
   a bilinear one (no interaction, no convergence).

Writes ``config.json``, ``results.json`` and ``interaction`` (PNG and PDF) to a run folder.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING

import torch

from flowkit.experiments._common import integer, launch, number

if TYPE_CHECKING:
    from flowkit.runs import RunFolder

NAME = "games"
HELP = "game dynamics: predicted vs measured local rates on bilinear games (Liang & Stokes)"

# OMD on C = I: rates computed by hand from the characteristic roots of its linearization.
_EXPECTED_OMD = {0.1: 0.99494, 0.3: 0.94868, 0.5: 0.70711, 0.6: 1.0574}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    positive = number(0, strict=True)
    parser.add_argument("--etas", type=positive, nargs="+", default=[0.1, 0.3, 0.5, 0.6],
                        help="step sizes of the rate table")
    parser.add_argument("--sigmas", type=positive, nargs="+", default=[0.5, 0.8, 1.0],
                        help="singular values of C in the rate table")
    parser.add_argument("--gamma", type=positive, default=0.1, help="CO consensus weight")
    parser.add_argument("--prediction-step", type=positive, default=1.0,
                        help="PM prediction step (PM = EG when it equals eta)")
    parser.add_argument("--steps", type=integer(10), default=3000, help="steps of each run")
    parser.add_argument("--figure-eta", type=positive, default=0.4,
                        help="step size of the bilinear panel of the figure")


def _orthogonal(n: int, gen: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))  # the sign fix makes Q Haar-distributed


def _interaction(sigmas: list[float], gen: torch.Generator) -> torch.Tensor:
    n = len(sigmas)
    return _orthogonal(n, gen) @ torch.diag(torch.tensor(sigmas, dtype=torch.float64)) \
        @ _orthogonal(n, gen).T


def _dynamics(eta: float, args: argparse.Namespace) -> list:
    from flowkit import games

    return [games.SGA(eta), games.AltGDA(eta), games.OMD(eta), games.CO(eta, args.gamma),
            games.PM(eta, args.prediction_step), games.IU(eta), games.EG(eta)]


def _row(game, dyn, z0: torch.Tensor, sigmas: list[float], steps: int) -> dict:
    from flowkit import games

    traj = games.run(game, dyn, z0, steps)
    predicted = games.predicted_rate(game, dyn)
    return {
        "dynamics": dyn.name, "eta": dyn.step_size, "repr": repr(dyn),
        "closed_form": games.bilinear_rate(dyn, sigmas),
        "predicted": predicted, "measured": traj.rate,
        "abs_error": abs(traj.rate - predicted), "diverged": traj.diverged,
        "steps_recorded": len(traj.distances) - 1,
    }


def _rate_table(args: argparse.Namespace, etas: list[float], steps: int,
                device: torch.device, gen: torch.Generator) -> tuple[list[dict], list[float]]:
    from flowkit import games

    C = _interaction(args.sigmas, gen).to(device)
    game = games.Bilinear(C)
    z0 = torch.randn(game.dim, generator=gen, dtype=torch.float64)
    z0 = (z0 / z0.norm()).to(device)
    rows = [_row(game, dyn, z0, args.sigmas, steps) for eta in etas for dyn in _dynamics(eta, args)]
    return rows, C.cpu().flatten().tolist()


def _omd_identity(etas: list[float], steps: int, device: torch.device) -> list[dict]:
    from flowkit import games

    game = games.Bilinear(torch.eye(2, dtype=torch.float64, device=device))
    z0 = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64, device=device)
    rows = []
    for eta in etas:
        row = _row(game, games.OMD(eta), z0, [1.0, 1.0], steps)
        row["expected"] = _EXPECTED_OMD.get(round(eta, 6))
        rows.append(row)
    return rows


def _interaction_curves(args: argparse.Namespace, n_points: int, n_measured: int, steps: int,
                        device: torch.device, gen: torch.Generator) -> dict:
    """Rates against the interaction strength s = ||C|| with C = s C0, ||C0|| = 1."""
    from flowkit import games

    C0 = _interaction([1.0, 0.8], gen).to(device)
    z0 = torch.randn(4, generator=gen, dtype=torch.float64)
    z0 = (z0 / z0.norm()).to(device)
    eye = torch.eye(2, dtype=torch.float64, device=device)
    strengths = torch.linspace(0.05, 2.5, n_points, dtype=torch.float64).tolist()
    measured_at = set(range(0, n_points, max(1, n_points // n_measured)))
    eta = args.figure_eta
    eta_grid = torch.logspace(-3, 0.5, 400, dtype=torch.float64, device=device)
    curves: dict = {"strength": strengths, "eta": eta, "stable": {}, "bilinear": {}}

    def record(panel: str, label: str, game, dyn, i: int) -> None:
        entry = curves[panel].setdefault(label, {"predicted": [], "measured": []})
        entry["predicted"].append(games.predicted_rate(game, dyn))
        if i in measured_at:
            entry["measured"].append((strengths[i], games.run(game, dyn, z0, steps).rate))

    for i, s in enumerate(strengths):
        stable = games.Quadratic(eye, s * C0, eye)
        record("stable", f"SGA, eta = {0.1:g}", stable, games.SGA(0.1), i)
        # Best step for this s: the slow-down is not an artefact of a step size tuned for
        # weak interaction. SGA's linearization is I - eta J, so rho = max |1 - eta lambda|
        # over the eigenvalues of J, which scans the whole grid at once.
        lam = torch.linalg.eigvals(stable.matrix)
        rho = (1 - eta_grid[:, None] * lam[None, :]).abs().amax(1)
        best = float(eta_grid[int(rho.argmin())])
        record("stable", "SGA, tuned eta", stable, games.SGA(best), i)
        bilinear = games.Bilinear(s * C0)
        for dyn in (games.OMD(eta), games.CO(eta, args.gamma),
                    games.PM(eta, args.prediction_step), games.EG(eta)):
            record("bilinear", dyn.name, bilinear, dyn, i)
    return curves


def _figure(curves: dict):
    from flowkit import plotting

    fig, axes = plotting.figure(2, width=7.0, height=4.0)
    titles = {"stable": "stable quadratic game (A = B = I): SGA",
              "bilinear": f"bilinear game, eta = {curves['eta']:g}"}
    for ax, panel in zip(axes, ("stable", "bilinear"), strict=True):
        entries = curves[panel]
        plotting.plot_curves(ax, {f"{label} (predicted)": (curves["strength"], e["predicted"])
                                  for label, e in entries.items()}, markevery=10_000)
        for line, (label, entry) in zip(ax.lines, entries.items(), strict=False):
            xs, ys = zip(*entry["measured"], strict=True)
            ax.plot(xs, ys, ls="none", marker="o", mfc="none", color=line.get_color(),
                    label=f"{label} (measured)")
        plotting.reference_line(ax, 1.0, "rate 1: no convergence")
        ax.set_title(titles[panel])
        ax.set_xlabel("interaction strength ||C|| (spectral norm)")
        ax.set_ylabel("local rate per step")
        ax.set_ylim(*((0.0, 1.1) if panel == "stable" else (0.5, 1.3)))
    fig.suptitle("Interaction matters (Liang & Stokes 2019): lines predicted, circles measured")
    plotting.place_legend(fig, loc="outside lower center")
    return fig


def _print_table(rows: list[dict]) -> None:
    print(f"{'dynamics':<8} {'eta':>5} {'closed form':>12} {'predicted':>10} {'measured':>10} "
          f"{'|diff|':>9} {'diverged':>8}")
    for r in rows:
        print(f"{r['dynamics']:<8} {r['eta']:>5g} {r['closed_form']:>12.6f} "
              f"{r['predicted']:>10.6f} {r['measured']:>10.6f} {r['abs_error']:>9.2e} "
              f"{'yes' if r['diverged'] else 'no':>8}")


def main(args: argparse.Namespace) -> RunFolder:
    """Run the experiment with parsed arguments (what the command line does)."""
    return launch(sys.modules[__name__], args)


def run(args: argparse.Namespace, run: RunFolder) -> None:
    from flowkit import plotting

    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(args.seed)
    etas = args.etas[:2] if args.quick else args.etas
    steps = min(args.steps, 600) if args.quick else args.steps
    t0 = time.perf_counter()

    rows, C = _rate_table(args, etas, steps, device, gen)
    print(f"Bilinear U = x^T C y, singular values of C = {args.sigmas}, {steps} steps, "
          f"CO gamma = {args.gamma:g}, PM prediction step = {args.prediction_step:g}")
    _print_table(rows)
    print(f"largest |measured - predicted| = {max(r['abs_error'] for r in rows):.2e}")

    omd = _omd_identity(etas, steps, device)
    print("\nOMD on C = I against the rates from the characteristic roots")
    for r in omd:
        expected = "-" if r["expected"] is None else f"{r['expected']:g}"
        print(f"  eta = {r['eta']:<4g} predicted {r['predicted']:.5f}  measured "
              f"{r['measured']:.5f}  expected {expected}")

    curves = _interaction_curves(args, 12 if args.quick else 40, 4 if args.quick else 8,
                                 min(steps, 2000), device, gen)
    plotting.save_figure(_figure(curves), run, "interaction")
    wall = time.perf_counter() - t0
    run.write_json("results.json", {"C": C, "table": rows, "omd_identity": omd,
                                  "interaction": curves, "wall_time": wall})
    print(f"\nwall time {wall:.1f} s")
