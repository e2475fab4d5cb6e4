"""Every public entry point answers a bad input with a clear error or a correct result.

The table of entry points and bad values is in ``tests/api_fuzz.py``; it grows with the
API. An error is clear when it is a ``ValueError`` or ``TypeError`` that names the argument
the caller passed; a result is correct when it equals the call with the value converted.
"""

import api_fuzz
import pytest

CASES = api_fuzz.cases(api_fuzz.entries())


@pytest.mark.parametrize(
    "entry, arg, bad", CASES, ids=[f"{e.name}-{a}-{b.label}" for e, a, b in CASES]
)
def test_bad_input_gets_a_clear_error_or_a_correct_result(entry, arg, bad):
    outcome, detail = api_fuzz.classify(entry, arg, bad)
    assert outcome in ("clear", "correct"), detail


def test_the_table_covers_the_public_api():
    names = {e.name.split(".")[0] for e in api_fuzz.entries()}
    assert {"objectives", "kernels", "monitors", "theory", "datasets", "critics", "games"} <= names
    assert len(CASES) > 500
