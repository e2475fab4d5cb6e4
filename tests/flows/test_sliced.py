"""Sliced-Wasserstein flow: value against POT, the potential, replay, POT's gallery loop."""

import pytest
import torch

import flowkit as fk
from flowkit.flows import SlicedWasserstein, random_projections, sliced_wasserstein2

ot = pytest.importorskip("ot")
DT = torch.float64


def _proj(d, n, seed=0):
    return random_projections(d, n, torch.Generator().manual_seed(seed), dtype=DT)


@pytest.mark.parametrize("n,m,weighted", [(40, 40, False), (37, 23, False), (37, 23, True)])
def test_value_equals_pot_with_the_same_projections(gen, n, m, weighted):
    x = torch.randn(n, 3, generator=gen, dtype=DT)
    y = torch.randn(m, 3, generator=gen, dtype=DT) + 1.0
    w = torch.rand(n, generator=gen, dtype=DT) if weighted else None
    w = w / w.sum() if weighted else None
    P = _proj(3, 9)
    mine = sliced_wasserstein2(x, y, P, w)
    pot = ot.sliced_wasserstein_distance(x, y, a=w, projections=P) ** 2
    assert abs(float(mine / pot) - 1) < 1e-10


@pytest.mark.parametrize("weighted", [False, True])
def test_gradient_convention_against_autograd(gen, weighted):
    x = torch.randn(25, 2, generator=gen, dtype=DT)
    obj = SlicedWasserstein(torch.randn(31, 2, generator=gen, dtype=DT), projections=_proj(2, 6))
    w = torch.rand(25, generator=gen, dtype=DT) if weighted else torch.full((25,), 1 / 25,
                                                                                 dtype=DT)
    w = w / w.sum()
    z = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(obj.value(z, w), z)
    torch.testing.assert_close(obj.first_variation(x, w).grad(x), g / w[:, None])
    if not weighted:
        torch.testing.assert_close(obj.functional_gradient(x), 25 * g)


def test_potential_replays_anywhere_consistently(gen):
    # the closed-form gradient is the derivative of the stored potential, at any point
    x = torch.randn(30, 2, generator=gen, dtype=DT)
    y = torch.randn(30, 2, generator=gen, dtype=DT) * 2
    obj = SlicedWasserstein(y, projections=_proj(2, 5))
    psi = obj.first_variation(x)
    z = 3.0 * torch.randn(200, 2, generator=gen, dtype=DT)
    torch.testing.assert_close(psi.grad(z), fk.Potential.grad(psi, z))
    layer = fk.GradientLayer(psi, 0.1)
    torch.testing.assert_close(layer(x), x - 0.1 * obj.functional_gradient(x))


def test_equal_sizes_transport_to_sorted_target_quantiles(gen):
    # N = M, one direction: b_r is the r-th sorted target projection
    x, y = torch.randn(12, 2, generator=gen, dtype=DT), torch.randn(12, 2, generator=gen, dtype=DT)
    P = _proj(2, 1)
    psi = SlicedWasserstein(y, projections=P).first_variation(x)
    px, py = (x @ P)[:, 0], (y @ P)[:, 0]
    matched = torch.sort(py).values[torch.argsort(torch.argsort(px))]
    torch.testing.assert_close(psi.grad(x), 2 * (px - matched)[:, None] * P.T)


def test_small_step_descends_and_dtypes_agree(gen):
    x = torch.randn(50, 2, generator=gen, dtype=DT)
    y = torch.randn(60, 2, generator=gen, dtype=DT) + 2
    obj = SlicedWasserstein(y, projections=_proj(2, 8))
    g = obj.functional_gradient(x)
    assert float(obj.value(x - 1e-2 * g)) < float(obj.value(x))
    obj32 = SlicedWasserstein(obj.target.float(), projections=obj.projections.float())
    torch.testing.assert_close(obj32.value(x.float()).double(), obj.value(x), rtol=1e-5, atol=0)
    torch.testing.assert_close(obj32.functional_gradient(x.float()).double(), g, rtol=1e-4,
                               atol=1e-5)


def _cross_and_ring(n):
    # stand-ins for the gallery's red-cross and tooth images (not shipped with POT's wheel)
    t = torch.linspace(-1, 1, n // 2, dtype=DT)
    cross = torch.cat([torch.stack([t, 0 * t], 1), torch.stack([0 * t, t], 1)]) * 10 + 15
    s = torch.linspace(0, 6.283, n, dtype=DT)
    ring = torch.stack([s.cos(), s.sin()], 1) * 8 + torch.tensor([75.0, 15.0], dtype=DT)
    return cross, ring


def test_pot_gallery_sliced_flow_is_reproduced():
    # POT's plot_sliced_wass_grad_flow_pytorch.py: x -= lr/(1 + i/50) * d SW / dx with 20
    # fresh directions per step, 50 steps, lr = 1e3, SW = sqrt(SW_2^2). Since
    # d SW / dx_i = grad psi(x_i) / (2 N SW), flowkit's step is eta_i = lr_i / (2 N SW_i).
    x0, y = _cross_and_ring(100)
    gen = torch.Generator().manual_seed(42)
    dirs = [random_projections(2, 20, gen, dtype=DT) for _ in range(50)]
    xp = x0.clone().requires_grad_(True)
    xf = x0.clone()
    n = x0.shape[0]
    for i, P in enumerate(dirs):
        lr = 1e3 / (1 + i / 5e1)
        loss = ot.sliced_wasserstein_distance(xp, y, projections=P)
        loss.backward()
        with torch.no_grad():
            xp -= lr * xp.grad
            xp.grad.zero_()
        obj = SlicedWasserstein(y, projections=P)
        sw = float(obj.value(xf)) ** 0.5
        xf = xf - lr / (2 * n * sw) * obj.functional_gradient(xf)
    assert float((xf - xp.detach()).abs().max()) < 1e-8
    assert float(sliced_wasserstein2(xf, y, _proj(2, 200))) < 1e-2 * float(
        sliced_wasserstein2(x0, y, _proj(2, 200)))


def test_resampled_directions_are_seeded_and_checkpointed(gen):
    y = torch.randn(40, 2, generator=gen, dtype=DT)
    x0 = torch.randn(40, 2, generator=gen, dtype=DT) + 3

    def run(n):
        obj = SlicedWasserstein(y, 10, resample=True, seed=3)
        return fk.FunctionalGradientDescent(obj, 0.5, progress=False).run(x0, n), obj

    (a, obj_a), (b, _) = run(5), run(5)
    torch.testing.assert_close(a.particles, b.particles, rtol=0, atol=0)
    obj = SlicedWasserstein(y, 10, resample=True, seed=99)
    obj.load_state_dict(obj_a.state_dict())
    torch.testing.assert_close(obj.projections, obj_a.projections, rtol=0, atol=0)


def test_bad_inputs_name_the_argument(gen):
    y = torch.randn(10, 2, generator=gen)
    with pytest.raises(ValueError, match="projections"):
        SlicedWasserstein(y, projections=torch.randn(3, 4))
    with pytest.raises(ValueError, match="n_projections"):
        SlicedWasserstein(y, 0)
    with pytest.raises(ValueError, match="weights"):
        sliced_wasserstein2(y, y, torch.randn(2, 3), torch.ones(10))
    with pytest.raises(ValueError, match="x has event shape"):
        SlicedWasserstein(y).validate(torch.randn(5, 3))
