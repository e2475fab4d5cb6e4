"""Bad input fails at the door with an error naming the argument."""

import pytest
import torch

import flowkit as fk

Y = torch.randn(10, 2)


@pytest.mark.parametrize(
    "x, err, words",
    [
        (torch.randn(5, 3), ValueError, "event shape"),
        (torch.randn(5), ValueError, "(N, *event)"),
        (torch.full((5, 2), float("nan")), ValueError, "non-finite"),
        (torch.tensor([[1.0, float("inf")]]), ValueError, "non-finite"),
        (torch.randn(0, 2), ValueError, "empty"),
        (torch.randn(5, 2, dtype=torch.float64), TypeError, "dtype"),
        (torch.randn(5, 2, device="meta"), ValueError, "meta"),
        (torch.ones(5, 2, dtype=torch.int64), TypeError, "floating"),
        ([[0.0, 1.0]], TypeError, "torch.Tensor"),
    ],
)
def test_bad_particles(x, err, words):
    flow = fk.FunctionalGradientDescent(fk.objectives.MMD(Y), 0.1, progress=False)
    with pytest.raises(err, match="x") as info:
        flow.run(x, 3)
    assert words in str(info.value)


@pytest.mark.parametrize("eta", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_step_size(eta):
    with pytest.raises(ValueError, match="step_size"):
        fk.FunctionalGradientDescent(fk.objectives.MMD(Y), eta)
    with pytest.raises(ValueError, match="step_size"):
        fk.GradientLayer(fk.objectives.MMD(Y).first_variation(Y), eta)


def test_bad_schedule_value_named_at_its_step():
    flow = fk.FunctionalGradientDescent(fk.objectives.MMD(Y), lambda k: 0.1 if k < 2 else 0.0,
                                        progress=False)
    with pytest.raises(ValueError, match="step 2"):
        flow.run(torch.randn(4, 2), 5)


def test_bad_target_and_kernel_parameters():
    with pytest.raises(ValueError, match="target is empty"):
        fk.objectives.MMD(torch.randn(0, 2))
    with pytest.raises(ValueError, match="target"):
        fk.objectives.MMD(torch.tensor([[float("nan"), 0.0]]))
    with pytest.raises(ValueError, match="bandwidth"):
        fk.kernels.Gaussian(0.0)
    with pytest.raises(ValueError, match="bandwidth"):
        fk.kernels.Laplacian(-1.0)
    with pytest.raises(TypeError, match="kernel"):
        fk.objectives.MMD(Y, kernel="gaussian")
    with pytest.raises(TypeError, match="objective"):
        fk.FunctionalGradientDescent("mmd", 0.1)
    with pytest.raises(ValueError, match="n_steps"):
        fk.FunctionalGradientDescent(fk.objectives.MMD(Y), 0.1).run(Y, -1)
    with pytest.raises(ValueError, match="memory_budget"):
        fk.kernels.kernel_sum(Y, Y, fk.kernels.Gaussian(), memory_budget=8)


def test_quadratic_rejects_bad_matrices_and_shapes():
    with pytest.raises(ValueError, match="symmetric"):
        fk.objectives.QuadraticObjective(torch.tensor([[1.0, 2.0], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="semi-definite"):
        fk.objectives.QuadraticObjective(-torch.eye(2))
    obj = fk.objectives.QuadraticObjective(torch.eye(2))
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        fk.FunctionalGradientDescent(obj, 0.1).run(torch.randn(3, 3), 1)
