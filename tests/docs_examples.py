"""The docs pages' runnable examples: a ``python`` block followed by its ``Output:`` block.

One reader and one runner for every page whose printed output the tests check.
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs"
_BLOCK = r"((?:(?!```).)*?)"


def examples(page: str | Path) -> list[tuple[str, str]]:
    """``(code, expected output)`` of each example of ``page`` (a name under docs/ or a path)."""
    path = DOCS / page if isinstance(page, str) else page
    text = path.read_text()
    return re.findall(rf"```python\n{_BLOCK}```\n+Output:\n+```\n{_BLOCK}```", text, re.S)


def check_page(page: str | Path) -> int:
    """Run every example of ``page``, compare what it prints with its Output block, and
    return how many examples ran (callers assert the page still has theirs)."""
    found = examples(page)
    for code, expected in found:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, str(page), "exec"), {"__name__": "__doc_example__"})
        assert out.getvalue().strip() == expected.strip()
    return len(found)
