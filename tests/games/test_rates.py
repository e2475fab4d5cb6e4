"""Predicted (spectral) rates against the closed forms of docs/games.md, measured rates against
predictions, and the run record (flowkit/games/rates.py)."""

import cmath
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flowkit import games

f64 = torch.float64


def _rotation(theta):
    c, s = math.cos(theta), math.sin(theta)
    return torch.tensor([[c, -s], [s, c]], dtype=f64)


def _bilinear(sigmas, theta=0.4, phi=1.1):
    """C = R(theta) diag(sigmas) R(phi)^T: prescribed singular values, no special axes."""
    return games.Bilinear(_rotation(theta) @ torch.diag(torch.tensor(sigmas, dtype=f64))
                          @ _rotation(phi).T)


# The closed forms of docs/games.md, written out here independently of the library.
def _omd_root(eta, s):
    a = 1j * eta * s
    disc = cmath.sqrt((1 - 2 * a) ** 2 + 4 * a)
    return max(abs((1 - 2 * a + disc) / 2), abs((1 - 2 * a - disc) / 2))


DIGEST = {
    "SGA": lambda eta, s, gamma: math.sqrt(1 + eta**2 * s**2),
    "EG": lambda eta, s, gamma: math.sqrt(1 - eta**2 * s**2 + eta**4 * s**4),
    "CO": lambda eta, s, gamma: math.sqrt((1 - gamma * s**2) ** 2 + eta**2 * s**2),
    "PM": lambda eta, s, gamma: math.sqrt((1 - eta * gamma * s**2) ** 2 + eta**2 * s**2),
    "IU": lambda eta, s, gamma: 1 / math.sqrt(1 + eta**2 * s**2),
    "OMD": lambda eta, s, gamma: _omd_root(eta, s),
    "AltGDA": lambda eta, s, gamma: 1.0 if eta * s <= 2 else abs(
        (2 - eta**2 * s**2 - math.sqrt((2 - eta**2 * s**2) ** 2 - 4)) / 2),
}


def _make(name, eta, gamma):
    if name == "CO":
        return games.CO(eta, gamma)
    if name == "PM":
        return games.PM(eta, gamma)
    return getattr(games, name)(eta)


@settings(max_examples=15, deadline=None)
@given(eta=st.floats(0.01, 1.5), s1=st.floats(0.1, 2.0), s2=st.floats(0.1, 2.0),
       gamma=st.floats(0.01, 1.0))
def test_predicted_rate_equals_the_closed_form_on_bilinear_games(eta, s1, s2, gamma):
    game = _bilinear([s1, s2])
    for name, formula in DIGEST.items():
        dyn = _make(name, eta, gamma)
        closed = max(formula(eta, s, gamma) for s in (s1, s2))
        # Repeated eigenvalues (OMD at eta s = 1/2, AltGDA at eta s = 2) are computed to
        # about sqrt(eps) only, hence 1e-6 rather than 1e-12.
        assert games.predicted_rate(game, dyn) == pytest.approx(closed, abs=1e-6), name
        assert games.bilinear_rate(dyn, [s1, s2]) == pytest.approx(closed, abs=1e-12), name


@settings(max_examples=25, deadline=None)
@given(eta=st.floats(0.01, 1.0), smax=st.floats(0.1, 3.0))
def test_omd_is_stable_iff_eta_sigma_max_below_one_over_sqrt3(eta, smax):
    margin = eta * smax - 1 / math.sqrt(3)
    if abs(margin) < 1e-3:
        return  # too close to the boundary for a strict comparison
    game = _bilinear([0.5 * smax, smax])
    assert (games.predicted_rate(game, games.OMD(eta)) < 1) == (margin < 0)


@pytest.mark.parametrize("eta,rho", [(0.1, 0.99494), (0.3, 0.94868), (0.5, 0.70711),
                                     (0.6, 1.0574)])
def test_omd_rates_for_identity_match_the_characteristic_roots(eta, rho):
    game = games.Bilinear(torch.eye(2, dtype=f64))
    assert games.predicted_rate(game, games.OMD(eta)) == pytest.approx(rho, abs=1e-4)


@pytest.mark.parametrize("eta", [0.2, 0.45])
@pytest.mark.parametrize("name", list(DIGEST))
def test_measured_rate_matches_prediction_to_1e_3(name, eta):
    game = _bilinear([0.6, 1.0])
    dyn = _make(name, eta, 0.5)
    z0 = torch.tensor([1.0, -0.5, 0.3, 0.8], dtype=f64)
    traj = games.run(game, dyn, z0, 1500)
    predicted = games.predicted_rate(game, dyn)
    assert abs(traj.rate - predicted) < 1e-3, (name, eta, traj.rate, predicted)
    assert traj.diverged == (predicted > 1 + 1e-9)


def test_sga_on_a_stable_quadratic_game_contracts_at_the_predicted_rate():
    # Linearization I - eta H: rho = max |1 - eta lambda(H)|.
    C = torch.tensor([[0.8, 0.3], [-0.2, 0.5]], dtype=f64)
    game = games.Quadratic(torch.eye(2, dtype=f64), C, 2 * torch.eye(2, dtype=f64))
    eta = 0.3
    lam = torch.linalg.eigvals(game.matrix)
    expected = float((1 - eta * lam).abs().max())
    assert games.predicted_rate(game, games.SGA(eta)) == pytest.approx(expected, abs=1e-12)
    traj = games.run(game, games.SGA(eta), torch.ones(4, dtype=f64), 300)
    assert traj.rate == pytest.approx(expected, abs=1e-3)
    assert not traj.diverged


def test_predicted_rate_at_a_nonzero_equilibrium_of_a_gan_game():
    # Dirac GAN with WGAN value and data at 0 is bilinear with C = [[-1]] around (0, psi*):
    # OMD's rate there is the closed form for sigma = 1.
    from torch import nn

    class Dirac(nn.Module):
        def __init__(self):
            super().__init__()
            self.theta = nn.Parameter(torch.zeros(1, dtype=f64))

        def forward(self, noise):
            return self.theta.expand(len(noise), 1)

    game = games.GANGame(Dirac(), nn.Linear(1, 1, bias=False).double(),
                         torch.zeros(4, 1, dtype=f64), "wgan", latent=torch.zeros(2, 1, dtype=f64))
    z_star = torch.zeros(2, dtype=f64)
    assert games.predicted_rate(game, games.OMD(0.3), z_star) == pytest.approx(
        games.bilinear_rate(games.OMD(0.3), [1.0]), abs=1e-9)
    with pytest.raises(ValueError, match="no known equilibrium"):
        games.run(game, games.OMD(0.3), z_star, 5)


def test_a_diverging_run_is_reported_not_raised():
    game = games.Bilinear(torch.eye(2, dtype=f64))
    traj = games.run(game, games.SGA(0.5), torch.ones(4, dtype=f64), 10_000)
    assert traj.diverged
    assert traj.stopped_at is not None and traj.stopped_at < 10_000  # stopped at the blow-up
    assert len(traj.distances) == traj.stopped_at + 1
    assert torch.isfinite(traj.distances).all() and torch.isfinite(traj.final).all()
    assert traj.rate == pytest.approx(math.sqrt(1 + 0.25), abs=1e-6)


def test_a_slowly_diverging_run_is_flagged_by_its_growth():
    game = games.Bilinear(torch.eye(2, dtype=f64))
    traj = games.run(game, games.SGA(0.1), torch.ones(4, dtype=f64), 600)
    assert traj.stopped_at is None and traj.diverged  # 1.005^600 ~ 20 > 10
    assert not games.run(game, games.SGA(0.1), torch.ones(4, dtype=f64), 100).diverged


def test_run_records_iterates_and_checks_its_input():
    game = games.Bilinear(torch.eye(2, dtype=f64))
    z0 = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=f64)
    traj = games.run(game, games.EG(0.3), z0, 20, record_iterates=True)
    assert traj.iterates.shape == (21, 4)
    torch.testing.assert_close(traj.iterates.norm(dim=1), traj.distances)
    torch.testing.assert_close(traj.iterates[-1], traj.final)
    with pytest.raises(ValueError, match="z0 must be a 1-D tensor of size"):
        games.run(game, games.EG(0.3), torch.zeros(3, dtype=f64), 5)
    with pytest.raises(ValueError, match="n_steps"):
        games.run(game, games.EG(0.3), z0, -1)
    with pytest.raises(TypeError, match="dyn must be"):
        games.run(game, "EG", z0, 5)


def test_measured_rate_of_exact_geometric_sequences():
    for rho in (0.5, 0.97, 1.0, 1.3):
        assert games.measured_rate([2.0 * rho**t for t in range(60)]) == pytest.approx(rho)
    # Values at or below the floor end the usable prefix.
    seq = [0.5**t for t in range(30)] + [1e-9] * 30
    assert games.measured_rate(seq, floor=1e-8) == pytest.approx(0.5)
    assert games.measured_rate([0.0, 0.0, 0.0]) == 0.0
    assert games.measured_rate([1.0, math.inf]) == math.inf
    with pytest.raises(ValueError, match="tail"):
        games.measured_rate([1.0, 0.5], tail=0.0)


def test_measured_rate_ignores_a_transient_and_averages_oscillation():
    # Fast transient 0.3^t on top of 0.9^t, times a bounded periodic factor.
    seq = [0.9**t * (1 + 0.3 * math.cos(0.7 * t)) + 5 * 0.3**t for t in range(400)]
    assert games.measured_rate(seq) == pytest.approx(0.9, abs=1e-3)


def test_bilinear_rate_rejects_bad_singular_values():
    with pytest.raises(ValueError, match="at least one"):
        games.bilinear_rate(games.SGA(0.1), [])
    with pytest.raises(ValueError, match=">= 0"):
        games.bilinear_rate(games.SGA(0.1), [-1.0])
