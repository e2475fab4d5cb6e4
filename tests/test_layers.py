"""Gradient layers and stacks: the update, save/load round trip (Algorithm 2)."""

import pytest
import torch

import flowkit as fk


def _stack(n_layers=4):
    y = fk.datasets.eight_gaussians(50, seed=0)
    x0 = 0.5 * torch.randn(50, 2, generator=torch.Generator().manual_seed(3))
    res = fk.FunctionalGradientDescent(fk.objectives.MMD(y), 0.8, progress=False).run(x0, n_layers)
    return res.layers


def test_layer_is_x_minus_eta_grad():
    psi = fk.objectives.QuadraticObjective(2 * torch.eye(2)).first_variation(torch.zeros(1, 2))
    layer = fk.GradientLayer(psi, step_size=0.1)
    x = torch.tensor([[1.0, -2.0]])
    torch.testing.assert_close(layer(x), x - 0.1 * 2 * x)
    torch.testing.assert_close(layer.direction(x), -2 * x)


def test_save_load_regenerates_exactly(tmp_path):
    stack = _stack()
    z = torch.randn(300, 2, generator=torch.Generator().manual_seed(9))
    path = stack.save(tmp_path / "stack.pt")
    loaded = fk.GradientLayerStack.load(path)
    assert len(loaded) == len(stack)
    assert torch.equal(loaded(z), stack(z))
    assert torch.equal(loaded(z, batch_size=64), stack(z))


def test_save_refuses_to_overwrite(tmp_path):
    stack = _stack(2)
    path = tmp_path / "s.pt"
    stack.save(path)
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        stack.save(path)
    assert path.read_bytes() == before
    stack.save(path, overwrite=True)
    with pytest.raises(ValueError, match="not a flowkit"):
        torch.save([1, 2], tmp_path / "x.pt")
        fk.GradientLayerStack.load(tmp_path / "x.pt")


def test_slicing_and_callback():
    stack = _stack(4)
    z = torch.randn(10, 2)
    torch.testing.assert_close(stack[2:](stack[:2](z)), stack(z))
    steps = []
    stack(z, callback=lambda k, x: steps.append(k))
    assert steps == [1, 2, 3, 4]
    with pytest.raises(TypeError, match="GradientLayer"):
        stack.append(torch.nn.Linear(2, 2))


def test_closed_form_layers_are_differentiable_in_their_input():
    g = torch.Generator().manual_seed(0)
    y = torch.randn(6, 2, generator=g, dtype=torch.float64)
    for k in [fk.kernels.Gaussian(0.8), fk.kernels.InverseMultiquadric(1.0)]:
        psi = fk.objectives.MMD(y, k).first_variation(torch.randn(5, 2, generator=g,
                                                                  dtype=torch.float64))
        layer = fk.GradientLayer(psi, 0.4)
        x = torch.randn(4, 2, generator=g, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(layer, (x,))
