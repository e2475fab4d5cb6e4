"""Gradient penalties (hand-computed values) and the WGAN-GP critic of Algorithm 1."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import flowkit as fk
from flowkit.critics import CriticPotential, WGANGPCritic, gradient_penalty
from flowkit.critics.penalties import penalty_points


def _val(t: torch.Tensor) -> float:
    return float(t.detach())


def _relu_net() -> nn.Module:
    """f(x) = relu(x_1) + relu(2 x_2): gradient (1[x_1>0], 2 * 1[x_2>0])."""
    net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
        net[0].bias.zero_()
        net[2].weight.copy_(torch.tensor([[1.0, 1.0]]))
        net[2].bias.zero_()
    return lambda x: net(x).squeeze(1)


# ---------------------------------------------------------------- penalties
@pytest.mark.parametrize("kind, expected", [("two-sided", 16.0), ("one-sided", 16.0),
                                            ("dragan", 16.0)])
def test_linear_critic_penalty_is_constant(kind, expected):
    w = torch.tensor([3.0, 4.0])  # ||grad f|| = 5 everywhere
    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(6, 2, generator=g), torch.randn(6, 2, generator=g)
    value = gradient_penalty(lambda x: x @ w, real, fake, kind=kind, generator=g)
    assert _val(value) == pytest.approx(expected, rel=1e-6)


def test_quadratic_critic_hand_computed():
    # f(x) = ||x||^2 / 2 has grad f(x~) = x~; with eps = (0.25, 0.5):
    # x~_1 = 0.25 (2, 0) + 0.75 (0, 0) = (0.5, 0)   -> norm 0.5
    # x~_2 = 0.5 (0, 3) + 0.5 (0, 1)   = (0, 2)     -> norm 2
    real = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    fake = torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    eps = torch.tensor([0.25, 0.5])

    def f(x):
        return 0.5 * x.pow(2).sum(1)

    two = gradient_penalty(f, real, fake, "two-sided", eps=eps)
    one = gradient_penalty(f, real, fake, "one-sided", eps=eps)
    assert _val(two) == pytest.approx((0.5**2 + 1.0**2) / 2)  # ((0.5-1)^2 + (2-1)^2) / 2
    assert _val(one) == pytest.approx((0.0 + 1.0) / 2)


def test_relu_net_hand_computed():
    f = _relu_net()
    # x~ = 0.5 (1, 1) + 0.5 (1, -3) = (1, -1): only the first unit is active, grad (1, 0)
    # x~ = 0.5 (1, 1) + 0.5 (3, 1) = (2, 1): both active, grad (1, 2), norm sqrt(5)
    real = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    fake = torch.tensor([[1.0, -3.0], [3.0, 1.0]])
    eps = torch.full((2,), 0.5)
    expected = (0.0 + (math.sqrt(5.0) - 1.0) ** 2) / 2
    assert _val(gradient_penalty(f, real, fake, "two-sided", eps=eps)) == pytest.approx(expected)
    assert _val(gradient_penalty(f, real, fake, "one-sided", eps=eps)) == pytest.approx(expected)


def test_penalty_on_image_shaped_events():
    w = torch.full((1, 4, 4), 0.5)  # ||w|| over all 16 entries = 2
    real, fake = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4)
    value = gradient_penalty(lambda x: (x * w).flatten(1).sum(1), real, fake, "two-sided")
    assert _val(value) == pytest.approx(1.0)
    assert penalty_points(real, fake).shape == real.shape


def test_one_sided_penalty_zero_below_unit_norm():
    torch.manual_seed(0)
    net = fk.nn.MLP(2, None, hidden=16, depth=3, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(0.1)  # makes every input gradient tiny
    real, fake = torch.randn(64, 2), torch.randn(64, 2)
    x = penalty_points(real, fake, generator=torch.Generator().manual_seed(2)).requires_grad_()
    (grad,) = torch.autograd.grad(net(x).sum(), x)
    assert float(grad.norm(dim=1).max()) < 1.0
    value = gradient_penalty(net, real, fake, "one-sided")
    assert _val(value) == 0.0
    value.backward()
    assert all(p.grad is None or float(p.grad.abs().max()) == 0.0 for p in net.parameters())
    # the two-sided penalty is positive for the same critic
    assert _val(gradient_penalty(net, real, fake, "two-sided")) > 0.5


def test_penalty_backpropagates_to_critic_parameters():
    net = fk.nn.MLP(2, None, hidden=8, depth=2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(10.0)
    gradient_penalty(net, torch.randn(8, 2), torch.randn(8, 2), "two-sided").backward()
    assert any(float(p.grad.abs().sum()) > 0 for p in net.parameters())


def test_dragan_points_follow_perturbation_and_seed():
    real = torch.zeros(4000, 2)
    pts = penalty_points(real, None, "dragan", generator=torch.Generator().manual_seed(0),
                         perturbation=0.3)
    assert float(pts.std()) == pytest.approx(0.3, rel=0.05)
    again = penalty_points(real, None, "dragan", generator=torch.Generator().manual_seed(0),
                           perturbation=0.3)
    assert torch.equal(pts, again)


def test_penalty_bad_inputs():
    x = torch.randn(4, 2)
    with pytest.raises(ValueError, match="kind"):
        gradient_penalty(lambda t: t.sum(1), x, x, kind="three-sided")
    with pytest.raises(TypeError, match="real"):
        gradient_penalty(lambda t: t.sum(1), [[0.0, 1.0]], x)
    with pytest.raises(ValueError, match="fake"):
        gradient_penalty(lambda t: t.sum(1), x, torch.randn(5, 2))
    with pytest.raises(TypeError, match="fake"):
        gradient_penalty(lambda t: t.sum(1), x, None, kind="one-sided")
    with pytest.raises(ValueError, match="f must map"):
        gradient_penalty(lambda t: t, x, x)
    with pytest.raises(TypeError, match="f must be callable"):
        gradient_penalty("critic", x, x)
    with pytest.raises(ValueError, match="eps"):
        gradient_penalty(lambda t: t.sum(1), x, x, eps=torch.rand(3))


# ---------------------------------------------------------------- the critic
def _blobs(n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    fake = 0.2 * torch.randn(n, 2, generator=g) - 0.5
    data = 0.2 * torch.randn(n, 2, generator=g) + 0.5
    return fake, data


def test_snapshot_is_frozen_and_is_minus_f():
    fake, data = _blobs()
    critic = WGANGPCritic(dim=2, hidden=32, steps=20, seed=0)
    psi1 = critic.fit(fake, data)
    assert isinstance(psi1, CriticPotential)
    z = torch.randn(50, 2)
    before, grad_before = psi1(z).clone(), psi1.grad(z).clone()
    assert torch.equal(before, -critic.critic(z).detach())
    layer = fk.GradientLayer(psi1, 0.1)
    out_before = layer(z)
    psi2 = critic.fit(fake, data)  # train further
    assert torch.equal(psi1(z), before)
    assert torch.equal(psi1.grad(z), grad_before)
    assert torch.equal(layer(z), out_before)
    assert not torch.equal(psi2(z), before)
    assert not any(p.requires_grad for p in psi1.parameters())


def test_critic_learns_to_separate():
    fake, data = _blobs()
    critic = WGANGPCritic(dim=2, hidden=32, lr=1e-3, steps=200, seed=0)
    psi = critic.fit(fake, data)
    # psi = -f is lower on the data; the layer moves fake samples towards the data
    assert float(psi(data).mean()) < float(psi(fake).mean()) - 0.3
    moved = fk.GradientLayer(psi, 0.1)(fake)
    assert float((moved - data.mean(0)).norm(dim=1).mean()) < float(
        (fake - data.mean(0)).norm(dim=1).mean())
    assert critic.last_losses.shape == (200,)
    assert critic.total_steps == 200 and critic.n_fits == 1


def test_seed_determines_everything():
    fake, data = _blobs()
    a = WGANGPCritic(dim=2, hidden=16, steps=10, seed=3).fit(fake, data)
    b = WGANGPCritic(dim=2, hidden=16, steps=10, seed=3).fit(fake, data)
    c = WGANGPCritic(dim=2, hidden=16, steps=10, seed=4).fit(fake, data)
    z = torch.randn(20, 2)
    assert torch.equal(a(z), b(z))
    assert not torch.equal(a(z), c(z))


def test_warm_start_and_state_round_trip():
    fake, data = _blobs()
    a = WGANGPCritic(dim=2, hidden=16, steps=10, seed=0, penalty="dragan")
    a.fit(fake, data)
    state = a.state_dict()
    z = torch.randn(20, 2)
    same = a.fit(fake, data, steps=0)  # warm start: no steps leaves f unchanged
    assert torch.equal(same(z), -a.critic(z).detach())
    after = a.fit(fake, data)(z)
    b = WGANGPCritic(dim=2, hidden=16, steps=10, seed=99, penalty="dragan")
    b.load_state_dict(state)
    assert torch.equal(b.fit(fake, data)(z), after)  # weights, Adam state and RNG restored


def test_custom_net_and_fresh_batches():
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 1))  # (B, 1) output is accepted
    critic = WGANGPCritic(net=net, steps=5, batch_size=8, seed=0)
    data = torch.randn(30, 2, 2)
    calls = []

    def fresh(k0):
        calls.append(k0)
        return torch.randn(8, 2, 2)

    psi = critic.fit(fresh, data)
    assert calls == [0, 1, 2, 3, 4]
    assert psi(torch.randn(3, 2, 2)).shape == (3,)


def test_follows_data_dtype():
    fake, data = _blobs()
    critic = WGANGPCritic(dim=2, hidden=8, steps=3, seed=0)
    psi = critic.fit(fake.double(), data.double())
    assert psi(torch.randn(4, 2, dtype=torch.float64)).dtype == torch.float64
    assert critic.last_losses.dtype == torch.float64


def test_critic_bad_inputs():
    fake, data = _blobs()
    with pytest.raises(ValueError, match="penalty"):
        WGANGPCritic(penalty="both")
    with pytest.raises(ValueError, match="lr"):
        WGANGPCritic(lr=-1.0)
    with pytest.raises(ValueError, match="batch_size"):
        WGANGPCritic(batch_size=0)
    with pytest.raises(ValueError, match="penalty_weight"):
        WGANGPCritic(penalty_weight=-1.0)
    with pytest.raises(ValueError, match="betas"):
        WGANGPCritic(betas=(0.5, 1.5))
    with pytest.raises(TypeError, match="seed"):
        WGANGPCritic(seed="0")
    with pytest.raises(TypeError, match="net"):
        WGANGPCritic(net=lambda x: x.sum(1))
    with pytest.raises(ValueError, match="activation"):
        WGANGPCritic(activation="swish")
    critic = WGANGPCritic(dim=2, hidden=8, steps=2)
    with pytest.raises(TypeError, match="data"):
        critic.fit(fake, data.numpy())
    with pytest.raises(ValueError, match="particles"):
        critic.fit(torch.randn(10, 3), data)
    with pytest.raises(ValueError, match="steps"):
        critic.fit(fake, data, steps=-1)
    with pytest.raises(TypeError, match="particles"):
        critic.fit([1.0, 2.0], data)
    bad = WGANGPCritic(net=nn.Linear(2, 2), steps=1)
    with pytest.raises(ValueError, match=r"\(B,\)"):
        bad.fit(fake, data)


# ------------------------------------------------ explicit input gradients of the MLP
@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "softplus", "elu", "tanh"])
def test_mlp_input_gradients_match_autograd(activation):
    torch.manual_seed(0)
    net = fk.nn.MLP(6, None, hidden=9, depth=4, activation=activation).double()
    x = torch.randn(7, 2, 3, dtype=torch.float64)  # any event shape
    points = torch.randn(3, 2, 3, dtype=torch.float64)
    values, grad = net.values_and_input_gradients(x, points)
    pr = points.clone().requires_grad_(True)
    (ref_grad,) = torch.autograd.grad(net(pr).sum(), pr, create_graph=True)
    ref = net(x)
    torch.testing.assert_close(values, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-12, atol=1e-12)
    # second order: the penalty's gradient in the parameters, explicit vs double backward
    params = list(net.parameters())
    pen = fk.critics.penalties.penalty_from_gradients
    mine = torch.autograd.grad(pen(grad, "two-sided").sum() + values.sum(), params)
    theirs = torch.autograd.grad(pen(ref_grad, "two-sided").sum() + ref.sum(), params)
    for a, b in zip(mine, theirs):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_mlp_input_gradients_depth_one_and_errors():
    net = fk.nn.MLP(3, None, depth=1).double()  # f(x) = w^T x + b: gradient w
    x = torch.randn(4, 3, dtype=torch.float64)
    _, grad = net.values_and_input_gradients(x, x[:2])
    torch.testing.assert_close(grad, net.body[0].weight.expand(2, 3))
    with pytest.raises(ValueError, match="scalar"):
        fk.nn.MLP(3, 2).values_and_input_gradients(x.float(), x.float())
    with pytest.raises(ValueError, match="event shape"):
        fk.nn.MLP(3).values_and_input_gradients(x.float(), torch.randn(2, 4))


@pytest.mark.parametrize("penalty", ["one-sided", "two-sided", "dragan"])
def test_critic_step_same_with_and_without_explicit_gradients(penalty):
    # The training loop takes the MLP's explicit path; a plain module wrapping the same
    # weights takes autograd's double backward. Both must take the same Adam steps.
    fake, data = _blobs()
    fast = WGANGPCritic(dim=2, hidden=16, steps=20, seed=3, penalty=penalty)
    wrapped = nn.Sequential(*fast.net.body)  # same initial weights, no explicit method
    slow = WGANGPCritic(net=copy.deepcopy(_Squeeze(wrapped)), steps=20, seed=3,
                        penalty=penalty)
    fast.fit(fake.double(), data.double())
    slow.fit(fake.double(), data.double())
    torch.testing.assert_close(fast.last_losses, slow.last_losses, rtol=1e-9, atol=1e-12)
    for a, b in zip(fast.net.parameters(), slow.net.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


class _Squeeze(nn.Module):
    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body

    def forward(self, x):
        return self.body(x).squeeze(1)


def test_custom_explicit_gradients_are_used_and_checked():
    class Linear(nn.Module):  # f(x) = w^T x, gradient w: supplied by hand
        def __init__(self, bad=False):
            super().__init__()
            self.w = nn.Parameter(torch.tensor([3.0, 4.0]))
            self.bad, self.calls = bad, 0

        def forward(self, x):
            return x @ self.w

        def values_and_input_gradients(self, x, points):
            self.calls += 1
            grad = self.w.expand(len(points), 2)
            return self.forward(x), grad[:1] if self.bad else grad

    fake, data = _blobs()
    net = Linear()
    critic = WGANGPCritic(net=net, steps=3, seed=0, penalty="two-sided")
    critic.fit(fake, data)
    assert net.calls == 3
    with pytest.raises(ValueError, match="values_and_input_gradients"):
        WGANGPCritic(net=Linear(bad=True), steps=1).fit(fake, data)


def test_one_interface_and_deprecated_names():
    from flowkit.critics import Critic, MMDCritic

    for critic in (WGANGPCritic(hidden=8, steps=1), MMDCritic(hidden=8, steps=1)):
        assert isinstance(critic, Critic)
        assert isinstance(critic.penalty, str) and isinstance(critic.penalty_weight, float)
        x = torch.randn(20, 2)
        psi = critic.fit(x, x + 1.0)
        assert isinstance(psi, fk.Potential)
        assert isinstance(critic.snapshot(x, x + 1.0), fk.Potential)
    with pytest.warns(DeprecationWarning, match="lam"):
        old = WGANGPCritic(lam=3.0)
    assert old.penalty_weight == 3.0
    with pytest.warns(DeprecationWarning, match="penalty_weight"):
        assert old.lam == 3.0
    with pytest.warns(DeprecationWarning, match="penalty_weight"):
        old = MMDCritic(penalty=0.5)
    assert (old.penalty, old.penalty_weight) == ("two-sided", 0.5)
    with pytest.warns(DeprecationWarning, match="penalty_kind"):
        old = MMDCritic(penalty_kind="one-sided")
    assert old.penalty == "one-sided"
    with pytest.raises(TypeError, match="penalty_weight"):
        MMDCritic(penalty=0.5, penalty_weight=1.0)
    with pytest.warns(DeprecationWarning, match="lam"):
        gan = fk.generators.WGANGP(torch.randn(20, 2), hidden=8, lam=2.0)
    assert gan.critic.penalty_weight == 2.0
