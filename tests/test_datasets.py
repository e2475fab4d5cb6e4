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


def test_twenty_five_gaussians_score_is_the_gradient_of_the_sampled_law():
    # the log-density of the equal-weight mixture the sampler draws from, by autograd
    ticks = torch.linspace(-math.sqrt(2), math.sqrt(2), 5, dtype=torch.float64)
    centers, std = torch.cartesian_prod(ticks, ticks), 0.2
    x = (1.5 * torch.randn(40, 2, generator=torch.Generator().manual_seed(0),
                           dtype=torch.float64)).requires_grad_(True)
    log_pi = torch.logsumexp(-((x[:, None] - centers) ** 2).sum(-1) / (2 * std**2), 1)
    (want,) = torch.autograd.grad(log_pi.sum(), x)
    got = fk.datasets.twenty_five_gaussians_score(x.detach(), std=std)
    torch.testing.assert_close(got, want)
    # the sampler's own modes: points drawn at the centres score zero there
    sample = fk.datasets.twenty_five_gaussians(10, seed=1, std=0.0, dtype=torch.float64)
    assert float(fk.datasets.twenty_five_gaussians_score(sample).abs().max()) < 1e-9
    # far from every centre the softmax stays finite, the dtype is kept
    far = torch.tensor([[100.0, -80.0]])
    s = fk.datasets.twenty_five_gaussians_score(far)
    assert s.dtype == torch.float32 and bool(s.isfinite().all())


def test_mixture_score_names_its_arguments():
    c = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="x must"):
        fk.datasets.mixture_score(torch.zeros(4), c, 1.0)
    with pytest.raises(ValueError, match="centers must"):
        fk.datasets.mixture_score(torch.zeros(4, 3), c, 1.0)
    with pytest.raises(ValueError, match="std"):
        fk.datasets.mixture_score(torch.zeros(4, 2), c, 0.0)
