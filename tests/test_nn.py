"""The shared MLP: one class for critics, generators and experiments."""

import pytest
import torch

import flowkit as fk
from flowkit.experiments.cg import _mlp


def test_old_location_is_a_deprecated_alias():
    with pytest.warns(DeprecationWarning, match="flowkit.nn.MLP"):
        cls = fk.critics.MLP
    assert cls is fk.nn.MLP


def test_every_user_builds_the_same_class():
    assert isinstance(_mlp([2, 8, 8, 1], torch.Generator().manual_seed(0)), fk.nn.MLP)
    assert isinstance(fk.critics.WGANGPCritic(hidden=8).net, fk.nn.MLP)
    assert isinstance(fk.critics.MMDCritic(hidden=8).features, fk.nn.MLP)
    assert isinstance(fk.generators.WGANGP(torch.randn(10, 2), hidden=8).generator.body,
                      fk.nn.MLP)


def test_input_check_names_the_argument():
    net = fk.nn.MLP(3, None, hidden=4, depth=2)
    net.check_input(torch.zeros(5, 3), "data")
    with pytest.raises(ValueError, match="data has events of shape \\(2,\\).*in_features=3"):
        net.check_input(torch.zeros(5, 2), "data")
    with pytest.raises(ValueError, match="activation"):
        fk.nn.MLP(2, activation="swish")


def test_renamed_public_names_keep_deprecated_aliases():
    from flowkit.generators import kernelized_flow
    from flowkit.objectives import analytic

    for module, old, new in [(fk.monitors, "MMDMonitor", "MMD"),
                             (fk.objectives, "QuadraticPotential", "QuadraticObjective"),
                             (analytic, "QuadraticPotential", "QuadraticObjective"),
                             (kernelized_flow, "conjugate_gradient", "cg_solve")]:
        with pytest.warns(DeprecationWarning, match=new):
            assert getattr(module, old) is getattr(module, new)
    with pytest.raises(AttributeError):
        fk.monitors.NoSuchMonitor  # noqa: B018
    assert fk.monitors.Monitor is not None
