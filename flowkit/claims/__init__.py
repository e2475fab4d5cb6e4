"""The ledger of checked claims behind ``flowkit verify``.

Each :class:`Claim` names a paper's statement (with its theorem or equation number and the
``docs/references.md`` key), a seeded instance, an independent oracle and a tolerance;
:func:`run_claims` gives each a verdict: *holds*, *fails* (with the counterexample) or
*inconclusive*. See ``docs/verify.md`` for the current table.
"""

from flowkit.claims.registry import (
    REGISTRY,
    VERDICTS,
    Claim,
    ClaimResult,
    Context,
    Outcome,
    claims,
    register,
    run_claims,
)

__all__ = ["Claim", "ClaimResult", "Context", "Outcome", "REGISTRY", "VERDICTS", "claims",
           "register", "run_claims"]
