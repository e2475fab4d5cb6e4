"""Every objective's public methods refuse bad particles with an error naming the argument."""

import numpy as np
import pytest
import torch

import flowkit as fk
from flowkit.objectives import (
    MMD,
    EnergyDistance,
    InteractionEnergy,
    NoisyMMDFlow,
    QuadraticObjective,
    SobolevDescent,
)

METHODS = ("value", "functional_gradient", "first_variation")


def _objectives():
    y = torch.randn(30, 2, generator=torch.Generator().manual_seed(0))
    return {
        "mmd": MMD(y),
        "energy": EnergyDistance(y),
        "noisy": NoisyMMDFlow(y, noise_level=0.5),
        "sobolev": SobolevDescent(y, n_features=16),
        "quadratic": QuadraticObjective(torch.eye(2)),
        "interaction": InteractionEnergy(1.0, 0.5, torch.zeros(2)),
    }


def _bad_inputs():
    x = torch.randn(20, 2, generator=torch.Generator().manual_seed(1))
    nan, inf = x.clone(), x.clone()
    nan[3, 0], inf[4, 1] = float("nan"), float("inf")
    return {
        "dimension": (torch.randn(20, 3), ValueError, "event shape|shape"),
        "nan": (nan, ValueError, "non-finite"),
        "inf": (inf, ValueError, "non-finite"),
        "empty": (torch.zeros(0, 2), ValueError, "empty"),
        "numpy": (x.numpy(), TypeError, "torch.Tensor"),
        "list": (x.tolist(), TypeError, "torch.Tensor"),
        "integer": (torch.zeros(20, 2, dtype=torch.long), TypeError, "floating"),
        "meta": (torch.zeros(20, 2, device="meta"), ValueError, "meta"),
        "one-dimensional": (torch.randn(20), ValueError, "at least 2"),
    }


def _combinations():
    for name in _objectives():
        for case in _bad_inputs():
            for method in METHODS:
                # SobolevDescent defines no value (a preconditioned direction); the
                # interaction energy's centre follows the particles, meta tensors included;
                # first_variation (the engine's per-step hook) leaves finiteness to the
                # engine, see test_first_variation_leaves_finiteness_to_the_engine
                if (name, method) == ("sobolev", "value") or (name, case) == (
                        "interaction", "meta") or (method == "first_variation" and case in (
                            "nan", "inf") and name != "sobolev"):
                    continue
                yield name, case, method


@pytest.mark.parametrize(("name", "case", "method"), list(_combinations()))
def test_bad_particles_are_refused_by_name(name, case, method):
    obj = _objectives()[name]
    x, error, match = _bad_inputs()[case]
    with pytest.raises(error, match=match) as info:
        getattr(obj, method)(x)
    assert "x" in str(info.value)


@pytest.mark.parametrize("name", ["mmd", "energy", "noisy", "sobolev", "quadratic"])
def test_dtype_mismatch_with_the_reference_is_refused(name):
    obj = _objectives()[name]
    with pytest.raises(TypeError, match="dtype"):
        obj.functional_gradient(torch.randn(5, 2, dtype=torch.float64))


@pytest.mark.parametrize("name", list(_objectives()))
def test_a_single_particle_is_fine(name):
    obj = _objectives()[name]
    g = obj.functional_gradient(torch.randn(1, 2))
    assert g.shape == (1, 2) and bool(torch.isfinite(g).all())


def test_sobolev_helpers_validate_too():
    obj = _objectives()["sobolev"]
    for method in ("critic", "gram", "feature_mmd2"):
        with pytest.raises(ValueError, match="x has event shape"):
            getattr(obj, method)(torch.randn(5, 3))


def test_target_errors_use_the_callers_name():
    bad = torch.full((5, 2), float("nan"))
    for cls in (MMD, EnergyDistance, NoisyMMDFlow, SobolevDescent):
        with pytest.raises(ValueError, match="^target contains"):
            cls(bad)
    with pytest.warns(DeprecationWarning, match="data"):
        with pytest.raises(ValueError, match="^data contains"):
            EnergyDistance(data=bad)
    with pytest.warns(DeprecationWarning, match="target"):
        obj = SobolevDescent(data=torch.randn(5, 2), n_features=8)
    assert obj.target.shape == (5, 2)


def test_analytic_constructor_arguments():
    with pytest.raises(ValueError, match="attraction"):
        InteractionEnergy(1.0, float("nan"))
    with pytest.raises(TypeError, match="attraction"):
        InteractionEnergy(1.0, "a")
    with pytest.raises(ValueError, match="center"):
        InteractionEnergy(center=torch.tensor([float("nan"), 0.0]))
    with pytest.raises(TypeError, match="center"):
        InteractionEnergy(center=np.zeros(2))
    with pytest.raises(ValueError, match="center"):
        InteractionEnergy(center=torch.zeros(3)).value(torch.randn(4, 2))
    with pytest.raises(TypeError, match="A must"):
        QuadraticObjective(np.eye(2))
    with pytest.raises(ValueError, match="A contains"):
        QuadraticObjective(torch.full((2, 2), float("nan")))
    with pytest.raises(ValueError, match="m contains"):
        QuadraticObjective(torch.eye(2), torch.tensor([float("nan"), 0.0]))
    with pytest.raises(TypeError, match="A must be a floating"):
        QuadraticObjective(torch.eye(2, dtype=torch.long))


def test_validation_cost_is_one_place_per_call(monkeypatch):
    # the engine's per-step path (first_variation) validates exactly once
    obj = _objectives()["mmd"]
    calls = []
    original = type(obj).validate
    monkeypatch.setattr(type(obj), "validate", lambda self, x: calls.append(1) or original(self, x))
    obj.functional_gradient(torch.randn(4, 2))
    assert len(calls) == 1


@pytest.mark.parametrize("name", ["mmd", "energy", "noisy", "quadratic", "interaction"])
def test_first_variation_leaves_finiteness_to_the_engine(name):
    # no device synchronisation per step: the engine checks x0 with validate() and the
    # particles after every update, so divergence is still reported (as FlowDivergedError)
    obj = _objectives()[name]
    x = torch.randn(6, 2)
    x[0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        obj.validate(x)
    psi = obj.first_variation(x)
    # the potential never gives a plausible number: kernel potentials refuse their
    # non-finite points when evaluated, the interaction energy carries the NaN, and the
    # quadratic's does not depend on the particles
    try:
        g = psi.grad(torch.zeros(3, 2))
    except ValueError as err:
        assert "non-finite" in str(err)
    else:
        assert not bool(torch.isfinite(g).all()) or name == "quadratic"
    with pytest.raises(ValueError, match="non-finite"):
        fk.FunctionalGradientDescent(obj, 0.1, progress=False).run(x, 2)


def test_potentials_name_points_of_the_wrong_space():
    x = torch.randn(10, 2)
    potentials = {name: obj.first_variation(x) for name, obj in _objectives().items()}
    critic = fk.critics.WGANGPCritic(hidden=8, steps=1)
    potentials["wgan-gp critic"] = critic.fit(x, x + 1.0)
    potentials["mmd critic"] = fk.critics.MMDCritic(hidden=8, steps=1).fit(x, x + 1.0)
    for name, psi in potentials.items():
        for method in (psi.forward, psi.grad):
            if name == "interaction":  # its potential is a quadratic in any dimension d
                continue
            with pytest.raises(ValueError, match="shape|entries") as info:
                method(torch.randn(3, 3))
            assert "z" in str(info.value) or "x" in str(info.value), name
            with pytest.raises(TypeError, match="torch.Tensor"):
                method(np.zeros((3, 2)))
