"""Parameter-space trainers and critics: bad input names itself, divergence stops training."""

import pytest
import torch

import flowkit as fk
from flowkit.generators import WGANGP, ParametricKernelizedFlow
from flowkit.generators.kernelized_flow import cg_solve


def _data(n=60, d=2):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(0))


def _gen(out=2, latent=2):
    return fk.nn.MLP(latent, out, hidden=8, depth=2, generator=torch.Generator().manual_seed(0))


def _poison(module):
    with torch.no_grad():
        for p in module.parameters():
            p.fill_(float("nan"))


def test_wgan_gp_stops_on_a_non_finite_generator_instead_of_recording():
    y = _data()
    gan = WGANGP(y, hidden=8)
    _poison(gan.generator)
    with pytest.raises(fk.FlowDivergedError, match="non-finite"):
        gan.train(1, monitors=[fk.monitors.MMD(y)])
    gan = WGANGP(y, hidden=8)
    _poison(gan.generator)
    with pytest.raises(fk.FlowDivergedError, match="generator step 1"):
        gan.train(3)  # no monitors: the losses are checked


def test_wgan_gp_shapes_name_the_argument():
    y = _data()
    with pytest.raises(ValueError, match="data has events of shape"):
        WGANGP(y, critic=fk.critics.WGANGPCritic(dim=3, hidden=8))
    with pytest.raises(ValueError, match="generator maps"):
        WGANGP(y, hidden=8, generator=torch.nn.Linear(2, 3)).train(1)
    gan = WGANGP(y, hidden=8)
    with pytest.raises(ValueError, match="eval_latents"):
        gan.train(1, monitors=[fk.monitors.W2(y)], eval_latents=torch.randn(5, 3))
    with pytest.raises(ValueError, match="latents"):
        gan.sample(torch.randn(5, 3))


def test_kernelized_flow_arguments():
    y, K = _data(), fk.kernels.Gaussian(0.5)
    for kw, name in [({"cg_iters": 0}, "cg_iters"), ({"cg_iters": -1}, "cg_iters"),
                     ({"cg_tol": float("nan")}, "cg_tol"), ({"cg_tol": -1.0}, "cg_tol"),
                     ({"batch_size": 0}, "batch_size"), ({"batch_size": 1.5}, "batch_size"),
                     ({"max_direct": -1}, "max_direct"), ({"latent_dim": 0}, "latent_dim"),
                     ({"latent_dim": 3}, "latent_dim"), ({"solver": "x"}, "solver"),
                     ({"latent": torch.randn(8, 3)}, "latent")]:
        with pytest.raises(ValueError, match=name):
            ParametricKernelizedFlow(_gen(), y, K, 0.5, 1e-2, **{"batch_size": 8, **kw})
    with pytest.raises(TypeError, match="seed"):
        ParametricKernelizedFlow(_gen(), y, K, 0.5, 1e-2, seed="a")
    with pytest.raises(ValueError, match="generator maps"):
        ParametricKernelizedFlow(_gen(), _data(d=3), K, 0.5, 1e-2, batch_size=8).step()
    flow = ParametricKernelizedFlow(_gen(), y, K, 0.5, 1e-2, batch_size=8)
    for bad in (-1, "a"):
        with pytest.raises(ValueError, match="n_steps"):
            flow.run(bad)
    with pytest.raises(ValueError, match="n must be"):
        flow.sample(0)
    with pytest.raises(TypeError, match="seed"):
        flow.sample(3, seed="a")
    with pytest.raises(ValueError, match="solver"):
        flow.natural_direction(solver="x")


def test_kernelized_flow_stops_on_a_non_finite_generator():
    g = _gen()
    _poison(g)
    flow = ParametricKernelizedFlow(g, _data(), fk.kernels.Gaussian(0.5), 0.5, 1e-2,
                                    batch_size=8)
    with pytest.raises(fk.FlowDivergedError, match="step 0"):
        flow.run(2)


def test_conjugate_gradient_arguments():
    with pytest.raises(ValueError, match="max_iter"):
        cg_solve(lambda v: v, torch.ones(3), max_iter=0)
    with pytest.raises(ValueError, match="tol"):
        cg_solve(lambda v: v, torch.ones(3), tol=-1.0)
    with pytest.raises(ValueError, match="b contains"):
        cg_solve(lambda v: v, torch.tensor([float("nan"), 1.0]))
    with pytest.raises(ValueError, match="b must be a vector"):
        cg_solve(lambda v: v, torch.ones(2, 2))
    s, it, res = cg_solve(lambda v: 2 * v, torch.zeros(3))
    assert torch.equal(s, torch.zeros(3)) and it == 0 and float(res) == 0.0


@pytest.mark.parametrize("cls", [fk.critics.WGANGPCritic, fk.critics.MMDCritic])
def test_critic_network_size_is_checked_against_the_data(cls):
    with pytest.raises(ValueError, match="data has events of shape \\(2,\\)"):
        cls(dim=3, hidden=8, steps=1).fit(_data(), _data())


def test_mmd_critic_witness_and_penalty_inputs():
    critic = fk.critics.MMDCritic(hidden=8)
    with pytest.raises(ValueError, match="z has event shape"):
        critic.witness(torch.randn(4, 3), _data(), _data())
    nan = _data()
    nan[0, 0] = float("nan")
    with pytest.raises(ValueError, match="real contains"):
        fk.critics.gradient_penalty(lambda t: t.sum(1), nan, _data())
