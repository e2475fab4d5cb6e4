"""The ledger of claims: what a claim is, how it is run, and how its verdict is reported.

A :class:`Claim` ties one sentence of a paper (or of flowkit's own documentation) to a
seeded instance, an oracle that does not share code with the thing checked (a closed form,
POT, scipy, autograd, or a reference implementation written for the check) and a
tolerance. Running it gives an :class:`Outcome`: *holds*, *fails* (with the
counterexample's numbers) or *inconclusive*.

Every check also accepts a deliberately wrong oracle (``mutate=True``): a check whose
verdict does not change then is a check that cannot fail, and :func:`run_claims` with
``mutate=True`` reports it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from flowkit.validation import check_choice, check_int

__all__ = ["Claim", "Outcome", "Context", "ClaimResult", "REGISTRY", "register", "claims",
           "run_claims", "VERDICTS"]

#: The verdicts a check can return: the claim holds, fails (with a counterexample), or the
#: check cannot decide (e.g. a rate whose constants the paper does not give).
VERDICTS = ("holds", "fails", "inconclusive")


@dataclass(frozen=True)
class Outcome:
    """A verdict with its key numbers and, for *fails*, the counterexample in words."""

    verdict: str
    numbers: dict[str, float] = field(default_factory=dict)
    detail: str = ""


class Context:
    """What a check receives: its seed, a generator, and the oracle switch.

    ``oracle(true, wrong)`` returns ``true`` normally and ``wrong`` under mutation, so
    every check states next to its oracle the wrong one it must reject.
    """

    def __init__(self, seed: int, tol: float, mutate: bool = False):
        self.seed, self.tol, self.mutate = seed, tol, mutate

    def generator(self, offset: int = 0) -> torch.Generator:
        """A CPU generator seeded with ``seed + offset`` (instances are CPU, float64)."""
        return torch.Generator().manual_seed(self.seed + offset)

    def oracle(self, true: Any, wrong: Any) -> Any:
        """The oracle's answer, or the deliberately wrong one under mutation."""
        return wrong if self.mutate else true


@dataclass(frozen=True)
class Claim:
    """One checked statement.

    Attributes
    ----------
    id : str
        Stable identifier, ``<paper key>-<topic>`` (e.g. ``ns18-theorem1-quadratic``).
    source : str
        Paper and place: theorem / proposition / equation / algorithm number.
    reference : str
        The ``docs/references.md`` key of the paper (e.g. ``NS18``).
    statement : str
        The claim in one sentence.
    instance : str
        The seeded instance the check generates.
    oracle : str
        What the result is compared with.
    tol : float
        The tolerance the check uses (its meaning is in ``tolerance``).
    tolerance : str
        How ``tol`` enters the comparison.
    expected : str
        The verdict flowkit asserts: ``"holds"``, or ``"fails"`` for a statement flowkit
        documents as false (a counterexample).
    check : callable
        ``check(ctx: Context) -> Outcome``.
    """

    id: str
    source: str
    reference: str
    statement: str
    instance: str
    oracle: str
    tol: float
    tolerance: str
    expected: str
    check: Callable[[Context], Outcome]


#: Every registered claim by id, in registration order (filled by :func:`register`).
REGISTRY: dict[str, Claim] = {}


def register(id: str, *, source: str, reference: str, statement: str, instance: str,
             oracle: str, tol: float, tolerance: str, expected: str = "holds"
             ) -> Callable[[Callable[[Context], Outcome]], Callable[[Context], Outcome]]:
    """Decorator adding a check function to :data:`REGISTRY` under ``id``."""
    check_choice(expected, "expected", VERDICTS[:2])

    def deco(fn: Callable[[Context], Outcome]) -> Callable[[Context], Outcome]:
        if id in REGISTRY:
            raise ValueError(f"claim id {id!r} registered twice")
        REGISTRY[id] = Claim(id, source, reference, statement, instance, oracle, tol,
                             tolerance, expected, fn)
        return fn

    return deco


def claims(only: Iterable[str] | None = None) -> list[Claim]:
    """The registered claims in registration order, or those named in ``only``."""
    _load()
    if only is None:
        # the table's order, whichever claim module was imported first (stable sort:
        # registration order within a module; claims registered elsewhere come last)
        return sorted(REGISTRY.values(), key=_table_rank)
    only = list(only)
    unknown = [i for i in only if i not in REGISTRY]
    if unknown:
        raise ValueError(f"only names unknown claim ids {unknown}; see `flowkit verify --list`")
    return [REGISTRY[i] for i in only]


@dataclass(frozen=True)
class ClaimResult:
    """A claim, its outcome on one seed, and whether that is what flowkit asserts."""

    claim: Claim
    outcome: Outcome
    seconds: float
    mutated: bool = False

    @property
    def ok(self) -> bool:
        """Normal run: the verdict is the expected one. Mutated run: it is not (the wrong
        oracle was caught)."""
        same = self.outcome.verdict == self.claim.expected
        return not same if self.mutated else same

    def as_dict(self) -> dict[str, Any]:
        c = self.claim
        return {"id": c.id, "source": c.source, "reference": c.reference,
                "statement": c.statement, "instance": c.instance, "oracle": c.oracle,
                "tolerance": c.tolerance, "tol": c.tol, "expected": c.expected,
                "verdict": self.outcome.verdict, "numbers": self.outcome.numbers,
                "detail": self.outcome.detail, "seconds": round(self.seconds, 3),
                "mutated": self.mutated, "ok": self.ok}


def run_claims(selected: Sequence[Claim], *, seed: int = 0, mutate: bool = False,
               callback: Callable[[ClaimResult], None] | None = None) -> list[ClaimResult]:
    """Run each claim's check on ``seed`` (a check that raises is *inconclusive*)."""
    seed = check_int(seed, "seed", minimum=0)
    results = []
    for claim in selected:
        t0 = time.perf_counter()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                outcome = claim.check(Context(seed, claim.tol, mutate))
            if outcome.verdict not in VERDICTS:
                raise ValueError(f"check returned verdict {outcome.verdict!r}")
        except Exception as err:  # a broken check must show up in the table, not abort it
            outcome = Outcome("inconclusive", {}, f"the check raised {type(err).__name__}: {err}")
        result = ClaimResult(claim, outcome, time.perf_counter() - t0, mutate)
        results.append(result)
        if callback is not None:
            callback(result)
    return results


def verdict(ok: bool, numbers: dict[str, float], failure: str = "") -> Outcome:
    """``holds`` when ``ok``, else ``fails`` with ``failure`` as the counterexample."""
    return Outcome("holds" if ok else "fails", _rounded(numbers), "" if ok else failure)


def _rounded(numbers: dict[str, float]) -> dict[str, float]:
    out = {}
    for k, v in numbers.items():
        v = float(v)
        out[k] = v if v == 0 or not math.isfinite(v) else float(f"{v:.4g}")
    return out


_MODULES = ("core", "mmd", "games", "cg", "flows")  # the order of the table


def _table_rank(claim: Claim) -> int:
    module = claim.check.__module__.rpartition(".")[2]
    return _MODULES.index(module) if module in _MODULES else len(_MODULES)


def _load() -> None:
    # the claim modules register themselves on import
    import importlib

    for name in _MODULES:
        importlib.import_module(f"flowkit.claims.{name}")
