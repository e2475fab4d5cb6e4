"""Weighted particles in the objectives: the engine's convention
``functional_gradient(x, w)[i] == (1 / w_i) d value(x, w) / d x_i``, and a weight ``2/N``
on one particle is the same measure as two copies of it (value and gradient)."""

import pytest
import torch

import flowkit as fk
from flowkit.geometry import PointCloud

F64 = torch.float64


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _target():
    return torch.randn(7, 2, dtype=F64, generator=_gen(3))


def _objectives():
    y = _target()
    tw = torch.rand(7, dtype=F64, generator=_gen(4)) + 0.2
    tw = tw / tw.sum()
    return {
        "mmd": lambda: fk.objectives.MMD(y, fk.kernels.Gaussian(1.3)),
        "mmd_target_weights": lambda: fk.objectives.MMD(y, fk.kernels.Gaussian(1.3),
                                                        target_weights=tw),
        "mmd_imq": lambda: fk.objectives.MMD(y, fk.kernels.InverseMultiquadric()),
        "energy": lambda: fk.objectives.EnergyDistance(y, target_weights=tw),
        "noisy": lambda: fk.objectives.NoisyMMDFlow(y, noise_level=0.0),
        "sinkhorn": lambda: fk.objectives.SinkhornDivergence(y, blur=0.7, tol=1e-12,
                                                             target_weights=tw),
        "interaction": lambda: fk.objectives.InteractionEnergy(0.7, 1.5),
        "quadratic": lambda: fk.objectives.QuadraticObjective(
            torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=F64)),
    }


NAMES = list(_objectives())


def _particles(n=6, seed=0):
    x = torch.randn(n, 2, dtype=F64, generator=_gen(seed))
    w = torch.rand(n, dtype=F64, generator=_gen(seed + 1)) + 0.1
    return x, w / w.sum()


# the energy distance's value is not differentiable at coincident points, so autograd has
# no gradient to hold it against; its weighted convention is checked by duplication below
@pytest.mark.parametrize("name", [n for n in NAMES if n != "energy"])
def test_functional_gradient_is_the_weighted_l2_gradient(name):
    obj = _objectives()[name]()
    x, w = _particles()
    z = x.clone().requires_grad_(True)
    if name == "sinkhorn":  # the value is not recorded by autograd: finite differences
        h, grad = 1e-5, torch.zeros_like(x)
        for i in range(x.shape[0]):
            for d in range(2):
                e = torch.zeros_like(x)
                e[i, d] = h
                grad[i, d] = (obj.value(x + e, w) - obj.value(x - e, w)) / (2 * h)
        dl = grad
    else:
        (dl,) = torch.autograd.grad(obj.value(z, w), z)
    torch.testing.assert_close(obj.functional_gradient(x, w), dl / w[:, None],
                               rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", NAMES)
def test_a_doubled_weight_is_two_copies(name):
    obj = _objectives()[name]()
    n = 6
    x, _ = _particles(n)
    w = torch.full((n,), 1.0 / (n + 1), dtype=F64)
    w[0] = 2.0 / (n + 1)
    copies = torch.cat([x, x[:1]])
    torch.testing.assert_close(obj.value(x, w), obj.value(copies), rtol=1e-9, atol=1e-12)
    g_w, g_c = obj.functional_gradient(x, w), obj.functional_gradient(copies)
    torch.testing.assert_close(g_w, g_c[:n], rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(g_c[n], g_c[0], rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("name", NAMES)
def test_uniform_weights_are_no_weights(name):
    obj = _objectives()[name]()
    x, _ = _particles()
    u = torch.full((6,), 1.0 / 6, dtype=F64)
    torch.testing.assert_close(obj.value(x, u), obj.value(x), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(obj.functional_gradient(x, u), obj.functional_gradient(x),
                               rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_bad_weights_are_named(name):
    obj = _objectives()[name]()
    x, _ = _particles()
    with pytest.raises(ValueError, match="weights"):
        obj.value(x, torch.full((5,), 0.2, dtype=F64))
    with pytest.raises(ValueError, match="weights"):
        obj.functional_gradient(x, torch.full((6,), 0.5, dtype=F64))


def test_target_weights_are_checked_and_named():
    y = _target()
    with pytest.raises(ValueError, match="target_weights"):
        fk.objectives.MMD(y, target_weights=torch.full((7,), 0.5, dtype=F64))
    with pytest.raises(ValueError, match="target_weights"):
        fk.objectives.SinkhornDivergence(y, target_weights=torch.ones(3, dtype=F64) / 3)


def test_a_doubled_target_weight_is_two_target_copies():
    y = _target()
    tw = torch.full((7,), 1.0 / 8, dtype=F64)
    tw[2] = 2.0 / 8
    k = fk.kernels.Gaussian(0.9)
    x, w = _particles()
    a = fk.objectives.MMD(y, k, target_weights=tw)
    b = fk.objectives.MMD(torch.cat([y, y[2:3]]), k)
    torch.testing.assert_close(a.value(x, w), b.value(x, w))
    torch.testing.assert_close(a.functional_gradient(x, w), b.functional_gradient(x, w))


def test_mmd_takes_a_geometry():
    y = _target()
    tw = torch.rand(7, dtype=F64, generator=_gen(9)) + 0.1
    tw = tw / tw.sum()
    k = fk.kernels.Gaussian(0.8)
    x, w = _particles()
    from_kw = fk.objectives.MMD(y, k, target_weights=tw, backend="torch", block_size=3)
    from_geom = fk.objectives.MMD(PointCloud(y, b=tw, kernel=k, backend="torch", block_size=3))
    assert from_geom.geometry.policy == from_kw.geometry.policy
    torch.testing.assert_close(from_geom.value(x, w), from_kw.value(x, w))
    torch.testing.assert_close(from_geom.functional_gradient(x, w),
                               from_kw.functional_gradient(x, w))
    # and the weighted value is the geometry's weighted MMD^2
    torch.testing.assert_close(from_kw.value(x, w),
                               PointCloud(x, y, a=w, b=tw, kernel=k).mmd2())
    with pytest.raises(ValueError, match="block_size"):
        fk.objectives.MMD(PointCloud(y, kernel=k), block_size=4)


def test_weighted_mmd_flow_through_the_engine_is_two_copies():
    y = _target()
    n = 6
    x, _ = _particles(n)
    w = torch.full((n,), 1.0 / (n + 1), dtype=F64)
    w[0] = 2.0 / (n + 1)
    obj = fk.objectives.MMD(y, fk.kernels.Gaussian(1.0))
    run = lambda x0, **kw: fk.FunctionalGradientDescent(obj, 0.3, progress=False).run(  # noqa: E731
        x0, 5, **kw)
    weighted = run(x, weights=w)
    copies = run(torch.cat([x, x[:1]]))
    torch.testing.assert_close(weighted.particles, copies.particles[:n])
    torch.testing.assert_close(obj.value(weighted.particles, w), obj.value(copies.particles))
