"""Claims on the conjugate gradient method of Naganuma & Iiduka (2023) [NI23]: its
reductions (SGD, heavy ball), finite termination with an exact line search, and the three
bugs of the paper's public toy code, each shown as a counterexample."""

from __future__ import annotations

import torch

from flowkit import games
from flowkit.claims.registry import Context, Outcome, register, verdict

f64 = torch.float64
NI23 = "Naganuma & Iiduka 2023 [NI23]"


def _quadratic(ctx: Context, n: int = 6):
    """A strongly convex quadratic 1/2 t^T A t - b^T t with spectrum [1, 10]."""
    g = ctx.generator(3)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=f64))
    A = q @ torch.diag(torch.linspace(1.0, 10.0, n, dtype=f64)) @ q.T
    return A, torch.randn(n, generator=g, dtype=f64)


def _run(make_opt, ctx: Context, steps: int, lr_search: bool = False) -> list[torch.Tensor]:
    """Iterates of an optimizer on the quadratic (exact line search when asked)."""
    A, b = _quadratic(ctx)
    p = torch.nn.Parameter(torch.zeros(A.shape[0], dtype=f64))
    opt = make_opt([p])
    out = [p.detach().clone()]
    for _ in range(steps):
        grad = A @ p.detach() - b
        p.grad = grad.clone()
        if lr_search:
            opt.step(line_search=lambda ds, grad=grad: float(-(grad @ ds[0]) /
                                                             (ds[0] @ A @ ds[0])))
        else:
            opt.step()
        out.append(p.detach().clone())
    return out


@register("ni23-beta0-is-sgd", source=f"{NI23}, the CG update with beta_n = 0", reference="NI23",
          statement="CG with beta = 0 is plain SGD.",
          instance="6-D quadratic, lr = 0.05, 20 steps",
          oracle="torch.optim.SGD's iterates", tol=0.0, tolerance="bitwise equality")
def _sgd(ctx: Context) -> Outcome:
    cg = _run(lambda ps: games.ConjugateGradient(ps, lr=0.05, beta=0.0), ctx, 20)
    sgd = _run(lambda ps: torch.optim.SGD(ps, lr=ctx.oracle(0.05, 0.05 * (1 + 1e-12))), ctx,
               20)
    diff = max(float((a - b).abs().max()) for a, b in zip(cg, sgd, strict=True))
    return verdict(diff <= ctx.tol, {"max_abs_diff": diff}, f"iterates differ by {diff:.3g}")


@register("ni23-constant-beta-heavy-ball", source=f"{NI23}, the CG update with a constant beta",
          reference="NI23",
          statement="CG with a constant beta is the heavy-ball method (momentum SGD).",
          instance="6-D quadratic, lr = 0.05, beta = 0.4 (cap removed), 20 steps",
          oracle="torch.optim.SGD(momentum=beta)", tol=1e-12, tolerance="max abs diff <= tol")
def _heavy_ball(ctx: Context) -> Outcome:
    cg = _run(lambda ps: games.ConjugateGradient(ps, lr=0.05, beta=0.4, beta_cap=None), ctx, 20)
    hb = _run(lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=ctx.oracle(0.4, 0.5)), ctx, 20)
    diff = max(float((a - b).abs().max()) for a, b in zip(cg, hb, strict=True))
    return verdict(diff <= ctx.tol, {"max_abs_diff": diff}, f"iterates differ by {diff:.3g}")


@register("ni23-fr-finite-termination", source=f"{NI23}, the FR rule (finite termination "
          "of CG on quadratics)", reference="NI23",
          statement="FR with an exact line search minimizes an n-dimensional strongly convex "
                    "quadratic in n steps, and steepest descent does not.",
          instance="6-D quadratic, spectrum [1, 10], beta cap removed",
          oracle="the exact minimizer A^{-1} b (torch.linalg.solve)", tol=1e-10,
          tolerance="||t_n - t*|| <= tol ||t*||; steepest descent's > 1e-3 ||t*||")
def _fr(ctx: Context) -> Outcome:
    A, b = _quadratic(ctx)
    star = ctx.oracle(torch.linalg.solve(A, b), torch.linalg.solve(A, 1.1 * b))
    fr = _run(lambda ps: games.ConjugateGradient(ps, lr=1.0, beta="FR", beta_cap=None), ctx, 6,
              lr_search=True)
    sd = _run(lambda ps: games.ConjugateGradient(ps, lr=1.0, beta=0.0), ctx, 6, lr_search=True)
    e_fr = float((fr[6] - star).norm() / star.norm())
    e_before = float((fr[5] - star).norm() / star.norm())
    e_sd = float((sd[6] - star).norm() / star.norm())
    ok = e_fr <= ctx.tol and e_sd > 1e-3 and e_before > 1e-6
    return verdict(ok, {"fr_error_n": e_fr, "fr_error_n-1": e_before, "sd_error_n": e_sd},
                   f"FR's error after n steps is {e_fr:.3g}")


# ---------------------------------------------------------------- the paper code's bugs
class _PaperToyCG:
    """The update of the paper's public toy optimizer as its documentation describes it,
    bugs included, written for these checks only (flowkit's optimizer has none of them)."""

    def __init__(self, params, lr: float, cap: float = 0.5):
        self.params, self.lr, self.cap, self.state = list(params), lr, cap, {}

    def step(self) -> None:
        for p in self.params:
            st = self.state.setdefault(p, {})
            g = p.grad
            if "d_buffer" not in st:
                d = g  # bug 1: the first step is taken along +g
                st["d_buffer"] = -g.clone()
            else:
                beta = min(float(g.pow(2).sum() / st["prev_grad"].pow(2).sum()), self.cap)
                st["beta"] = beta
                d = beta * st["d_buffer"] - g
                st["d_buffer"] = beta * d - g  # bug 2: stores beta d_n - g_n, not d_n
            st["prev_grad"] = g  # bug 3: a reference, which the next backward overwrites
            st["step"] = d.clone()
            with torch.no_grad():
                p.add_(self.lr * d)


def _toy_loss(p: torch.Tensor) -> torch.Tensor:
    return 0.5 * (torch.tensor([1.0, 4.0], dtype=f64) * p * p).sum()


def _toy_steps(opt_cls, steps: int, **kw):
    p = torch.nn.Parameter(torch.tensor([1.0, 1.0], dtype=f64))
    opt = opt_cls([p], **kw)
    losses, grads = [_toy_loss(p).item()], []
    for _ in range(steps):
        if p.grad is not None:
            p.grad.zero_()  # zero_grad(set_to_none=False): the tensor is reused in place
        _toy_loss(p).backward()
        grads.append(p.grad.clone())
        opt.step()
        losses.append(_toy_loss(p).item())
    return p, opt, losses, grads


_BUG = dict(reference="NI23", expected="fails", tol=1e-12)


@register("ni23-code-first-step-descends", source=f"{NI23}, public toy code (bug 1)",
          statement="The paper's toy code's first CG step is the descent step d_0 = -g_0.",
          instance="f(p) = (p_1^2 + 4 p_2^2)/2 from (1, 1), lr = 0.1",
          oracle="the descent step -lr g_0 (flowkit's ConjugateGradient takes it)",
          tolerance="max abs difference of the first step <= tol", **_BUG)
def _bug1(ctx: Context) -> Outcome:
    p, opt, losses, grads = _toy_steps(_PaperToyCG, 1, lr=0.1)
    taken = 0.1 * opt.state[p]["step"]
    want = ctx.oracle(-0.1 * grads[0], taken)  # the wrong oracle agrees with the code
    diff = float((taken - want).abs().max())
    return verdict(diff <= ctx.tol, {"loss_before": losses[0], "loss_after": losses[1],
                                     "step_error": diff},
                   f"the first step ascends: the loss goes from {losses[0]:.4g} to "
                   f"{losses[1]:.4g}")


@register("ni23-code-stored-direction", source=f"{NI23}, public toy code (bug 2)",
          statement="The paper's toy code stores the direction d_n it stepped along.",
          instance="f(p) = (p_1^2 + 4 p_2^2)/2 from (1, 1), lr = 0.1, 2 steps",
          oracle="the step actually taken at step 2", tolerance="max abs difference <= tol",
          **_BUG)
def _bug2(ctx: Context) -> Outcome:
    p, opt, _, grads = _toy_steps(_PaperToyCG, 2, lr=0.1)
    st = opt.state[p]
    stored = st["d_buffer"]
    want = ctx.oracle(st["step"], stored)
    diff = float((stored - want).abs().max())
    return verdict(diff <= ctx.tol, {"stored_minus_step": diff,
                                     "grad_norm": float(grads[1].norm())},
                   f"the stored direction differs from the step by {diff:.3g} (one extra "
                   "-g_n)")


@register("ni23-code-fr-beta", source=f"{NI23}, public toy code (bug 3)",
          statement="The paper's toy code computes FR's beta = ||g_{n+1}||^2 / ||g_n||^2.",
          instance="f(p) = (p_1^2 + 4 p_2^2)/2 from (1, 1), lr = 0.1, 2 steps, gradients "
                   "zeroed in place, the 0.5 cap removed",
          oracle="FR from the recorded gradients (flowkit.games.conjugate_beta)",
          tolerance="|beta_code - FR| <= tol (cap removed)", **_BUG)
def _bug3(ctx: Context) -> Outcome:
    p, opt, _, grads = _toy_steps(_PaperToyCG, 2, lr=0.1, cap=float("inf"))
    code_beta = opt.state[p]["beta"]
    fr = float(games.conjugate_beta("FR", grads[1], grads[0], -grads[0]))
    want = ctx.oracle(fr, code_beta)
    return verdict(abs(code_beta - want) <= ctx.tol, {"code_beta": code_beta, "fr_beta": fr},
                   f"the code's beta is {code_beta} (it divided ||g||^2 by itself: the previous "
                   f"gradient was an alias), FR is {fr:.4g}")


@register("ni23-flowkit-cg-clean", source=f"{NI23}, the CG update", reference="NI23",
          statement="flowkit's ConjugateGradient descends at its first step, stores the step "
                    "it takes and computes FR from a copy of the previous gradient.",
          instance="the toy instance of the ni23-code-* claims",
          oracle="-lr g_0, the parameter change, FR from the recorded gradients", tol=1e-12,
          tolerance="max abs difference <= tol")
def _clean(ctx: Context) -> Outcome:
    def make(ps, **kw):
        return games.ConjugateGradient(ps, lr=0.1, beta="FR", beta_cap=None)

    p, opt, losses, grads = _toy_steps(make, 2)
    st = opt.state[p]
    fr = float(games.conjugate_beta("FR", grads[1], grads[0], -grads[0]))
    want = ctx.oracle(fr, 0.5)
    d1 = -grads[1] + fr * (-grads[0])
    err = max(abs(float(st["beta"]) - want), float((st["d"] - d1).abs().max()))
    ok = err <= ctx.tol and losses[1] < losses[0]
    return verdict(ok, {"beta": float(st["beta"]), "fr": fr, "error": err},
                   f"error {err:.3g}")
