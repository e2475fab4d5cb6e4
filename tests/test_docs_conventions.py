"""The snippets of docs/conventions.md run: each asserts its own scaling."""

import re
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parents[1] / "docs" / "conventions.md"
SNIPPETS = re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.S)


def test_the_page_has_its_snippets():
    assert len(SNIPPETS) == 4


@pytest.mark.parametrize("index", range(len(SNIPPETS)))
def test_convention_snippet(index):
    code = SNIPPETS[index]
    if "geomloss" in code:
        pytest.importorskip("geomloss")
    exec(compile(code, f"conventions.md snippet {index}", "exec"), {"__name__": "__doc__"})
