"""Claims of Nitanda & Suzuki (2018) [NS18]: gradient layers, Algorithms 2-3, Theorem 1,
injectivity, energy dissipation, and flowkit's gradient convention."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

import flowkit as fk
from flowkit.claims.registry import Context, Outcome, register, verdict
from flowkit.objectives import MMD, InteractionEnergy, QuadraticObjective

f64 = torch.float64
NS18 = "Nitanda & Suzuki 2018 [NS18]"


def _spd(gen: torch.Generator, d: int, lo: float, hi: float) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=f64))
    return q @ torch.diag(torch.linspace(lo, hi, d, dtype=f64)) @ q.T


def _values(obj, eta, x0, n_steps):
    """Run Algorithm 3 and return (values at every step, result)."""
    res = fk.FunctionalGradientDescent(obj, eta, monitors=[_value], monitor_every=1,
                                       keep_layers=False, progress=False).run(x0, n_steps)
    return res.history["value"], res


def _value(state):
    return {"value": float(state.objective.value(state.particles))}


@register("ns18-layer-map", source=f"{NS18}, eq. (1)", reference="NS18",
          statement="A gradient layer is the map G(x) = x - eta grad psi(x).",
          instance="MMD witness potential (Gaussian kernel, 12 particles in R^3), eta = 0.3",
          oracle="autograd gradient of an independently written witness function",
          tol=1e-12, tolerance="max abs difference <= tol")
def _layer_map(ctx: Context) -> Outcome:
    g = ctx.generator()
    y, x, z = (torch.randn(n, 3, generator=g, dtype=f64) for n in (10, 12, 7))
    h = 0.9
    psi = MMD(y, fk.kernels.Gaussian(h)).first_variation(x)

    def witness(p):  # twice the MMD witness, written out: 2 (E_mu k(p, x) - E_nu k(p, y))
        def k(a, b):
            return torch.exp(-((a[:, None] - b[None]) ** 2).sum(-1) / (2 * h * h))
        return 2 * (k(p, x).mean(1) - k(p, y).mean(1))

    zz = z.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(witness(zz).sum(), zz)
    want = ctx.oracle(z - 0.3 * grad, z + 0.3 * grad)
    err = float((fk.GradientLayer(psi, 0.3)(z) - want).abs().max())
    return verdict(err <= ctx.tol, {"max_abs_error": err}, f"G(z) differs by {err:.3g}")


@register("ns18-alg3-stack", source=f"{NS18}, Algorithms 2-3", reference="NS18",
          statement="Algorithm 3's particles are the base particles pushed through the stack "
                    "G_T o ... o G_1 it builds.",
          instance="MMD flow, 16 particles in R^2, 8 steps, eta = 0.5",
          oracle="the layers applied one by one by hand", tol=1e-12,
          tolerance="max abs difference <= tol")
def _stack(ctx: Context) -> Outcome:
    g = ctx.generator()
    y, x0 = torch.randn(16, 2, generator=g, dtype=f64), torch.randn(16, 2, generator=g, dtype=f64)
    res = fk.FunctionalGradientDescent(MMD(y, fk.kernels.Gaussian(1.0)), 0.5,
                                       progress=False).run(x0, 8)
    x = x0
    for layer in res.layers.layers:
        x = x - layer.step_size * layer.potential.grad(x)
    x = ctx.oracle(x, x0)
    err = max(float((res.particles - x).abs().max()), float((res.layers(x0) - x).abs().max()))
    return verdict(err <= ctx.tol, {"max_abs_error": err, "layers": len(res.layers)},
                   f"the stack and the run differ by {err:.3g}")


@register("ns18-alg2-determinism", source=f"{NS18}, Algorithm 2", reference="NS18",
          statement="Algorithm 2 is deterministic: a saved and reloaded stack maps fresh base "
                    "samples to bit-identical outputs.",
          instance="MMD flow, 20 particles in R^2, 5 layers; 33 fresh samples",
          oracle="the in-memory stack's outputs (torch.equal)", tol=0.0,
          tolerance="bitwise equality")
def _determinism(ctx: Context) -> Outcome:
    g = ctx.generator()
    y, x0 = torch.randn(20, 2, generator=g, dtype=f64), torch.randn(20, 2, generator=g, dtype=f64)
    res = fk.FunctionalGradientDescent(MMD(y, fk.kernels.Gaussian(0.8)), 0.5,
                                       progress=False).run(x0, 5)
    z = torch.randn(33, 2, generator=g, dtype=f64)
    with tempfile.TemporaryDirectory() as tmp:
        loaded = fk.GradientLayerStack.load(res.layers.save(Path(tmp) / "stack.pt"))
    want = ctx.oracle(res.layers(z), res.layers(z).nextafter(torch.tensor(1e9, dtype=f64)))
    same = torch.equal(loaded(z), want) and torch.equal(loaded(z), loaded(z))
    diff = float((loaded(z) - want).abs().max())
    return verdict(same, {"max_abs_diff": diff}, f"outputs differ by {diff:.3g}")


@register("ns18-bilipschitz", source=f"{NS18}, sec. 3.2", reference="NS18",
          statement="If grad psi is Lip-Lipschitz and eta Lip < 1, the layer satisfies "
                    "(1 - eta Lip)|x-y| <= |G x - G y| <= (1 + eta Lip)|x-y|.",
          instance="MMD witness (inverse multiquadric kernel), eta Lip = 0.9, 256 pairs "
                   "(half of them 1e-3 apart)",
          oracle="the two inequalities with the kernel's guaranteed constant", tol=1e-10,
          tolerance="relative to |x - y|, plus 64 eps of the points' norms")
def _bilipschitz(ctx: Context) -> Outcome:
    g = ctx.generator()
    psi = MMD(torch.randn(10, 2, generator=g, dtype=f64),
              fk.kernels.InverseMultiquadric(0.7)).first_variation(
        torch.randn(10, 2, generator=g, dtype=f64))
    lip = fk.theory.lipschitz_bound(psi).value
    frac = 0.9
    layer = fk.GradientLayer(psi, frac / lip)
    x = 1.5 * torch.randn(256, 2, generator=g, dtype=f64)
    y = torch.cat([1.5 * torch.randn(128, 2, generator=g, dtype=f64),
                   x[128:] + 1e-3 * torch.randn(128, 2, generator=g, dtype=f64)])
    dist, mapped = (x - y).norm(dim=1), (layer(x) - layer(y)).norm(dim=1)
    lo, hi = ctx.oracle((1 - frac, 1 + frac), (1.0, 1.0))  # wrong: an isometry
    slack = ctx.tol * dist + 64 * torch.finfo(f64).eps * (x.norm(dim=1) + y.norm(dim=1))
    ratio = mapped / dist
    ok = bool(torch.all(mapped >= lo * dist - slack) and torch.all(mapped <= hi * dist + slack))
    return verdict(ok, {"eta_lip": frac, "min_ratio": float(ratio.min()),
                        "max_ratio": float(ratio.max())},
                   f"a pair has |Gx-Gy|/|x-y| outside [{lo}, {hi}]")


@register("ns18-kernel-hessian-bound", source=f"{NS18}, sec. 3.2 (the constant Lip for MMD "
          "witnesses)", reference="NS18",
          statement="The guaranteed Hessian bound of the Gaussian kernel, 1/h^2, dominates and "
                    "is attained by the sampled Hessian norms of k(., 0).",
          instance="Gaussian kernel, h = 0.7, 400 points on a ray",
          oracle="power iteration on autograd Hessian-vector products", tol=1e-2,
          tolerance="estimate in [(1 - tol) bound, bound (1 + 1e-9)]")
def _hessian_bound(ctx: Context) -> Outcome:
    k = fk.kernels.Gaussian(0.7)
    y = torch.zeros(1, 2, dtype=f64)
    psi = fk.FunctionPotential(lambda z: k(z, y)[:, 0])
    pts = torch.linspace(0, 5, 400, dtype=f64)[:, None] * torch.tensor([[1.0, 0.0]], dtype=f64)
    est = fk.theory.lipschitz_bound(psi, pts, n_iter=60).value
    bound = ctx.oracle(k.hessian_bound(), 0.5 * k.hessian_bound())
    ok = (1 - ctx.tol) * bound <= est <= bound * (1 + 1e-9)
    return verdict(ok, {"sampled": est, "guaranteed": bound},
                   f"sampled Hessian norm {est:.6g} against bound {bound:.6g}")


def _theorem1(ctx: Context, obj, eta, x0, T) -> Outcome:
    values, res = _values(obj, eta, x0, T)
    cert = fk.theory.theorem1_certificate(res.trace["grad_norm2"], values[0], obj.minimum, eta,
                                          obj.smoothness, values=values)
    bound = ctx.oracle(cert.bound, 0.01 * cert.min_grad_norm2)
    ok = cert.step_condition and cert.contradiction is None and cert.min_grad_norm2 <= bound
    return verdict(ok, {"min_grad_norm2": cert.min_grad_norm2, "bound": bound,
                        "ratio": cert.min_grad_norm2 / bound, "L": obj.smoothness, "eta": eta},
                   f"min ||g||^2 = {cert.min_grad_norm2:.4g} > bound {bound:.4g} "
                   f"({cert.contradiction or 'no contradiction'})")


_T1 = dict(reference="NS18", tol=0.0,
           oracle="the right-hand side 2 (L_0 - L_*) / (eta T) with the known L and L_*",
           tolerance="min ||g||^2 <= bound, eta <= 1/L, and no step contradicts L")


@register("ns18-theorem1-quadratic", source=f"{NS18}, Theorem 1",
          statement="For an L-smooth objective and eta <= 1/L, min_k ||grad L(phi_k)||^2 <= "
                    "2 (L(phi_0) - L_*) / (eta T).",
          instance="QuadraticObjective, A with spectrum [1, 20] in R^4, eta = 1/L, T = 30",
          **_T1)
def _t1_quad(ctx: Context) -> Outcome:
    g = ctx.generator()
    obj = QuadraticObjective(_spd(g, 4, 1.0, 20.0), torch.randn(4, generator=g, dtype=f64))
    return _theorem1(ctx, obj, 1 / obj.smoothness, 2 * torch.randn(16, 4, generator=g,
                                                                   dtype=f64), 30)


@register("ns18-theorem1-interaction", source=f"{NS18}, Theorem 1",
          statement="Theorem 1's bound holds for the interaction energy with L = lambda + a.",
          instance="InteractionEnergy(0.6, 1.4), 16 particles in R^3, eta = 0.9/L, T = 25",
          **_T1)
def _t1_inter(ctx: Context) -> Outcome:
    g = ctx.generator()
    obj = InteractionEnergy(0.6, 1.4, torch.randn(3, generator=g, dtype=f64))
    return _theorem1(ctx, obj, 0.9 / obj.smoothness,
                     2 * torch.randn(16, 3, generator=g, dtype=f64), 25)


@register("ns18-theorem1-mmd", source=f"{NS18}, Theorem 1",
          statement="Theorem 1's bound holds for MMD^2 with a Gaussian kernel, L = 6 L_k.",
          instance="MMD to 15 points in R^2, Gaussian(0.8), 12 particles, eta = 1/L, T = 40",
          **_T1)
def _t1_mmd(ctx: Context) -> Outcome:
    g = ctx.generator()
    obj = MMD(torch.randn(15, 2, generator=g, dtype=f64), fk.kernels.Gaussian(0.8))
    return _theorem1(ctx, obj, 1 / obj.smoothness, 2 * torch.randn(12, 2, generator=g,
                                                                   dtype=f64), 40)


@register("ns18-descent-lemma", source=f"{NS18}, proof of Theorem 1", reference="NS18",
          statement="With eta <= 1/L each step decreases the objective by at least "
                    "(eta/2) ||grad||^2.",
          instance="QuadraticObjective (spectrum [0.5, 8] in R^3), eta = 1/L, T = 20",
          oracle="the per-step inequality L_k - L_{k+1} >= (eta/2) ||g_k||^2", tol=1e-12,
          tolerance="absolute slack tol (1 + |L_k|)")
def _descent(ctx: Context) -> Outcome:
    g = ctx.generator()
    obj = QuadraticObjective(_spd(g, 3, 0.5, 8.0))
    eta = 1 / obj.smoothness
    values, res = _values(obj, eta, 2 * torch.randn(10, 3, generator=g, dtype=f64), 20)
    factor = ctx.oracle(0.5, 1.5)
    slack = [values[k] - values[k + 1] - factor * eta * res.trace["grad_norm2"][k]
             for k in range(20)]
    worst = min(slack)
    return verdict(worst >= -ctx.tol * (1 + abs(values[0])), {"min_slack": worst},
                   f"a step decreased the objective by less than {factor} eta ||g||^2")


@register("ns18-dissipation", source=f"{NS18}, eq. (6)", reference="NS18",
          statement="Along the flow dL/dt = -||grad L||^2, so one Euler step's residual "
                    "(L_k - L_{k+1}) / (eta ||g_k||^2) - 1 is O(eta).",
          instance="MMD flow, Gaussian(1), 30 particles in R^2, 5 steps at eta = 1e-2 and 1e-3",
          oracle="first-order scaling: residual(eta/10) <= residual(eta) / 5", tol=1e-2,
          tolerance="and residual(1e-3) < tol")
def _dissipation(ctx: Context) -> Outcome:
    g = ctx.generator()
    obj = MMD(torch.randn(30, 2, generator=g, dtype=f64), fk.kernels.Gaussian(1.0))
    x0 = torch.randn(30, 2, generator=g, dtype=f64) + 1
    worst = []
    for eta in (1e-2, 1e-3):
        values, res = _values(obj, eta, x0, 5)
        r = fk.theory.dissipation_residuals(values, res.trace["grad_norm2"],
                                            res.trace["step_size"])
        worst.append(max(abs(v) for v in r))
    shrink = ctx.oracle(5.0, 50.0)
    ok = worst[1] < worst[0] / shrink and worst[1] < ctx.tol
    return verdict(ok, {"residual_1e-2": worst[0], "residual_1e-3": worst[1],
                        "ratio": worst[0] / worst[1]}, "the residual is not O(eta)")


@register("ns18-l2-gradient", source=f"{NS18}, sec. 4 (functional gradient in L^2(mu))",
          reference="NS18",
          statement="The functional gradient at particle i is N d L / d x_i, so step sizes do "
                    "not depend on N.",
          instance="MMD, InteractionEnergy, QuadraticObjective; 9 particles in R^3",
          oracle="N times autograd of value", tol=1e-9, tolerance="relative error <= tol")
def _convention(ctx: Context) -> Outcome:
    g = ctx.generator()
    x = torch.randn(9, 3, generator=g, dtype=f64)
    objs = [MMD(torch.randn(7, 3, generator=g, dtype=f64), fk.kernels.Gaussian(0.9)),
            InteractionEnergy(0.7, 1.3), QuadraticObjective(_spd(g, 3, 0.5, 3.0))]
    worst = 0.0
    for obj in objs:
        z = x.clone().requires_grad_(True)
        (dv,) = torch.autograd.grad(obj.value(z), z)
        want = ctx.oracle(x.shape[0] * dv, dv)
        got = obj.functional_gradient(x)
        worst = max(worst, float((got - want).norm() / want.norm()))
    return verdict(worst <= ctx.tol, {"max_rel_error": worst},
                   f"functional_gradient differs from N dL/dx by {worst:.3g}")


@register("ns18-theorem1-wrong-L", source=f"{NS18}, Theorem 1 (its hypothesis)",
          reference="NS18",
          statement="A declared smoothness constant that the run contradicts yields no "
                    "certificate (flowkit.theory checks the descent inequality per step).",
          instance="QuadraticObjective(2 I) declared 0.1-smooth, eta = 0.9, 5 steps",
          oracle="descent-lemma slack computed by hand from the values", tol=1e-6,
          tolerance="contradiction reported iff the hand slack < -tol")
def _wrong_l(ctx: Context) -> Outcome:
    obj = QuadraticObjective(2 * torch.eye(1, dtype=f64))
    declared = ctx.oracle(0.1, 2.0)
    values, res = _values(obj, 0.9, torch.full((4, 1), 0.1, dtype=f64), 5)
    gn = res.trace["grad_norm2"]
    hand = min(values[k] - 0.9 * (1 - 0.1 * 0.9 / 2) * gn[k] - values[k + 1] for k in range(5))
    cert = fk.theory.theorem1_certificate(gn, values[0], 0.0, 0.9, declared, values=values)
    ok = (cert.contradiction is not None) == (hand < -ctx.tol) and not cert.holds
    return verdict(ok, {"hand_slack": hand, "step_condition": float(cert.step_condition)},
                   f"certificate {cert!r} against hand slack {hand:.3g}")
