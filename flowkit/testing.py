r"""Conformance checks for objectives, and hypothesis strategies, for users' own test suites.

:func:`check_objective` is one call to put in the test suite of a new divergence: it runs
the checks flowkit runs on every built-in objective and raises an ``AssertionError`` that
says which property is broken and by how much.

=====================  ============================================================
check                  what it asserts
=====================  ============================================================
``shapes``             ``functional_gradient(x)`` has the shape and dtype of ``x``;
                       ``value(x)`` is a 0-dim tensor
``convention``         the :math:`L^2(\mu)` gradient convention of Nitanda & Suzuki
                       2018 [NS18], sec. 4: ``functional_gradient(x)[i] ==
                       N * d value / d x_i`` (autograd); for objectives that accept
                       ``weights``, ``(1 / w_i) d value(x, weights) / d x_i``
``first_variation``    ``d/dt L((1-t) mu + t nu)`` at ``t = 0`` equals
                       ``int psi d(nu - mu)``; the mixture weights are realized by
                       duplicated particles and the derivative by Richardson
                       extrapolation of two one-sided differences
``descent``            a small step ``x - eta grad`` decreases the value by
                       ``eta ||grad||^2_{L^2(mu)}`` to first order
``permutation``        value and gradient do not depend on the particles' order
``dtype``              float32 and float64 agree
``device``             outputs stay on the particles' device (on a machine without an
                       accelerator, on ``meta`` tensors, which catch a hidden ``.cpu()``,
                       ``.item()`` or ``.numpy()``)
``no_mutation``        the input particles are not modified in place
``validate``           ``validate`` rejects non-tensors, 1-D input, empty and
                       non-finite particles with ``ValueError`` / ``TypeError``
``pickle``             the objective and its potential survive ``pickle`` (what
                       checkpoints and :meth:`GradientLayerStack.save` need)
=====================  ============================================================

Checks that need a ``value`` are reported as not applicable when the objective defines
none; so are the weighted variants for objectives without a ``weights`` argument.

The strategies (:func:`particles`, :func:`kernels`, :func:`smooth_objectives`,
:func:`bilinear_games`, :func:`quadratic_games`) need ``hypothesis``.
"""

from __future__ import annotations

import inspect
import io
import pickle
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from flowkit.objective import FunctionalObjective
from flowkit.validation import check_int

__all__ = ["CHECKS", "ObjectiveReport", "check_objective", "particles", "kernels",
           "smooth_objectives", "bilinear_games", "quadratic_games"]

#: The names of the checks :func:`check_objective` runs, in order (its ``skip`` takes them).
CHECKS = ("shapes", "convention", "first_variation", "descent", "permutation", "dtype",
          "device", "no_mutation", "validate", "pickle")

f64 = torch.float64


class _NotApplicable(Exception):
    """Raised inside a check that does not apply to this objective (the reason is kept)."""


@dataclass
class ObjectiveReport:
    """What :func:`check_objective` found: ``passed`` and ``not_applicable`` (with reasons)."""

    passed: list[str] = field(default_factory=list)
    not_applicable: dict[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:
        na = "; ".join(f"{k}: {v}" for k, v in self.not_applicable.items())
        return f"ObjectiveReport(passed={self.passed}, not_applicable={{{na}}})"


# ---------------------------------------------------------------- helpers
def _build(make: Callable[..., FunctionalObjective], dtype: torch.dtype,
           device: torch.device | str) -> FunctionalObjective:
    params = inspect.signature(make).parameters
    kwargs = {k: v for k, v in (("dtype", dtype), ("device", device)) if k in params}
    obj = make(**kwargs)
    if not isinstance(obj, FunctionalObjective):
        raise TypeError(
            f"make_objective must return a flowkit.FunctionalObjective, got {type(obj).__name__}"
        )
    return obj


def _accepts(make: Callable[..., Any], name: str) -> bool:
    return name in inspect.signature(make).parameters


def _has_value(obj: FunctionalObjective, x: Tensor) -> bool:
    try:
        obj.value(x)
    except NotImplementedError:
        return False
    return True


def _takes_weights(obj: FunctionalObjective) -> bool:
    try:
        return all("weights" in inspect.signature(getattr(obj, m)).parameters
                   for m in ("value", "functional_gradient"))
    except (TypeError, ValueError):
        return False


def _close(got: Tensor, want: Tensor, rtol: float, atol: float) -> tuple[bool, float]:
    err = float((got - want).abs().max()) if got.numel() else 0.0
    scale = float(want.abs().max()) if want.numel() else 0.0
    return err <= atol + rtol * scale, err


def _need_value(obj: FunctionalObjective, x: Tensor) -> None:
    if not _has_value(obj, x):
        raise _NotApplicable(f"{type(obj).__name__} defines no value")


def _value_grad(obj: FunctionalObjective, x: Tensor, **kw: Tensor) -> Tensor:
    """``d value / d x`` by autograd, or by central differences when the value is not
    differentiable by autograd (e.g. computed under ``no_grad`` from a solver)."""
    z = x.detach().clone().requires_grad_(True)
    v = obj.value(z, **kw)
    if v.requires_grad:
        (g,) = torch.autograd.grad(v, z)
        return g
    h = 1e-6 * float(x.abs().max().clamp_min(1.0))
    g = torch.zeros_like(x)
    flat, out = x.detach().reshape(-1), g.view(-1)
    for k in range(flat.numel()):
        e = torch.zeros_like(flat)
        e[k] = h
        plus = float(obj.value((flat + e).view_as(x), **kw))
        minus = float(obj.value((flat - e).view_as(x), **kw))
        out[k] = (plus - minus) / (2 * h)
    return g


# ---------------------------------------------------------------- the checks
def _check_shapes(ctx: _Ctx) -> None:
    g = ctx.obj.functional_gradient(ctx.x)
    assert g.shape == ctx.x.shape, (
        f"functional_gradient(x) has shape {tuple(g.shape)}, expected the shape of x "
        f"{tuple(ctx.x.shape)}")
    assert g.dtype == ctx.x.dtype, f"functional_gradient returns {g.dtype} for {ctx.x.dtype} x"
    if _has_value(ctx.obj, ctx.x):
        v = ctx.obj.value(ctx.x)
        assert isinstance(v, Tensor) and v.dim() == 0, (
            f"value(x) must be a 0-dim tensor, got {type(v).__name__} of shape "
            f"{tuple(getattr(v, 'shape', ()))}")


def _check_convention(ctx: _Ctx) -> None:
    obj, x = ctx.obj, ctx.x
    _need_value(obj, x)
    n = x.shape[0]
    got, want = obj.functional_gradient(x), n * _value_grad(obj, x)
    ok, err = _close(got, want, ctx.rtol, ctx.atol)
    if not ok:
        ratio = float((got * want).sum() / want.pow(2).sum().clamp_min(1e-300))
        raise AssertionError(
            f"functional_gradient(x) must equal N * d value / d x_i (the L^2(mu) gradient, "
            f"N = {n}); max abs error {err:.3g}, best scalar fit got = {ratio:.4g} x expected "
            "(-1: wrong sign; 1/N: missing factor N)")
    if not _takes_weights(obj):
        ctx.report.not_applicable["convention_weighted"] = (
            "value/functional_gradient take no weights argument")
        return
    w = torch.rand(n, generator=torch.Generator().manual_seed(ctx.seed), dtype=f64) + 0.2
    w = (w / w.sum()).to(x)
    got = obj.functional_gradient(x, weights=w)
    want = _value_grad(obj, x, weights=w) / w[(...,) + (None,) * (x.dim() - 1)]
    ok, err = _close(got, want, ctx.rtol, ctx.atol)
    assert ok, (f"functional_gradient(x, weights)[i] must equal (1/w_i) d value(x, weights) / "
                f"d x_i; max abs error {err:.3g}")


def _check_first_variation(ctx: _Ctx) -> None:
    obj, x = ctx.obj, ctx.x
    _need_value(obj, x)
    n = x.shape[0]
    z = ctx.other  # nu: uniform on these points
    psi = obj.first_variation(x)
    want = float(psi(z).mean() - psi(x).mean())
    a = 40  # each x_i repeated a times, each z_j b times: t = m b / (n a + m b)

    def mixture(b: int) -> tuple[float, float]:
        cloud = torch.cat([x.repeat_interleave(a, 0), z.repeat_interleave(b, 0)])
        t = z.shape[0] * b / (n * a + z.shape[0] * b)
        return t, float(obj.value(cloud))

    base = float(obj.value(x))
    (t1, v1), (t2, v2) = mixture(1), mixture(2)
    d1, d2 = (v1 - base) / t1, (v2 - base) / t2
    fd = (t2 * d1 - t1 * d2) / (t2 - t1)  # removes the O(t) term of the one-sided quotients
    scale = max(abs(want), abs(fd), abs(d1 - d2), 1e-12)
    assert abs(fd - want) <= ctx.fv_rtol * scale + ctx.atol, (
        f"the first variation is inconsistent with the value: d/dt L((1-t) mu + t nu) at t=0 "
        f"is {fd:.6g} (finite differences in the mixture weights) but "
        f"int psi d(nu - mu) = {want:.6g}; psi is not dL/dmu of this value")


def _check_descent(ctx: _Ctx) -> None:
    obj, x = ctx.obj, ctx.x
    _need_value(obj, x)
    g = obj.functional_gradient(x)
    gn2 = float(g.pow(2).flatten(1).sum(1).mean())
    if gn2 == 0:
        raise _NotApplicable("the gradient vanishes at the test particles")
    eta = 1e-4 * float(x.abs().max().clamp_min(1.0)) / gn2 ** 0.5
    drop = float(obj.value(x)) - float(obj.value(x - eta * g))
    expected = eta * gn2
    assert drop > 0, (f"a step x - eta * functional_gradient(x) (eta = {eta:.3g}) increased the "
                      f"value by {-drop:.3g}: the gradient points uphill")
    assert abs(drop / expected - 1) < 0.05, (
        f"a small step decreased the value by {drop:.6g}, but the first-order prediction "
        f"eta ||grad||^2_(L2(mu)) is {expected:.6g} (ratio {drop / expected:.4g})")


def _check_permutation(ctx: _Ctx) -> None:
    obj, x = ctx.obj, ctx.x
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(ctx.seed))
    ok, err = _close(obj.functional_gradient(x[perm]), obj.functional_gradient(x)[perm],
                     ctx.rtol, ctx.atol)
    assert ok, f"functional_gradient depends on the particles' order (error {err:.3g})"
    if _has_value(obj, x):
        ok, err = _close(obj.value(x[perm]), obj.value(x), ctx.rtol, ctx.atol)
        assert ok, f"value depends on the particles' order (error {err:.3g})"


def _check_dtype(ctx: _Ctx) -> None:
    if not _accepts(ctx.make, "dtype"):
        raise _NotApplicable("make_objective takes no dtype argument")
    obj32 = _build(ctx.make, torch.float32, ctx.x.device)
    x32 = ctx.x.float()
    g32, g64 = obj32.functional_gradient(x32), ctx.obj.functional_gradient(ctx.x)
    assert g32.dtype == torch.float32, f"float32 particles gave a {g32.dtype} gradient"
    ok, err = _close(g32.double(), g64, 1e-3, 1e-4 * float(g64.abs().max().clamp_min(1e-12)))
    assert ok, f"float32 and float64 gradients differ by {err:.3g}"
    if _has_value(ctx.obj, ctx.x):
        v32, v64 = obj32.value(x32), ctx.obj.value(ctx.x)
        assert v32.dtype == torch.float32, f"float32 particles gave a {v32.dtype} value"
        ok, err = _close(v32.double(), v64, 1e-3, 1e-5 * (1 + float(v64.abs())))
        assert ok, f"float32 and float64 values differ by {err:.3g}"


def _check_device(ctx: _Ctx) -> None:
    device = torch.device(ctx.device)
    if not _accepts(ctx.make, "device"):
        raise _NotApplicable("make_objective takes no device argument")
    x = ctx.x.to(device)
    try:
        obj = _build(ctx.make, x.dtype, device)
    except Exception as err:
        raise _NotApplicable(f"cannot be built on {device} ({_first_line(err)})") from err
    try:
        obj.validate(x)
        outs = {"functional_gradient": obj.functional_gradient(x)}
        if _has_value(obj, x):
            outs["value"] = obj.value(x)
    except Exception as err:
        msg = _first_line(err)
        if "copy out of meta" in msg or "to numpy" in msg:
            raise AssertionError(
                f"the objective moves data off the particles' device ({device}): {msg}"
            ) from err
        if device.type != "meta":
            raise
        # an explicit read-back (a convergence test) is legitimate; without values on meta
        # the rest cannot be followed
        raise _NotApplicable(f"does not run on meta tensors ({msg})") from err
    for name, out in outs.items():
        assert out.device == device, f"{name} returned a tensor on {out.device}, not {device}"


def _first_line(err: BaseException) -> str:
    return (str(err).splitlines() or [type(err).__name__])[0]


def _check_no_mutation(ctx: _Ctx) -> None:
    obj, x = ctx.obj, ctx.x.clone()
    before = x.clone()
    psi = obj.first_variation(x)
    psi.grad(x)
    psi(x)
    obj.functional_gradient(x)
    if _has_value(obj, x):
        obj.value(x)
    assert torch.equal(x, before), (
        "the objective modified its input particles in place (max change "
        f"{float((x - before).abs().max()):.3g}); work on a copy")


def _check_validate(ctx: _Ctx) -> None:
    x = ctx.x
    bad = {"a list": x.tolist(), "a 1-D tensor": x[:, 0].contiguous(),
           "an empty tensor": x[:0], "a NaN entry": x.clone().index_fill_(0, torch.tensor([0]),
                                                                           float("nan"))}
    for what, value in bad.items():
        try:
            ctx.obj.validate(value)
        except (ValueError, TypeError) as err:
            assert str(err), f"validate rejected {what} with an empty message"
            continue
        except Exception as err:
            raise AssertionError(
                f"validate(x) with {what} raised {type(err).__name__}, expected ValueError or "
                "TypeError naming the argument") from err
        raise AssertionError(f"validate(x) accepted {what}")


def _check_pickle(ctx: _Ctx) -> None:
    for what, thing in (("the objective", ctx.obj),
                        ("its potential", ctx.obj.first_variation(ctx.x))):
        try:
            blob = pickle.dumps(thing)
        except Exception as err:
            raise AssertionError(
                f"{what} cannot be pickled ({type(err).__name__}: {err}); checkpoints and "
                "GradientLayerStack.save need it: avoid lambdas and local functions") from err
        pickle.loads(blob)
    buf = io.BytesIO()
    torch.save(ctx.obj.first_variation(ctx.x), buf)


_RUN = {"shapes": _check_shapes, "convention": _check_convention,
        "first_variation": _check_first_variation, "descent": _check_descent,
        "permutation": _check_permutation, "dtype": _check_dtype, "device": _check_device,
        "no_mutation": _check_no_mutation, "validate": _check_validate,
        "pickle": _check_pickle}


@dataclass
class _Ctx:
    make: Callable[..., FunctionalObjective]
    obj: FunctionalObjective
    x: Tensor
    other: Tensor
    seed: int
    device: str
    rtol: float
    atol: float
    fv_rtol: float
    report: ObjectiveReport


def check_objective(make_objective: Callable[..., FunctionalObjective], *,
                    x: Tensor | None = None, n: int = 8, dim: int = 2, seed: int = 0,
                    device: str | torch.device | None = None, rtol: float = 1e-6,
                    atol: float = 1e-9, checks: Iterable[str] | None = None,
                    skip: Mapping[str, str] | None = None) -> ObjectiveReport:
    """Run the conformance checks on an objective; raise ``AssertionError`` on the first
    broken property, with a message that says what is wrong.

    Parameters
    ----------
    make_objective : callable
        Builds the objective. If it accepts ``dtype`` and ``device`` keyword arguments they
        are passed (float64 and CPU for the main checks, float32 and the accelerator or
        ``meta`` device for the ``dtype`` and ``device`` checks); otherwise those two checks
        are not applicable.
    x : Tensor, optional
        Test particles (float64, CPU), default ``n`` standard normal points in ``R^dim``.
    seed : int
        Seeds the default particles, the second measure of the first-variation check and
        the permutation.
    device : str or torch.device, optional
        Device of the ``device`` check: default ``"cuda"`` when available, else ``"meta"``.
    rtol, atol : float
        Tolerances of the float64 comparisons against autograd.
    checks : iterable of str, optional
        The checks to run (default: all of :data:`CHECKS`).
    skip : mapping, optional
        ``{check: reason}`` for checks that do not apply; the reason is kept in the report.

    Returns
    -------
    ObjectiveReport
        The checks that passed and those not applicable, with reasons.

    Examples
    --------
    >>> import torch, flowkit as fk
    >>> from flowkit.testing import check_objective
    >>> def make(dtype=torch.float64, device="cpu"):
    ...     y = torch.randn(6, 2, generator=torch.Generator().manual_seed(0)).to(device, dtype)
    ...     return fk.objectives.MMD(y, fk.kernels.Gaussian(1.0))
    >>> check_objective(make).passed[:3]
    ['shapes', 'convention', 'first_variation']
    """
    seed = check_int(seed, "seed", minimum=0)
    selected = list(CHECKS if checks is None else checks)
    unknown = [c for c in selected if c not in CHECKS] + [c for c in (skip or {})
                                                          if c not in CHECKS]
    if unknown:
        raise ValueError(f"checks/skip name unknown checks {unknown}; known: {CHECKS}")
    if not callable(make_objective):
        raise TypeError(
            f"make_objective must be a callable returning an objective, got "
            f"{type(make_objective).__name__}")
    gen = torch.Generator().manual_seed(seed)
    if x is None:
        x = torch.randn(check_int(n, "n"), check_int(dim, "dim"), generator=gen, dtype=f64)
    elif not isinstance(x, Tensor) or x.dtype != f64 or x.device.type != "cpu":
        raise TypeError("x must be a float64 CPU tensor (the reference precision)")
    other = 0.7 * torch.randn(3, *x.shape[1:], generator=gen, dtype=f64) + x.mean(0)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "meta"
    report = ObjectiveReport()
    ctx = _Ctx(make_objective, _build(make_objective, f64, "cpu"), x, other, seed, str(device),
               rtol, atol, max(1e-4, rtol), report)
    for name in selected:
        if skip and name in skip:
            report.not_applicable[name] = skip[name]
            continue
        try:
            _RUN[name](ctx)
        except _NotApplicable as why:
            report.not_applicable[name] = str(why)
            continue
        except AssertionError as err:
            raise AssertionError(f"check_objective[{name}] {type(ctx.obj).__name__}: {err}") \
                from err
        report.passed.append(name)
    return report


# ---------------------------------------------------------------- hypothesis strategies
def _st():
    try:
        from hypothesis import strategies as st
    except ImportError as err:  # pragma: no cover - hypothesis is in the test extra
        raise ImportError("flowkit.testing strategies need hypothesis: pip install "
                          "hypothesis") from err
    return st


def particles(*, n: Any = None, dim: Any = None, dtypes: Iterable[torch.dtype] = (f64,),
              weighted: bool = False, degenerate: bool = True):
    """Particle clouds ``(N, d)`` (or ``(x, weights)`` with ``weighted=True``).

    ``n`` and ``dim`` are strategies (default 1-16 and 1-4); ``degenerate`` mixes in the
    cases objectives get wrong: a single particle, duplicated particles, and a cloud far
    from the origin (offset 1e3). Weights are positive and sum to one.
    """
    st = _st()
    n = st.integers(1, 16) if n is None else n
    dim = st.integers(1, 4) if dim is None else dim
    kinds = ["plain", "single", "duplicates", "far"] if degenerate else ["plain"]

    @st.composite
    def build(draw):
        kind, d = draw(st.sampled_from(kinds)), draw(dim)
        size = 1 if kind == "single" else draw(n)
        seed = draw(st.integers(0, 2**31 - 1))
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(size, d, generator=g, dtype=f64)
        if kind == "duplicates" and size > 1:
            x[size // 2:] = x[: size - size // 2].clone()
        if kind == "far":
            x = x + 1e3
        x = x.to(draw(st.sampled_from(list(dtypes))))
        if not weighted:
            return x
        w = torch.rand(size, generator=g, dtype=f64) + 0.05
        return x, (w / w.sum()).to(x.dtype)

    return build()


def kernels():
    """``(kernel, hessian_bound)`` pairs: Gaussian and inverse multiquadric kernels with
    their guaranteed bound on ``sup ||Hess k||`` (closed form, not read from the kernel)."""
    st = _st()
    from flowkit import kernels as K

    gauss = st.floats(0.2, 3.0).map(lambda h: (K.Gaussian(h), 1.0 / h**2))
    imq = st.tuples(st.floats(0.3, 3.0), st.floats(-0.9, -0.1)).map(
        lambda cb: (K.InverseMultiquadric(cb[0], cb[1]), 2 * abs(cb[1]) / cb[0] ** 2))
    return st.one_of(gauss, imq)


def smooth_objectives(dim: int = 2):
    """``(objective, smoothness, minimum)``: quadratic potentials and interaction energies
    on ``R^dim`` with their smoothness constant in :math:`L^2(\\mu)` and infimum."""
    st = _st()
    from flowkit.objectives import InteractionEnergy, QuadraticObjective

    def quadratic(args):
        seed, lo, ratio = args
        g = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=f64))
        eig = torch.linspace(lo, lo * ratio, dim, dtype=f64)
        A = q @ torch.diag(eig) @ q.T
        A = (A + A.T) / 2
        return QuadraticObjective(A, torch.randn(dim, generator=g, dtype=f64)), \
            float(eig.max()), 0.0

    def interaction(args):
        lam, a = args
        return InteractionEnergy(lam, a), lam + a, 0.0

    return st.one_of(
        st.tuples(st.integers(0, 2**31 - 1), st.floats(0.1, 2.0), st.floats(1.0, 50.0)).map(
            quadratic),
        st.tuples(st.floats(0.1, 3.0), st.floats(0.0, 3.0)).map(interaction))


def bilinear_games(max_dim: int = 3):
    """``(game, singular_values)``: bilinear games ``x^T C y`` with square ``C`` of known
    singular values in ``[0.1, 2]`` and random rotations."""
    st = _st()
    from flowkit.games import Bilinear

    def build(args):
        seed, sigmas = args
        g = torch.Generator().manual_seed(seed)
        d = len(sigmas)
        u, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=f64))
        v, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=f64))
        s = torch.tensor(sigmas, dtype=f64)
        return Bilinear(u @ torch.diag(s) @ v.T), sorted(sigmas)

    return st.tuples(st.integers(0, 2**31 - 1),
                     st.lists(st.floats(0.1, 2.0), min_size=1, max_size=max_dim)).map(build)


def quadratic_games(max_dim: int = 3):
    """Stable quadratic games ``1/2 x^T A x + x^T C y - 1/2 y^T B y`` with ``A, B``
    positive definite (eigenvalues in ``[0.1, 2]``) and a random interaction ``C``."""
    st = _st()
    from flowkit.games import Quadratic

    def build(args):
        seed, d, scale = args
        g = torch.Generator().manual_seed(seed)

        def spd():
            q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=f64))
            m = q @ torch.diag(0.1 + 1.9 * torch.rand(d, generator=g, dtype=f64)) @ q.T
            return (m + m.T) / 2

        return Quadratic(spd(), scale * torch.randn(d, d, generator=g, dtype=f64), spd())

    return st.tuples(st.integers(0, 2**31 - 1), st.integers(1, max_dim),
                     st.floats(0.0, 2.0)).map(build)
