"""A table of bad inputs for every public entry point, and the rule that judges each answer.

Each :class:`Entry` calls one public callable with good keyword arguments; the sweep replaces
one argument at a time with a bad value of that argument's *kind* and classifies what comes
back:

* ``clear``: a ``ValueError`` or ``TypeError`` whose message names the argument;
* ``correct``: a result, for a bad value that has a sensible reading (a float64 weight vector
  next to float32 samples, a numpy array), equal to the call with the value converted; or,
  where an entry documents that non-finite input propagates (``first_variation``, which
  the engine calls at every step and so leaves the finiteness test to the engine's own
  check rather than synchronise with the device), a result that is visibly non-finite;
* ``silent``: a result where an error was due, or a non-finite / different result;
* ``raw``: any other exception, or a ``ValueError``/``TypeError`` that does not name the
  argument.

``tests/test_api_fuzz.py`` asserts that every case is ``clear`` or ``correct``; run this
file as a script (``python tests/api_fuzz.py``) for the counts and the list of failures.
The table grows with the API: a new public callable gets an entry here.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

import flowkit as fk

N, M, D = 12, 15, 2


def _cloud(n: int, d: int = D, seed: int = 0, shift: float = 0.0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed)) + shift


X = _cloud(N, seed=1)
Y = _cloud(M, seed=2, shift=0.5)
W_M = torch.full((M,), 1.0 / M)


@dataclass(frozen=True)
class Bad:
    """One bad value: ``must_raise`` if no result can be right, else ``convert`` gives the
    good value it stands for (the result must then equal the converted call's)."""

    label: str
    make: Callable[[Any], Any]
    must_raise: bool = True
    convert: Callable[[Any], Any] | None = None


def _with_nan(t):
    t = t.clone()
    t.view(-1)[0] = float("nan")
    return t


def _with_inf(t):
    t = t.clone()
    t.view(-1)[-1] = float("inf")
    return t


# Bad values by kind. ``good`` is the good value of the argument being replaced.
KINDS: dict[str, list[Bad]] = {
    "particles": [
        Bad("nan", _with_nan),
        Bad("inf", _with_inf),
        Bad("empty", lambda t: t[:0]),
        Bad("1-d", lambda t: t[:, 0]),
        Bad("wrong-dim", lambda t: torch.cat([t, t[:, :1]], 1)),
        Bad("int-dtype", lambda t: t.round().long()),
        Bad("string", lambda t: "abc"),
        Bad("none", lambda t: None),
        Bad("list", lambda t: t.tolist(), must_raise=False, convert=lambda v: torch.tensor(v)),
        Bad("numpy", lambda t: t.numpy(), must_raise=False, convert=torch.from_numpy),
        Bad("float64", lambda t: t.double(), must_raise=False, convert=lambda v: v.float()),
    ],
    # a sample whose event dimension is free (no partner to match)
    "sample": [
        Bad("nan", _with_nan),
        Bad("inf", _with_inf),
        Bad("empty", lambda t: t[:0]),
        Bad("1-d", lambda t: t[:, 0]),
        Bad("int-dtype", lambda t: t.round().long()),
        Bad("string", lambda t: "abc"),
    ],
    "weights": [
        Bad("wrong-shape", lambda w: w[:-1]),
        Bad("2-d", lambda w: w[:, None]),
        Bad("nan", _with_nan),
        Bad("int-dtype", lambda w: w.long()),
        Bad("string", lambda w: "abc"),
        Bad("float64", lambda w: w.double(), must_raise=False, convert=lambda v: v.float()),
        Bad("float16", lambda w: w.half(), must_raise=False, convert=lambda v: v.float()),
    ],
    "positive": [
        Bad("zero", lambda v: 0.0),
        Bad("negative", lambda v: -1.0),
        Bad("nan", lambda v: float("nan")),
        Bad("inf", lambda v: float("inf")),
        Bad("string", lambda v: "abc"),
        Bad("bool", lambda v: True),
        Bad("none", lambda v: None),
    ],
    "nonneg": [
        Bad("negative", lambda v: -1.0),
        Bad("nan", lambda v: float("nan")),
        Bad("inf", lambda v: float("inf")),
        Bad("string", lambda v: "abc"),
    ],
    "count": [
        Bad("zero", lambda v: 0),
        Bad("negative", lambda v: -1),
        Bad("float", lambda v: 2.5),
        Bad("string", lambda v: "abc"),
        Bad("bool", lambda v: True),
        Bad("nan", lambda v: float("nan")),
    ],
    "count0": [  # a count that may be 0
        Bad("negative", lambda v: -1),
        Bad("float", lambda v: 2.5),
        Bad("string", lambda v: "abc"),
        Bad("nan", lambda v: float("nan")),
    ],
    "seed": [
        Bad("negative", lambda v: -1),
        Bad("float", lambda v: 2.5),
        Bad("string", lambda v: "abc"),
        Bad("none", lambda v: None),
    ],
    "choice": [
        Bad("unknown", lambda v: "no-such-option"),
        Bad("int", lambda v: 3),
        Bad("none", lambda v: None),
    ],
    "kernel": [
        Bad("string", lambda v: "gaussian"),
        Bad("number", lambda v: 1.0),
    ],
    "callable": [
        Bad("number", lambda v: 1.0),
        Bad("string", lambda v: "abc"),
    ],
}


@dataclass
class Entry:
    """A public callable, its good keyword arguments and the kind of each checked one."""

    name: str
    call: Callable[..., Any]
    good: dict[str, Callable[[], Any]]
    kinds: dict[str, str]
    # where the caller's name for an argument differs from the keyword (e.g. a method
    # argument passed through a lambda), the name the message must contain
    names: dict[str, str] = field(default_factory=dict)
    # NaN/inf input may come back as a visibly non-finite result instead of an error
    propagates_nonfinite: bool = False

    def kwargs(self) -> dict[str, Any]:
        return {k: make() for k, make in self.good.items()}


def _result_ok(value: Any) -> bool:
    """Finite numbers everywhere in a result (tensors, floats, dataclasses, tuples)."""
    if isinstance(value, torch.Tensor):
        return value.device.type == "meta" or bool(torch.isfinite(value).all())
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, (tuple, list)):
        return all(_result_ok(v) for v in value)
    if hasattr(value, "value") and isinstance(value.value, (float, torch.Tensor)):
        return _result_ok(value.value)
    return True


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and torch.allclose(a.double(), b.double(), rtol=1e-4,
                                                      atol=1e-5)
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-6)
    if hasattr(a, "value") and hasattr(b, "value"):
        return _same(a.value, b.value)
    return True


def classify(entry: Entry, arg: str, bad: Bad) -> tuple[str, str]:
    """``(outcome, detail)`` for one bad value of one argument."""
    kwargs = entry.kwargs()
    good_value = kwargs[arg]
    kwargs[arg] = bad.make(good_value)
    shown = entry.names.get(arg, arg)
    try:
        result = entry.call(**kwargs)
    except (ValueError, TypeError) as err:
        if shown in str(err):
            return "clear", f"{type(err).__name__}: {err}"
        return "raw", f"unnamed {type(err).__name__}: {err}"
    except Exception as err:  # noqa: BLE001 - the point is to catch anything raw
        return "raw", f"{type(err).__name__}: {err}"
    if entry.propagates_nonfinite and bad.label in ("nan", "inf") and not _result_ok(result):
        return "correct", "non-finite input propagated to a non-finite result"
    if bad.must_raise:
        return "silent", f"returned {type(result).__name__} without an error"
    if not _result_ok(result):
        return "silent", "returned a non-finite result"
    reference_kwargs = entry.kwargs()
    reference_kwargs[arg] = bad.convert(bad.make(good_value))
    reference = entry.call(**reference_kwargs)
    if not _same(result, reference):
        return "silent", "returned a result different from the converted call's"
    return "correct", "equal to the converted call"


def cases(entries: list[Entry]) -> list[tuple[Entry, str, Bad]]:
    return [(e, arg, bad) for e in entries for arg, kind in e.kinds.items() for bad in KINDS[kind]]


# --------------------------------------------------------------------------- the table
G = fk.kernels.Gaussian


def _x():
    return X.clone()


def _y():
    return Y.clone()


def _quadratic_A():
    return torch.eye(D)


def _objective_entries() -> list[Entry]:
    obj = fk.objectives
    out: list[Entry] = []
    makers: dict[str, tuple[Callable[..., Any], dict[str, Callable[[], Any]], dict[str, str]]] = {
        "MMD": (lambda target, bandwidth: obj.MMD(target, G(bandwidth)),
                {"target": _y, "bandwidth": lambda: 1.0},
                {"target": "sample", "bandwidth": "positive"}),
        "EnergyDistance": (lambda target: obj.EnergyDistance(target), {"target": _y},
                           {"target": "sample"}),
        "NoisyMMDFlow": (lambda target, noise_level, seed: obj.NoisyMMDFlow(
            target, G(1.0), noise_level=noise_level, seed=seed),
            {"target": _y, "noise_level": lambda: 1.0, "seed": lambda: 0},
            {"target": "sample", "noise_level": "nonneg", "seed": "seed"}),
        "SinkhornDivergence": (lambda target, blur: obj.SinkhornDivergence(target, blur=blur),
                               {"target": _y, "blur": lambda: 0.5},
                               {"target": "sample", "blur": "positive"}),
        "SobolevDescent": (lambda target, lam, n_features: obj.SobolevDescent(
            target, lam=lam, n_features=n_features),
            {"target": _y, "lam": lambda: 1e-3, "n_features": lambda: 32},
            {"target": "sample", "lam": "positive", "n_features": "count"}),
        "InteractionEnergy": (lambda confinement, attraction: obj.InteractionEnergy(
            confinement, attraction), {"confinement": lambda: 1.0, "attraction": lambda: 1.0},
            {"confinement": "nonneg", "attraction": "nonneg"}),
        "QuadraticObjective": (lambda A: obj.QuadraticObjective(A), {"A": _quadratic_A},
                               {"A": "sample"}),
    }
    for name, (make, good, kinds) in makers.items():
        out.append(Entry(f"objectives.{name}", make, good, kinds))
        for method in ("functional_gradient", "first_variation", "value"):
            if method == "value" and name in ("NoisyMMDFlow", "SobolevDescent"):
                continue  # no value is defined (NotImplementedError, documented)

            def call(x, _make=make, _good=good, _method=method):
                objective = _make(**{k: v() for k, v in _good.items()})
                result = getattr(objective, _method)(x)
                # a potential is judged by what it gives at the particles
                return result.grad(x) if _method == "first_variation" else result

            # without a target, any event shape is a valid sample
            kind = "sample" if name == "InteractionEnergy" else "particles"
            out.append(Entry(f"objectives.{name}.{method}", call, {"x": _x}, {"x": kind},
                             propagates_nonfinite=method == "first_variation"))
    return out


def _kernel_entries() -> list[Entry]:
    k = fk.kernels
    out = [
        Entry("kernels.Gaussian", lambda bandwidth: k.Gaussian(bandwidth),
              {"bandwidth": lambda: 1.0}, {"bandwidth": "positive"}),
        Entry("kernels.Laplacian", lambda bandwidth: k.Laplacian(bandwidth),
              {"bandwidth": lambda: 1.0}, {"bandwidth": "positive"}),
        Entry("kernels.InverseMultiquadric", lambda scale: k.InverseMultiquadric(scale),
              {"scale": lambda: 1.0}, {"scale": "positive"}),
        Entry("kernels.SumKernel", lambda kernels: k.SumKernel(kernels),
              {"kernels": lambda: [G(1.0)]}, {"kernels": "kernel"}),
    ]
    for fn in ("kernel_sum", "kernel_grad_sum"):
        out.append(Entry(
            f"kernels.{fn}",
            lambda x, y, kernel, weights, backend, block_size, _fn=fn: getattr(k, _fn)(
                x, y, kernel, weights, backend=backend, block_size=block_size),
            {"x": _x, "y": _y, "kernel": lambda: G(1.0), "weights": lambda: W_M.clone(),
             "backend": lambda: "auto", "block_size": lambda: 4},
            {"x": "particles", "y": "particles", "kernel": "kernel", "weights": "weights",
             "backend": "choice", "block_size": "count"}))
    out.append(Entry("kernels.mmd2", lambda x, y, kernel, backend: k.mmd2(
        x, y, kernel, backend=backend),
        {"x": _x, "y": _y, "kernel": lambda: G(1.0), "backend": lambda: "auto"},
        {"x": "particles", "y": "particles", "kernel": "kernel", "backend": "choice"}))
    return out


def _monitor_entries() -> list[Entry]:
    m = fk.monitors
    return [
        Entry("monitors.wasserstein", lambda x, y, p, n_projections: m.wasserstein(
            x, y, p, n_projections=n_projections),
            {"x": _x, "y": _y, "p": lambda: 2, "n_projections": lambda: 50},
            {"x": "particles", "y": "particles", "p": "choice", "n_projections": "count"}),
        Entry("monitors.W2", lambda target, x: m.W2(target)(x), {"target": _y, "x": _x},
              {"target": "particles", "x": "particles"}, names={"x": "particles"}),
        Entry("monitors.W1", lambda target, x: m.W1(target)(x), {"target": _y, "x": _x},
              {"target": "particles", "x": "particles"}, names={"x": "particles"}),
        Entry("monitors.MMD", lambda target, x: m.MMD(target)(x),
              {"target": _y, "x": _x}, {"target": "particles", "x": "particles"},
              names={"x": "particles"}),
    ]


def _engine_entries() -> list[Entry]:
    def run(x0, step_size, n_steps, monitor_every):
        flow = fk.FunctionalGradientDescent(fk.objectives.MMD(Y), step_size,
                                            monitor_every=monitor_every, progress=False)
        return flow.run(x0, n_steps).particles

    def layer(step_size):
        psi = fk.objectives.MMD(Y).first_variation(X)
        return fk.GradientLayer(psi, step_size)(X)

    return [
        Entry("FunctionalGradientDescent.run", run,
              {"x0": _x, "step_size": lambda: 0.5, "n_steps": lambda: 3,
               "monitor_every": lambda: 1},
              {"x0": "particles", "step_size": "positive", "n_steps": "count0",
               "monitor_every": "count"}, names={"x0": "x"}),
        Entry("GradientLayer", layer, {"step_size": lambda: 0.1}, {"step_size": "positive"}),
    ]


def _theory_entries() -> list[Entry]:
    t = fk.theory
    psi = fk.objectives.MMD(Y).first_variation(X)
    return [
        Entry("theory.theorem1_bound", lambda initial_value, minimum, step_size, n_steps:
              t.theorem1_bound(initial_value, minimum, step_size, n_steps),
              {"initial_value": lambda: 1.0, "minimum": lambda: 0.0, "step_size": lambda: 0.1,
               "n_steps": lambda: 10},
              {"step_size": "positive", "n_steps": "count"}),
        Entry("theory.lipschitz_bound", lambda x, n_iter: t.lipschitz_bound(psi, x,
                                                                             n_iter=n_iter),
              {"x": _x, "n_iter": lambda: 5}, {"x": "sample", "n_iter": "count"}),
    ]


def _dataset_entries() -> list[Entry]:
    out = []
    for name in ("eight_gaussians", "twenty_five_gaussians", "swiss_roll"):
        fn = getattr(fk.datasets, name)
        out.append(Entry(f"datasets.{name}", lambda n, seed, _fn=fn: _fn(n, seed),
                         {"n": lambda: 10, "seed": lambda: 0}, {"n": "count", "seed": "seed"}))
    return out


def _critic_entries() -> list[Entry]:
    c = fk.critics
    return [
        Entry("critics.WGANGPCritic", lambda dim, hidden, lr: c.WGANGPCritic(
            dim=dim, hidden=hidden, lr=lr), {"dim": lambda: 2, "hidden": lambda: 8,
                                             "lr": lambda: 1e-3},
              {"dim": "count", "hidden": "count", "lr": "positive"}),
        Entry("nn.MLP", lambda in_features, hidden, depth: fk.nn.MLP(in_features, 1, hidden,
                                                                       depth),
              {"in_features": lambda: 2, "hidden": lambda: 8, "depth": lambda: 2},
              {"in_features": "count", "hidden": "count", "depth": "count"}),
    ]


def _game_entries() -> list[Entry]:
    g = fk.games
    out = []
    for cls in (g.SGA, g.OMD, g.EG):
        out.append(Entry(f"games.{cls.__name__}", lambda step_size, _c=cls: _c(step_size),
                         {"step_size": lambda: 0.1}, {"step_size": "positive"}))
    out.append(Entry("games.run", lambda n_steps: g.run(
        g.Bilinear(torch.eye(2, dtype=torch.float64)), g.SGA(0.1),
        torch.ones(4, dtype=torch.float64), n_steps).final,
        {"n_steps": lambda: 5}, {"n_steps": "count0"}))
    return out


def entries() -> list[Entry]:
    """Every entry of the table."""
    return (_objective_entries() + _kernel_entries() + _monitor_entries() + _engine_entries()
            + _theory_entries() + _dataset_entries() + _critic_entries() + _game_entries())


def sweep() -> dict[str, list[tuple[str, str, str, str]]]:
    """Outcome -> list of ``(entry, argument, bad value, detail)``."""
    out: dict[str, list[tuple[str, str, str, str]]] = {
        "clear": [], "correct": [], "silent": [], "raw": []}
    for entry, arg, bad in cases(entries()):
        outcome, detail = classify(entry, arg, bad)
        out[outcome].append((entry.name, arg, bad.label, detail.splitlines()[0][:160]))
    return out


if __name__ == "__main__":
    torch.manual_seed(0)
    result = sweep()
    total = sum(len(v) for v in result.values())
    print(f"{total} bad inputs over {len(entries())} entry points")
    for outcome in ("clear", "correct", "silent", "raw"):
        print(f"  {outcome:8s} {len(result[outcome])}")
    for outcome in ("silent", "raw"):
        for row in result[outcome]:
            print(f"{outcome:7s}", " | ".join(row))
    sys.exit(1 if result["silent"] or result["raw"] else 0)

