"""The WGAN-GP critic step's parameter gradient written out by hand (explicit_backward)."""

from __future__ import annotations

import pytest
import torch

import flowkit as fk
from flowkit.critics import WGANGPCritic
from flowkit.critics.penalties import penalty_and_gradient, penalty_from_gradients
from flowkit.critics.wgan_gp import penalized_loss_gradients


def _net(activation: str, depth: int, event: int = 2, scale: float = 1.0) -> fk.nn.MLP:
    net = fk.nn.MLP(event, None, 16, depth, activation,
                    generator=torch.Generator().manual_seed(1)).double()
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(scale)
    return net


def _autograd_loss(net, x, points, n_fake, kind, weight):
    p = points.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(net(p).sum(), p, create_graph=True)
    out = net(x)
    penalty = penalty_from_gradients(g, kind).mean()
    return out[:n_fake].mean() - out[n_fake:].mean() + weight * penalty, g


@pytest.mark.parametrize("activation", ["relu", "leaky_relu"])
@pytest.mark.parametrize("kind", ["one-sided", "two-sided", "dragan"])
@pytest.mark.parametrize("depth", [1, 2, 4])
def test_gradients_match_autograd(activation, kind, depth):
    net = _net(activation, depth, event=6)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(12, 2, 3, generator=gen, dtype=torch.float64)  # any event shape
    points = 2.0 * torch.randn(9, 2, 3, generator=gen, dtype=torch.float64)
    _, g = _autograd_loss(net, x, points, 5, kind, 10.0)
    with torch.no_grad():  # |grad f| is linear in the last weights: half the points active
        net.body[-1].weight.div_(g.flatten(1).norm(dim=1).median() * 1.01)
    loss, grads = penalized_loss_gradients(net, x, points, 5, kind, 10.0)
    ref, g = _autograd_loss(net, x, points, 5, kind, 10.0)
    if depth > 1:  # the gathering of active points is exercised
        assert 0 < int((g.flatten(1).norm(dim=1) > 1).sum()) < len(points)
    expected = torch.autograd.grad(ref, list(net.parameters()))
    torch.testing.assert_close(loss, ref.detach(), rtol=1e-12, atol=1e-12)
    assert [a.shape for a in grads] == [b.shape for b in expected]
    for a, b in zip(grads, expected):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_no_active_point_leaves_the_critic_values_only():
    net = _net("relu", 4, scale=0.1)  # |grad f| far below 1 everywhere
    x, points = torch.randn(8, 2, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
    _, grads = penalized_loss_gradients(net, x, points, 4, "one-sided", 10.0)
    out = net(x)
    expected = torch.autograd.grad(out[:4].mean() - out[4:].mean(), list(net.parameters()))
    for a, b in zip(grads, expected):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("penalty", ["one-sided", "two-sided"])
def test_critic_trains_the_same_with_and_without_explicit_backward(penalty, monkeypatch):
    # float64: the two gradients differ only by rounding, so 30 Adam steps agree closely
    from flowkit.critics import wgan_gp

    calls = []
    original = wgan_gp.penalized_loss_gradients
    monkeypatch.setattr(wgan_gp, "penalized_loss_gradients",
                        lambda *a: calls.append(1) or original(*a))
    gen = torch.Generator().manual_seed(0)
    fake = torch.randn(64, 2, generator=gen, dtype=torch.float64)
    data = 0.5 * torch.randn(64, 2, generator=gen, dtype=torch.float64) + 1.0
    crits = [WGANGPCritic(dim=2, hidden=16, steps=30, seed=3, penalty=penalty, lr=1e-2,
                          explicit_backward=e) for e in (False, True)]
    for c in crits:
        c.fit(fake, data)
    slow, fast = crits
    torch.testing.assert_close(fast.last_losses, slow.last_losses, rtol=1e-9, atol=1e-12)
    for a, b in zip(fast.net.parameters(), slow.net.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    assert fast.total_steps == 30 and fast.explicit_backward and len(calls) == 30


def test_explicit_backward_falls_back_where_it_does_not_apply():
    data = torch.randn(32, 2)
    critic = WGANGPCritic(dim=2, hidden=8, steps=3, seed=0, penalty_weight=0.0,
                          explicit_backward=True)  # no penalty: the ordinary path
    critic.fit(torch.randn(32, 2), data)
    assert torch.isfinite(critic.last_losses).all()


def test_explicit_backward_bad_settings():
    with pytest.raises(TypeError, match="explicit_backward"):
        WGANGPCritic(dim=2, explicit_backward=1)
    with pytest.raises(ValueError, match="explicit_backward.*softplus"):
        WGANGPCritic(dim=2, activation="softplus", explicit_backward=True)
    with pytest.raises(ValueError, match="explicit_backward.*Sequential"):
        WGANGPCritic(net=torch.nn.Sequential(torch.nn.Linear(2, 1)), explicit_backward=True)


@pytest.mark.parametrize("kind", ["one-sided", "two-sided", "dragan"])
def test_penalty_derivative_in_closed_form_matches_autograd(kind):
    g = torch.randn(40, 2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    g[:20] *= 0.2  # inside the unit ball: flat for the one-sided penalty
    g[0] = 0.0  # the norm's kink: autograd's subgradient there is 0
    leaf = g.clone().requires_grad_(True)
    expected_value = penalty_from_gradients(leaf, kind)
    (expected,) = torch.autograd.grad(expected_value.sum(), leaf)
    value, derivative = penalty_and_gradient(g, kind)
    torch.testing.assert_close(value, expected_value.detach(), rtol=0, atol=0)
    torch.testing.assert_close(derivative, expected, rtol=1e-12, atol=1e-15)
    assert bool(derivative[0].eq(0).all())
    if kind == "one-sided":
        assert bool(derivative[:20].eq(0).all())  # the rows the explicit step leaves out
