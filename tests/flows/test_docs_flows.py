"""docs/flows.md: its runnable examples print what the page says they print."""

import contextlib
import io
import re
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parents[2] / "docs" / "flows.md"


def test_flows_page_examples_print_their_documented_output():
    pytest.importorskip("ksddescent")
    text = PAGE.read_text()
    examples = re.findall(r"```python\n(.*?)```\n+Output:\n+```\n(.*?)```", text, re.S)
    assert len(examples) >= 5, "docs/flows.md lost its runnable examples"
    for code, expected in examples:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, str(PAGE), "exec"), {"__name__": "__doc_example__"})
        assert out.getvalue().strip() == expected.strip()
