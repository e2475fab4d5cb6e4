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
                      "sphinx.ext.autosummary", "sphinx.ext.mathjax",
                      "sphinx-mathjax-offline"):  # math renders without network
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


# --- cross-references between the guides and the API pages (built by docs/_api.py)


def _guide_doctree(path: Path):
    """A guide read by MyST without Sphinx (roles Sphinx adds stay unresolved)."""
    from docutils.core import publish_doctree
    from myst_parser.parsers.docutils_ import Parser

    return publish_doctree(path.read_text("utf-8"), parser=Parser(), settings_overrides={
        "myst_enable_extensions": _api.MYST_EXTENSIONS, "report_level": 5,
        "halt_level": 5, "warning_stream": False})


@pytest.fixture(scope="module")
def linked_guides():
    """``{docname: (doctree after the link pass, set of link targets)}`` for every guide."""
    from sphinx import addnodes

    out = {}
    for docname, path in _api.guides().items():
        tree = _guide_doctree(path)
        _api.link_literals(tree, docname)
        out[docname] = (tree, {n["reftarget"] for n in tree.findall(addnodes.pending_xref)})
    return out


def test_resolve_finds_the_documented_page_of_a_name():
    assert _api.resolve("fk.objectives.MMD(kernel, target)") == ("obj", "flowkit.objectives.MMD")
    # a re-export and a private module path both land on the one page
    assert _api.resolve("flowkit.layers.GradientLayer") == ("obj", "flowkit.GradientLayer")
    assert _api.resolve("fk.flows.svgd.SVGD") == ("obj", "flowkit.flows.SVGD")
    assert _api.resolve("fk.FunctionalGradientDescent.run(x)") == (
        "obj", "flowkit.FunctionalGradientDescent")
    assert _api.resolve("flowkit.kernels") == ("mod", "flowkit.kernels")
    assert _api.resolve("~flowkit.monitors.W2") == ("obj", "flowkit.monitors.W2")
    assert _api.resolve("SVGD") == ("obj", "flowkit.flows.SVGD")
    assert _api.resolve("fk.datasets.digits(n=64)") == ("obj", "flowkit.datasets.digits")
    # a module re-exported whole at the top level links to the top-level section
    assert _api.resolve("flowkit.potential") == ("mod", "flowkit")
    # ambiguous (objective and monitor), prose, private or unknown: no link
    # a bare function: maybe a method of that name (``run(...)`` of the engine)
    for code in ("MMD", "digits", "flowkit.experiments", "fk.nothing_here", "W2 vs time",
                 "kernels.py", "run(x, checkpoint=path)", "kernel_sum"):
        assert _api.resolve(code) is None, code


def test_the_link_pass_links_code_and_prose_and_nothing_else():
    from docutils import nodes
    from docutils.utils import new_document
    from sphinx import addnodes

    tree = new_document("guide")
    para = nodes.paragraph()
    para += [nodes.literal("fk.flows.SVGD(kernel)", "fk.flows.SVGD(kernel)"),
             nodes.Text(" runs, see flowkit.theory. and "), nodes.literal("MMD", "MMD")]
    tree += [para, nodes.literal_block("fk.flows.SVGD()", "fk.flows.SVGD()")]
    assert _api.link_literals(tree, "guide") == 2
    refs = list(tree.findall(addnodes.pending_xref))
    assert [(r["reftype"], r["reftarget"]) for r in refs] == [
        ("obj", "flowkit.flows.SVGD"), ("mod", "flowkit.theory")]
    assert all(r["refwarn"] for r in refs)  # a vanished target fails the -W build
    assert para.astext() == "fk.flows.SVGD(kernel) runs, see flowkit.theory. and MMD"


def test_every_public_name_a_guide_names_is_linked(linked_guides):
    from docutils import nodes
    from sphinx import addnodes

    unlinked = []
    for docname, (tree, _) in linked_guides.items():
        for node in tree.findall(lambda n: isinstance(n, (nodes.Text, nodes.literal))):
            if any(isinstance(a, (addnodes.pending_xref, nodes.literal_block, nodes.raw,
                                  nodes.math, nodes.math_block, nodes.literal))
                   for a in _api._ancestors(node.parent)):
                continue  # linked already, code, math; or the text of a literal
            text = node.astext()
            if _api.resolve(text) if isinstance(node, nodes.literal) else any(
                    _api.resolve(m.group(0)) for m in _api._QUALIFIED.finditer(text)):
                unlinked.append(f"{docname}: {text[:60]}")
    assert unlinked == []
    assert sum(len(targets) for _, targets in linked_guides.values()) > 100


def test_every_api_page_lists_the_guides_that_link_it(linked_guides, tmp_path):
    usage = _api.used_in()
    missing = [(target, docname) for docname, (_, targets) in linked_guides.items()
               for target in targets if docname not in usage.get(target, [])]
    assert missing == []
    # a stub page gets its line under the title, a module its line on the index page
    stub = "flowkit.flows.SVGD\n==================\n\n.. currentmodule:: flowkit.flows\n"
    page = _api.add_backlinks(stub, usage["flowkit.flows.SVGD"])
    assert page.startswith("flowkit.flows.SVGD\n====") and ":doc:`/flows`" in page
    assert page.index(":doc:`/flows`") < page.index(".. currentmodule::")
    index = _api.write_api_index(tmp_path / "index.rst", usage).read_text()
    section = index[index.index(".. automodule:: flowkit.kernels"):]
    assert section[:section.index(".. autosummary::")].count(":doc:`/") == len(
        usage["flowkit.kernels"])


def test_see_also_entries_name_documented_objects():
    # numpydoc's See Also links do not warn when their target is gone: check them here
    from numpydoc.docscrape import NumpyDocString

    dead, seen = [], 0
    for entries in _api.public_api().values():
        for qualname, obj in entries:
            if not (isinstance(obj, type) or callable(obj)):
                continue
            doc = NumpyDocString(_api.docstring(qualname, obj) or "")
            for items, _ in doc["See Also"]:
                seen += 1
                dead += [f"{qualname}: {name}" for name, _ in items if not _api.resolve(name)]
    assert dead == []
    assert seen >= 30  # the siblings: the MMD family, the flows, the critics
