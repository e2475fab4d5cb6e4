"""Noise-injected MMD flow (Arbel et al. 2019): the noisy gradient, seeding, resuming."""

import pytest
import torch

import flowkit as fk
from flowkit.objectives import MMD, NoisyMMDFlow, arbel_schedule

K = fk.kernels


def _problem(gen, n=30):
    mu = torch.randn(n, 1, generator=gen, dtype=torch.float64)
    x0 = 10.0 + 0.5 * torch.randn(n, 1, generator=gen, dtype=torch.float64)
    return mu, x0


def test_zero_noise_is_the_plain_mmd_flow(gen):
    mu, x = _problem(gen)
    noisy = NoisyMMDFlow(mu, K.Gaussian(2.0), noise_level=0.0)
    torch.testing.assert_close(noisy.functional_gradient(x),
                               MMD(mu, K.Gaussian(2.0)).functional_gradient(x))
    torch.testing.assert_close(noisy.value(x), MMD(mu, K.Gaussian(2.0)).value(x))


def test_gradient_is_read_at_the_noisy_points(gen):
    mu, x = _problem(gen)
    beta = 0.7
    noisy = NoisyMMDFlow(mu, K.Gaussian(2.0), noise_level=beta, seed=5)
    got = noisy.functional_gradient(x)
    u = torch.randn(x.shape, generator=torch.Generator().manual_seed(5), dtype=x.dtype)
    want = MMD(mu, K.Gaussian(2.0)).first_variation(x).grad(x + beta * u)
    torch.testing.assert_close(got, want)


def test_noise_is_seeded(gen):
    mu, x = _problem(gen)
    a = NoisyMMDFlow(mu, noise_level=1.0, seed=3).functional_gradient(x)
    b = NoisyMMDFlow(mu, noise_level=1.0, seed=3).functional_gradient(x)
    c = NoisyMMDFlow(mu, noise_level=1.0, seed=4).functional_gradient(x)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_schedule_follows_the_engine_steps():
    sched = arbel_schedule(10.0, until=3)
    assert [sched(k) for k in range(5)] == [10.0, 10.0, 10.0, 0.0, 0.0]
    mu = torch.randn(10, 1, dtype=torch.float64)
    obj = NoisyMMDFlow(mu, noise_level=sched)
    fk.FunctionalGradientDescent(obj, 0.05, progress=False).run(mu + 1.0, 4)
    assert obj.step == 4 and obj.noise(obj.step) == 0.0


def test_checkpoint_resume_is_bit_identical(gen, tmp_path):
    mu, x0 = _problem(gen)

    def engine():
        obj = NoisyMMDFlow(mu, K.Gaussian(2.0), noise_level=arbel_schedule(3.0, 6), seed=1)
        return fk.FunctionalGradientDescent(obj, 0.05, progress=False, keep_layers=False)

    full = engine().run(x0, 10).particles
    ckpt = tmp_path / "ckpt.pt"
    engine().run(x0, 5, checkpoint=ckpt)
    resumed = engine().resume(ckpt, n_steps=10).particles
    assert torch.equal(full, resumed)


def test_bad_noise_is_rejected(gen):
    mu, _ = _problem(gen)
    with pytest.raises(ValueError, match="noise_level"):
        NoisyMMDFlow(mu, noise_level=-1.0)
    with pytest.raises(TypeError, match="seed"):
        NoisyMMDFlow(mu, seed="zero")
    obj = NoisyMMDFlow(mu, noise_level=lambda k: -1.0)
    with pytest.raises(ValueError, match="beta"):
        obj.first_variation(mu)


def test_noise_gets_the_flow_unstuck(gen):
    # Arbel et al.'s Gaussian experiment in miniature (far start, sigma = 2, gamma = 1):
    # measured 0.072 without noise and 0.010 with beta = 10 for 700 of 1500 steps
    mu, x0 = _problem(gen, 40)

    def final(beta):
        obj = NoisyMMDFlow(mu, K.Gaussian(2.0), noise_level=arbel_schedule(beta, 700), seed=0)
        flow = fk.FunctionalGradientDescent(obj, 0.5, progress=False, keep_layers=False)
        return float(obj.value(flow.run(x0, 1500).particles))

    assert final(10.0) < 0.3 * final(0.0)


def test_arbel_schedule_arguments():
    for level in (float("nan"), -1.0):
        with pytest.raises(ValueError, match="level"):
            arbel_schedule(level)
    for until in (-1, "a"):
        with pytest.raises(ValueError, match="until"):
            arbel_schedule(1.0, until)
