"""Parametric kernelized MMD flow, flowkit's reconstruction of Mroueh & Nguyen 2021 [MN21]
(the paper's exact equations are not spelled out in its abstract; docs/mmd.md, sec. 5):
CG == direct solve, descent property."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import flowkit as fk
from flowkit.generators import ParametricKernelizedFlow
from flowkit.generators.kernelized_flow import cg_solve


def _flow(seed=0, hidden=6, lam=1e-2, eta=0.1, bandwidth=0.7, n=40, solver="cg"):
    g = torch.Generator().manual_seed(seed)
    gen = fk.nn.MLP(2, 2, hidden=hidden, depth=2, generator=g).double()
    data = fk.datasets.eight_gaussians(80, seed=seed, dtype=torch.float64)
    z = torch.randn(n, 2, generator=g, dtype=torch.float64)
    return ParametricKernelizedFlow(gen, data, fk.kernels.Gaussian(bandwidth), eta, lam,
                                    latent=z, solver=solver, cg_iters=500, cg_tol=1e-12)


def test_cg_solve_equals_direct_solve_on_small_P():
    flow = _flow()
    assert flow.n_params < 100
    s_cg, info = flow.natural_direction(solver="cg")
    s_direct, _ = flow.natural_direction(solver="direct")
    assert info["cg_residual"] < 1e-10
    torch.testing.assert_close(s_cg, s_direct, rtol=1e-8, atol=1e-10)


def test_gram_matrix_is_B_transpose_B():
    # G = J^T H J / n^2 with H the block matrix of cross Hessians grad_1 grad_2 k: build it
    # densely from autograd and compare one matrix-vector product.
    flow = _flow(hidden=4, n=12)
    z = flow.latent
    x, params, _, gram_matvec = flow._operators(z)
    n, d = x.shape
    k = flow.kernel

    def kk(a, b):
        return k(a[None], b[None])[0, 0]

    hess = torch.zeros(n * d, n * d, dtype=x.dtype)
    for i in range(n):
        for j in range(n):
            h = torch.autograd.functional.jacobian(
                lambda b, i=i: torch.autograd.functional.jacobian(
                    lambda a: kk(a, b), x[i], create_graph=True), x[j])
            hess[i * d:(i + 1) * d, j * d:(j + 1) * d] = h
    jac = torch.func.jacrev(
        lambda p: torch.func.functional_call(flow.generator, p, (z,)).flatten())(params)
    jmat = torch.cat([jac[name].reshape(n * d, -1) for name in flow.names], 1)
    v = torch.randn(jmat.shape[1], dtype=x.dtype, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(gram_matvec(v), jmat.T @ hess @ jmat @ v / n**2)


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 10_000), lam=st.sampled_from([1e-3, 1e-2, 1.0]),
       bandwidth=st.sampled_from([0.5, 1.0, 2.0]))
def test_mmd2_does_not_increase_for_small_eta(seed, lam, bandwidth):
    flow = _flow(seed=seed, lam=lam, bandwidth=bandwidth, eta=1e-3 * lam)
    with torch.no_grad():
        before = float(fk.kernels.mmd2(flow.generator(flow.latent), flow.data, flow.kernel))
        flow.step()
        after = float(fk.kernels.mmd2(flow.generator(flow.latent), flow.data, flow.kernel))
    assert after <= before + 1e-12


def test_conjugate_gradient_on_a_known_system():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(20, 20, generator=g, dtype=torch.float64)
    spd = a @ a.T + torch.eye(20, dtype=torch.float64)
    b = torch.randn(20, generator=g, dtype=torch.float64)
    s, it, res = cg_solve(lambda v: spd @ v, b, max_iter=200, tol=1e-12)
    torch.testing.assert_close(s, torch.linalg.solve(spd, b))
    assert it <= 200 and float(res) < 1e-11


def test_training_reduces_mmd_and_plain_gd_is_available():
    for solver in ("cg", "none"):
        flow = _flow(hidden=16, solver=solver, eta=0.5 if solver == "cg" else 5.0, lam=1e-3)
        flow.cg_iters = 10
        hist = flow.run(25)
        assert hist.mmd2[-1] < 0.5 * hist.mmd2[0], solver
        assert len(hist.seconds) == 25 and hist.wall_time >= sum(hist.seconds)
        with pytest.warns(DeprecationWarning, match="attributes"):
            assert hist["mmd2"] == hist.mmd2


def test_bad_arguments():
    gen = fk.nn.MLP(2, 2, hidden=4, depth=2)
    data = torch.randn(10, 2)
    with pytest.raises(ValueError, match="smooth kernel"):
        ParametricKernelizedFlow(gen, data, fk.kernels.Laplacian(1.0), 0.1, 0.1)
    with pytest.raises(ValueError, match="lam"):
        ParametricKernelizedFlow(gen, data, fk.kernels.Gaussian(1.0), 0.1, 0.0)
    with pytest.raises(ValueError, match="solver"):
        ParametricKernelizedFlow(gen, data, fk.kernels.Gaussian(1.0), 0.1, 0.1, solver="lu")
    with pytest.raises(ValueError, match="use solver='cg'"):
        ParametricKernelizedFlow(gen, data, fk.kernels.Gaussian(1.0), 0.1, 0.1, solver="direct",
                                 max_direct=5)
    with pytest.raises(ValueError, match="latent_dim"):
        ParametricKernelizedFlow(torch.nn.Sequential(torch.nn.Linear(2, 2)), data,
                                 fk.kernels.Gaussian(1.0), 0.1, 0.1)
