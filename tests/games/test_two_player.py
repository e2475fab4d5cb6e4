"""The two-player wrapper (flowkit/games/two_player.py) against the game dynamics."""

import pytest
import torch

from flowkit import games

f64 = torch.float64


def _players(z0, m):
    return (torch.nn.Parameter(z0[:m].clone()), torch.nn.Parameter(z0[m:].clone()))


def _wrapped_path(game, z0, steps, make, **kwargs):
    x, y = _players(z0, game.dim_x)
    opt = games.TwoPlayerOptimizer(make([x]), make([y]), **kwargs)
    path = [z0]
    for _ in range(steps):
        opt.step(lambda: game.value(x, y))
        path.append(torch.cat([x.detach(), y.detach()]).clone())
    return torch.stack(path)


@pytest.fixture
def bilinear(gen):
    game = games.Bilinear(torch.randn(2, 3, generator=gen, dtype=f64))
    return game, torch.randn(5, generator=gen, dtype=f64)


def test_simultaneous_sgd_is_sga(bilinear):
    game, z0 = bilinear
    ref = games.run(game, games.SGA(0.1), z0, 20, record_iterates=True).iterates
    mine = _wrapped_path(game, z0, 20, lambda ps: torch.optim.SGD(ps, lr=0.1))
    torch.testing.assert_close(mine, ref)


@pytest.mark.parametrize("first,x_first", [("min", True), ("max", False)])
def test_alternating_sgd_is_alternating_gda(bilinear, first, x_first):
    game, z0 = bilinear
    ref = games.run(game, games.AltGDA(0.1, x_first=x_first), z0, 20,
                    record_iterates=True).iterates
    mine = _wrapped_path(game, z0, 20, lambda ps: torch.optim.SGD(ps, lr=0.1),
                         mode="alternating", first=first)
    torch.testing.assert_close(mine, ref)


def test_two_player_cg_descends_x_and_ascends_y_on_the_saddle():
    game = games.ProductSaddle()
    x = torch.nn.Parameter(torch.tensor([2.0], dtype=f64))
    y = torch.nn.Parameter(torch.tensor([-4.0], dtype=f64))
    opt = games.two_player_cg([x], [y], lr_min=1e-3, lr_max=1e-2, beta="FR")
    opt.step(lambda: game.value(x, y))
    # First step = simultaneous gradient step: x -= a dU/dx, y += b dU/dy with
    # dU/dx = 2x (100 - y^2) = 336 and dU/dy = -2y (1 + x^2) = 40 at (2, -4).
    assert x.item() == pytest.approx(2.0 - 1e-3 * 336)
    assert y.item() == pytest.approx(-4.0 + 1e-2 * 40)
    for _ in range(300):
        opt.step(lambda: game.value(x, y))
    assert abs(x.item()) < 1e-6 and abs(y.item()) < 0.1


def test_general_sum_closure_gives_each_player_its_own_loss():
    a = torch.nn.Parameter(torch.tensor([1.0], dtype=f64))
    b = torch.nn.Parameter(torch.tensor([1.0], dtype=f64))
    opt = games.TwoPlayerOptimizer(torch.optim.SGD([a], lr=0.5), torch.optim.SGD([b], lr=0.5))
    # Each player minimizes its own (a - b)^2 and b^2: a moves toward b, b toward 0.
    loss_min, loss_max = opt.step(lambda: (((a - b) ** 2).sum(), (b**2).sum()))
    assert loss_min.item() == 0.0 and loss_max.item() == 1.0
    assert a.item() == 1.0 and b.item() == 0.0


def test_bad_input_is_named():
    p, q = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    sgd = torch.optim.SGD
    with pytest.raises(ValueError, match="mode must be"):
        games.TwoPlayerOptimizer(sgd([p], lr=0.1), sgd([q], lr=0.1), mode="both")
    with pytest.raises(ValueError, match="first must be"):
        games.TwoPlayerOptimizer(sgd([p], lr=0.1), sgd([q], lr=0.1), first="D")
    with pytest.raises(ValueError, match="belongs to both players"):
        games.TwoPlayerOptimizer(sgd([p], lr=0.1), sgd([p], lr=0.1))
    with pytest.raises(TypeError, match="min_optimizer must be"):
        games.TwoPlayerOptimizer("sgd", sgd([q], lr=0.1))
    opt = games.TwoPlayerOptimizer(sgd([p], lr=0.1), sgd([q], lr=0.1))
    with pytest.raises(TypeError, match="closure must return"):
        opt.step(lambda: (p.sum(), q.sum(), p.sum()))


def _recording_step(mode, first, closure_kind):
    """Players after one step and the ``player`` each closure call received."""
    x = torch.nn.Parameter(torch.tensor([1.0], dtype=f64))
    y = torch.nn.Parameter(torch.tensor([2.0], dtype=f64))
    opt = games.TwoPlayerOptimizer(torch.optim.SGD([x], lr=0.1), torch.optim.SGD([y], lr=0.1),
                                   mode=mode, first=first)
    seen = []

    def keyword(*, player):
        seen.append(player)
        return (x * y).sum()

    def defaulted(player="both"):
        seen.append(player)
        return (x * y).sum()

    def plain():
        seen.append(None)
        return (x * y).sum()

    closure = {"keyword": keyword, "defaulted": defaulted, "plain": plain}[closure_kind]
    opt.step(closure)
    opt.step(closure)  # the decision cached for this closure gives the same calls
    return seen, x.item(), y.item()


@pytest.mark.parametrize("closure_kind", ["keyword", "defaulted"])
@pytest.mark.parametrize("mode,first,expected", [
    ("simultaneous", "max", ["both"]),
    ("simultaneous", "min", ["both"]),
    ("alternating", "max", ["max", "min"]),
    ("alternating", "min", ["min", "max"]),
])
def test_the_closure_is_told_which_player_the_call_serves(mode, first, expected, closure_kind):
    seen, *_ = _recording_step(mode, first, closure_kind)
    assert seen == expected * 2


@pytest.mark.parametrize("mode,first", [("simultaneous", "max"), ("alternating", "max"),
                                        ("alternating", "min")])
def test_a_closure_without_player_is_called_without_arguments(mode, first):
    seen, *plain_xy = _recording_step(mode, first, "plain")
    assert seen == [None] * (2 if mode == "simultaneous" else 4)
    _, *told_xy = _recording_step(mode, first, "keyword")
    assert plain_xy == told_xy  # telling the closure changes nothing in the step itself


def test_player_is_passed_to_callables_that_take_it_only():
    import functools

    p, q = torch.nn.Parameter(torch.ones(1)), torch.nn.Parameter(torch.ones(1))
    opt = games.TwoPlayerOptimizer(torch.optim.SGD([p], lr=0.1), torch.optim.SGD([q], lr=0.1),
                                   mode="alternating")
    seen = []

    def payoff(scale, player="both"):
        seen.append(player)
        return scale * (p * q).sum()

    class Payoff:  # a callable object: its __call__ signature decides
        def __call__(self, *, player):
            seen.append(player)
            return (p * q).sum()

    opt.step(functools.partial(payoff, 2.0))
    opt.step(Payoff())
    opt.step(lambda **kw: (seen.append(kw), (p * q).sum())[1])  # **kwargs: not told
    assert seen == ["max", "min", "max", "min", {}, {}]
    with pytest.raises(TypeError, match="closure must be callable"):
        opt.step((p * q).sum())
