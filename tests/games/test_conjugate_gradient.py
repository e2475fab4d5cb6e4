"""The conjugate gradient optimizer (flowkit/games/conjugate_gradient.py): hand-computed
betas, reduction to SGD and heavy ball, finite termination on quadratics, and the three
bugs of the public code ([NI23-code]) that must not come back."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flowkit import games

f64 = torch.float64


def _t(*values):
    return torch.tensor(values, dtype=f64)


# g = (1, 2), g_prev = (2, 0), d_prev = (-2, 0): y = (-1, 2), ||g||^2 = 5, ||g_prev||^2 = 4,
# g.y = 3, d.y = 2, ||y||^2 = 5, g.d = -2.
CASE_A = {"FR": 5 / 4, "PRP": 3 / 4, "HS": 3 / 2, "DY": 5 / 2, "HS_DY": 3 / 2,
          "FR_PRP": 3 / 4, "HZ": 3 / 2 - 2 * 5 * (-2) / 2**2}
# g = (1, 0), g_prev = (2, 1), d_prev = (-2, -1): y = (-1, -1), ||g||^2 = 1,
# ||g_prev||^2 = 5, g.y = -1, d.y = 3, ||y||^2 = 2, g.d = -2.
CASE_B = {"FR": 1 / 5, "PRP": -1 / 5, "HS": -1 / 3, "DY": 1 / 3, "HS_DY": 0.0,
          "FR_PRP": 0.0, "HZ": -1 / 3 - 2 * 2 * (-2) / 3**2}


@pytest.mark.parametrize("rule", games.BETA_RULES)
def test_hand_computed_betas(rule):
    a = games.conjugate_beta(rule, _t(1, 2), _t(2, 0), _t(-2, 0))
    b = games.conjugate_beta(rule, _t(1, 0), _t(2, 1), _t(-2, -1))
    assert a.item() == pytest.approx(CASE_A[rule])
    assert b.item() == pytest.approx(CASE_B[rule])


@pytest.mark.parametrize("rule", ["FR", "PRP", "FR_PRP"])
def test_zero_previous_gradient_gives_zero_beta(rule):
    assert games.conjugate_beta(rule, _t(1, 2), _t(0, 0), _t(1, 1)).item() == 0.0


@pytest.mark.parametrize("rule", ["HS", "DY", "HS_DY", "HZ"])
def test_direction_orthogonal_to_y_gives_zero_beta(rule):
    # y = g - g_prev = (0, 1) and d = (1, 0): d.y = 0.
    assert games.conjugate_beta(rule, _t(1, 2), _t(1, 1), _t(1, 0)).item() == 0.0


def test_global_beta_is_the_beta_of_the_concatenated_vector():
    g, gp, d = _t(1, 2, 0.5), _t(2, 0, 1), _t(-2, 0, 0.3)
    for rule in games.BETA_RULES:
        split = games.conjugate_beta(rule, [g[:1], g[1:]], [gp[:1], gp[1:]], [d[:1], d[1:]])
        assert split.item() == pytest.approx(games.conjugate_beta(rule, g, gp, d).item())


@pytest.mark.parametrize("rule,cap,coeff", [("FR", 0.5, 1.0), ("FR", None, 0.5),
                                            ("HZ", 0.5, 0.75), ("PRP", 0.5, 1.0),
                                            ("HS", None, 1.0), ("HS_DY", 0.5, 0.5)])
def test_optimizer_applies_capped_scaled_beta_to_the_stored_direction(rule, cap, coeff):
    p = torch.nn.Parameter(torch.zeros(2, dtype=f64))
    opt = games.ConjugateGradient([p], lr=0.1, beta=rule, beta_coeff=coeff, beta_cap=cap)
    p.grad = _t(2, 0)
    opt.step()
    torch.testing.assert_close(p.detach(), _t(-0.2, 0))  # first step: plain descent
    assert opt.state[p]["beta"].item() == 0.0
    p.grad = _t(1, 2)
    opt.step()
    raw = CASE_A[rule]
    beta = coeff * (raw if cap is None else min(raw, cap))
    d1 = _t(-1, -2) + beta * _t(-2, 0)
    assert opt.state[p]["beta"].item() == pytest.approx(beta)
    torch.testing.assert_close(opt.state[p]["d"], d1)
    torch.testing.assert_close(p.detach(), _t(-0.2, 0) + 0.1 * d1)


def _model_and_loss():
    gen = torch.Generator().manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 1))
    with torch.no_grad():
        for q in model.parameters():
            q.copy_(torch.randn(q.shape, generator=gen))
    x = torch.randn(16, 3, generator=gen, dtype=f64)
    target = torch.randn(16, 1, generator=gen, dtype=f64)
    model = model.double()
    return model, lambda: ((model(x) - target) ** 2).mean()


def _trajectory(make_opt, steps=6):
    model, loss_fn = _model_and_loss()
    opt = make_opt(model.parameters())
    out = []
    for _ in range(steps):
        opt.zero_grad()
        loss_fn().backward()
        opt.step()
        out.append(torch.cat([q.detach().reshape(-1).clone() for q in model.parameters()]))
    return torch.stack(out)


def test_beta_zero_is_sgd_exactly():
    cg = _trajectory(lambda ps: games.ConjugateGradient(ps, lr=0.05, beta=0.0))
    sgd = _trajectory(lambda ps: torch.optim.SGD(ps, lr=0.05))
    assert torch.equal(cg, sgd)


@pytest.mark.parametrize("beta,cap", [(0.3, 0.5), (0.9, None)])
def test_constant_beta_is_heavy_ball(beta, cap):
    cg = _trajectory(lambda ps: games.ConjugateGradient(ps, lr=0.05, beta=beta, beta_cap=cap))
    hb = _trajectory(lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=beta))
    torch.testing.assert_close(cg, hb, rtol=0, atol=1e-15)


def test_constant_beta_is_capped_like_the_rules():
    cg = _trajectory(lambda ps: games.ConjugateGradient(ps, lr=0.05, beta=0.9, beta_cap=0.5))
    hb = _trajectory(lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.5))
    torch.testing.assert_close(cg, hb, rtol=0, atol=1e-15)


@pytest.mark.parametrize("rule", games.BETA_RULES)
def test_first_step_is_the_sgd_step(rule):
    cg = _trajectory(lambda ps: games.ConjugateGradient(ps, lr=0.05, beta=rule), steps=1)
    sgd = _trajectory(lambda ps: torch.optim.SGD(ps, lr=0.05), steps=1)
    assert torch.equal(cg, sgd)


def _spd(n, gen):
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=f64))
    return q @ torch.diag(torch.linspace(1.0, 10.0, n, dtype=f64)) @ q.T


def _cg_on_quadratic(rule, steps, split=None, per_tensor=True, n=6):
    """Minimize 1/2 t^T A t - b^T t with the exact line search a = -g^T d / d^T A d."""
    gen = torch.Generator().manual_seed(7)
    A, b = _spd(n, gen), torch.randn(n, generator=gen, dtype=f64)
    sizes = split or [n]
    params = [torch.nn.Parameter(torch.zeros(k, dtype=f64)) for k in sizes]
    opt = games.ConjugateGradient(params, lr=1.0, beta=rule, beta_cap=None,
                                  per_tensor=per_tensor)
    norms = []
    for _ in range(steps):
        theta = torch.cat([p.detach() for p in params])
        grad = A @ theta - b
        norms.append(grad.norm().item())
        for p, g in zip(params, torch.split(grad, sizes), strict=True):
            p.grad = g.clone()

        def exact(directions, grad=grad):
            d = torch.cat([x.reshape(-1) for x in directions])
            return float(-(grad @ d) / (d @ A @ d))

        opt.step(line_search=exact)
    theta = torch.cat([p.detach() for p in params])
    norms.append((A @ theta - b).norm().item())
    return norms


@pytest.mark.parametrize("rule", games.BETA_RULES)
def test_cg_with_exact_line_search_terminates_in_n_steps(rule):
    n = 6
    norms = _cg_on_quadratic(rule, n, n=n)
    assert norms[n] < 1e-10 * norms[0]
    assert norms[n - 1] > 1e-6 * norms[0]  # and not earlier: the test can tell


def test_steepest_descent_with_exact_line_search_does_not_terminate():
    norms = _cg_on_quadratic(0.0, 6)
    assert norms[6] > 1e-3 * norms[0]


def test_global_beta_keeps_finite_termination_across_tensors_per_tensor_does_not():
    glob = _cg_on_quadratic("FR", 6, split=[2, 4], per_tensor=False)
    local = _cg_on_quadratic("FR", 6, split=[2, 4], per_tensor=True)
    assert glob[6] < 1e-10 * glob[0]
    assert local[6] > 1e-6 * local[0]


def test_previous_gradient_is_a_copy_not_an_alias():
    # Bug 3 of the public code: with zero_grad(set_to_none=False), backward() writes the
    # new gradient into the tensor prev_grad referenced, so FR saw ||g||^2 / ||g||^2.
    model, loss_fn = _model_and_loss()
    opt = games.ConjugateGradient(model.parameters(), lr=0.05, beta="FR", beta_cap=None)
    grads = []
    for _ in range(2):
        opt.zero_grad(set_to_none=False)
        loss_fn().backward()
        grads.append([q.grad.clone() for q in model.parameters()])
        opt.step()
    for i, q in enumerate(model.parameters()):
        state = opt.state[q]
        assert state["prev_grad"].data_ptr() != q.grad.data_ptr()
        torch.testing.assert_close(state["prev_grad"], grads[1][i])
        expected = grads[1][i].pow(2).sum() / grads[0][i].pow(2).sum()
        torch.testing.assert_close(state["beta"], expected)
        assert not torch.isclose(state["beta"], torch.ones((), dtype=f64))


def test_stored_direction_is_the_step_taken():
    # Bugs 1 and 2: the first step must descend, and the state must hold d_n itself.
    model, loss_fn = _model_and_loss()
    opt = games.ConjugateGradient(model.parameters(), lr=0.01, beta="PRP")
    losses = []
    for _ in range(4):
        before = [q.detach().clone() for q in model.parameters()]
        opt.zero_grad()
        loss = loss_fn()
        losses.append(loss.item())
        loss.backward()
        opt.step()
        for q, b in zip(model.parameters(), before, strict=True):
            torch.testing.assert_close(q.detach() - b, 0.01 * opt.state[q]["d"])
    assert loss_fn().item() < losses[0]


def test_maximize_ascends():
    p = torch.nn.Parameter(torch.zeros(2, dtype=f64))
    q = torch.nn.Parameter(torch.zeros(2, dtype=f64))
    up = games.ConjugateGradient([p], lr=0.1, beta="DY", maximize=True)
    down = games.ConjugateGradient([q], lr=0.1, beta="DY")
    c = _t(1.0, -2.0)
    for _ in range(5):
        for param, opt, sign in ((p, up, 1.0), (q, down, -1.0)):
            opt.zero_grad()
            (sign * (c @ param - 0.5 * param @ param)).backward()
            opt.step()
    torch.testing.assert_close(p.detach(), q.detach())
    assert (p.detach() @ c).item() > 0


def test_param_groups_carry_their_own_rule():
    a = torch.nn.Parameter(torch.zeros(2, dtype=f64))
    b = torch.nn.Parameter(torch.zeros(2, dtype=f64))
    opt = games.ConjugateGradient([{"params": [a]}, {"params": [b], "beta": "prp"}], lr=0.1,
                                  beta_cap=None)
    for g in (_t(2, 0), _t(1, 2)):
        a.grad, b.grad = g.clone(), g.clone()
        opt.step()
    assert opt.state[a]["beta"].item() == pytest.approx(CASE_A["FR"])
    assert opt.state[b]["beta"].item() == pytest.approx(CASE_A["PRP"])


def test_bad_arguments_are_named():
    p = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(ValueError, match=r"beta must be one of \('FR', 'PRP'"):
        games.ConjugateGradient(p, beta="Newton")
    with pytest.raises(TypeError, match="beta must be a rule name"):
        games.ConjugateGradient(p, beta=[0.5])
    with pytest.raises(ValueError, match="lr must be a finite number > 0"):
        games.ConjugateGradient(p, lr=0.0)
    with pytest.raises(ValueError, match="beta_cap"):
        games.ConjugateGradient(p, beta_cap=-0.5)
    with pytest.raises(ValueError, match="beta_coeff"):
        games.ConjugateGradient(p, beta_coeff=math.nan)


vectors = st.lists(st.floats(-10, 10), min_size=3, max_size=3)


@settings(max_examples=40, deadline=None)
@given(g=vectors, gp=vectors, d=vectors, coeff=st.floats(0, 1), cap=st.floats(0, 1))
def test_capped_betas_are_bounded_and_fr_is_nonnegative(g, gp, d, coeff, cap):
    p = torch.nn.Parameter(torch.zeros(3, dtype=f64))
    for rule in games.BETA_RULES:
        opt = games.ConjugateGradient([p], lr=1.0, beta=rule, beta_coeff=coeff, beta_cap=cap)
        opt.state[p] = {"d": torch.tensor(d, dtype=f64), "prev_grad": torch.tensor(gp, dtype=f64)}
        p.grad = torch.tensor(g, dtype=f64)
        opt.step()
        beta = opt.state[p]["beta"].item()
        assert math.isfinite(beta) and beta <= coeff * cap + 1e-12
        if rule in ("FR", "HS_DY", "FR_PRP"):
            assert beta >= 0
