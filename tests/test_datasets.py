import math

import pytest
import torch

import flowkit as fk


@pytest.mark.parametrize(
    "name, n", [("8gaussians", 500), ("25gaussians", 1000), ("swissroll", 500)]
)
def test_default_sizes_seeding_and_dtype(name, n):
    make = fk.datasets.DATASETS[name]
    x = make()
    assert x.shape == (n, 2) and x.dtype == torch.float32
    assert torch.equal(make(seed=3), make(seed=3))
    assert not torch.equal(make(seed=3), make(seed=4))
    assert make(10, seed=0, dtype=torch.float64).dtype == torch.float64


def test_eight_gaussians_modes_on_the_circle():
    x = fk.datasets.eight_gaussians(4000, seed=0, dtype=torch.float64)
    r = x.norm(dim=1)
    assert abs(float(r.mean()) - math.sqrt(2)) < 0.01
    angles = torch.atan2(x[:, 1], x[:, 0]) / (math.pi / 4)
    assert float((angles - angles.round()).abs().max()) < 0.05  # within a mode
    assert len(set(angles.round().remainder(8).tolist())) == 8


def test_twenty_five_gaussians_grid():
    x = fk.datasets.twenty_five_gaussians(5000, seed=1, dtype=torch.float64)
    step = 2 * math.sqrt(2) / 4
    cells = ((x + math.sqrt(2)) / step).round()
    assert len({tuple(c) for c in cells.tolist()}) == 25
    assert float(x.abs().max()) < math.sqrt(2) + 0.1


@pytest.mark.parametrize("n", [0, -3, 2.5, True])
def test_bad_sizes(n):
    with pytest.raises(ValueError, match="n must be"):
        fk.datasets.eight_gaussians(n)


@pytest.mark.parametrize("make", [fk.datasets.eight_gaussians, fk.datasets.twenty_five_gaussians,
                                  fk.datasets.swiss_roll, fk.datasets.digits])
def test_bad_arguments_name_themselves(make):
    with pytest.raises(TypeError, match="seed must be"):
        make(10, seed="abc")
    with pytest.raises(ValueError, match="seed must be"):
        make(10, seed=-1)
    with pytest.raises(TypeError, match="seed must be"):
        make(10, seed=1.5)
    for n in (0, -3, 2.5):
        with pytest.raises(ValueError, match="n must be"):
            make(n)
    with pytest.raises(TypeError, match="dtype must be"):
        make(10, dtype=torch.long)
    with pytest.raises(ValueError, match="device"):
        make(10, device="nope")
    assert make(1).shape[0] == 1


def test_digits_refuses_more_images_than_it_has():
    with pytest.raises(ValueError, match="n must be an int >= 1 and <= 1797"):
        fk.datasets.digits(5000)
    assert fk.datasets.digits(1797).shape == (1797, 1, 8, 8)


@pytest.mark.parametrize(("make", "name"), [
    (fk.datasets.eight_gaussians, "radius"), (fk.datasets.eight_gaussians, "std"),
    (fk.datasets.twenty_five_gaussians, "half_width"), (fk.datasets.twenty_five_gaussians, "std"),
    (fk.datasets.swiss_roll, "noise"), (fk.datasets.swiss_roll, "scale")])
def test_shape_parameters_are_checked(make, name):
    for bad in (float("nan"), -1.0):
        with pytest.raises(ValueError, match=name):
            make(10, **{name: bad})
    with pytest.raises(TypeError, match=name):
        make(10, **{name: "a"})
