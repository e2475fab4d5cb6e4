"""The documentation site: every public name has a docstring and an API page, and the
docstrings' ``>>>`` examples run."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import re
import sys
from pathlib import Path

import pytest

import flowkit

DOCS = Path(__file__).resolve().parents[1] / "docs"
sys.path.insert(0, str(DOCS))
_api = pytest.importorskip("_api")
pytest.importorskip("sphinx")  # reading `#:` comments of constants needs sphinx.pycode

# Names of the kernels and backends modules whose docstring or `#:` comment is their
# owner's to write; the test fails as soon as the set changes, so it cannot hide a new gap.
# re-exported by flowkit.kernels from flowkit.backends, where their ``#:`` comments sit
UNDOCUMENTED_CONSTANTS = {"flowkit.kernels.BACKENDS", "flowkit.kernels.DEFAULT_MEMORY_BUDGET"}


def test_every_public_name_has_a_docstring():
    missing = {q for entries in _api.public_api().values() for q, obj in entries
               if not _api.docstring(q, obj)}
    assert missing == UNDOCUMENTED_CONSTANTS


def test_every_public_name_has_an_api_page(tmp_path):
    page = _api.write_api_index(tmp_path / "index.rst").read_text()
    api = _api.public_api()
    assert "flowkit" in api and "flowkit.games" in api and "flowkit.monitors" in api
    for section, entries in api.items():
        assert f".. currentmodule:: {section}" in page or section == "flowkit"
        for qualname, _ in entries:
            assert f"\n   {qualname[len(section) + 1:]}\n" in page, qualname
    # derived from __all__: a new public name gets a page without editing the docs
    top = {q for q, _ in api["flowkit"]}
    assert {f"flowkit.{n}" for n in flowkit.__all__
            if not isinstance(getattr(flowkit, n), type(flowkit))} == top


def test_the_site_sources_are_wired():
    conf = (DOCS / "conf.py").read_text()
    for extension in ("numpydoc", "myst_parser", "sphinx_gallery.gen_gallery",
                      "sphinx.ext.autosummary", "sphinx.ext.mathjax"):
        assert f'"{extension}"' in conf
    index = (DOCS / "index.md").read_text()
    for page in ("api/index", "auto_examples/index", "references", "conventions"):
        assert page in index
    examples = sorted((DOCS.parent / "examples").glob("plot_*.py"))
    assert len(examples) >= 7


def _doctest_modules() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(flowkit.__path__, "flowkit."):
        module = importlib.import_module(info.name)
        finder = doctest.DocTestFinder()
        if any(t.examples for t in finder.find(module, module.__name__)):
            names.append(info.name)
    return names


@pytest.mark.parametrize("name", _doctest_modules())
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
                             verbose=False)
    assert result.failed == 0, f"{result.failed} failing example(s) in {name}"


# Escape sequences a LaTeX name turns into in a non-raw docstring: \nabla, \theta, \beta...
_MANGLED = re.compile(r"\nabla|\t(?:heta|au\b|imes|ilde|ext)|[\a\b\f\v]")


def _docstrings() -> list[tuple[str, str]]:
    out = []
    for entries in _api.public_api().values():
        for qualname, obj in entries:
            out.append((qualname, _api.docstring(qualname, obj) or ""))
            if isinstance(obj, type):
                for name, member in vars(obj).items():
                    doc = getattr(member, "__doc__", None)
                    if callable(member) and not name.startswith("_") and doc:
                        out.append((f"{qualname}.{name}", doc))
    return out


def test_no_docstring_has_a_latex_name_eaten_by_an_escape():
    bad = [q for q, doc in _docstrings() if _MANGLED.search(doc)]
    assert bad == [], "use an r-prefixed docstring: " + ", ".join(bad)


def test_summary_lines_keep_their_literals_closed():
    # autosummary cuts the summary at the first ". ": a literal must not span it
    bad = []
    for qualname, doc in _docstrings():
        first = re.split(r"\.\s", doc.strip().split("\n\n")[0] + " ", maxsplit=1)[0]
        if first.count("``") % 2:
            bad.append(qualname)
    assert bad == []


def test_no_source_file_holds_a_control_character():
    # a "\a", "\b", "\f" or "\v" escape in a non-raw string, written to disk by a tool, leaves
    # a control byte where a LaTeX name was (private docstrings are not rendered, so the
    # docstring test above does not see them)
    root = Path(__file__).resolve().parents[1]
    files = [p for d in ("flowkit", "tests", "benchmarks", "examples", "docs")
             for p in (root / d).rglob("*") if p.suffix in (".py", ".md", ".c")]
    bad = [str(p.relative_to(root)) for p in files
           if any(c in p.read_text(encoding="utf-8") for c in "\a\b\f\v")]
    assert bad == []
