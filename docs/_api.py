"""The public API of flowkit, read from the ``__all__`` lists, and its reference page.

``conf.py`` calls :func:`write_api_index` at every build, so a name added to an ``__all__``
gets its page without anyone editing the docs; ``tests/test_docs_site.py`` uses
:func:`public_api` to check that every public name has a docstring and a page.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import pkgutil
import re
import warnings
from pathlib import Path
from types import ModuleType

# sub-packages that are machinery of the command line, not a library API
_SKIP = {"flowkit.experiments"}


def _modules() -> list[ModuleType]:
    import flowkit

    found = []
    for info in pkgutil.iter_modules(flowkit.__path__, "flowkit."):
        if info.name.split(".")[-1].startswith("_") or info.name in _SKIP:
            continue
        module = importlib.import_module(info.name)
        if hasattr(module, "__all__"):
            found.append(module)
    return found


def public_api() -> dict[str, list[tuple[str, object]]]:
    """``{section: [(qualified name, object), ...]}``: ``flowkit`` first, then each module.

    A name re-exported at the top level (``flowkit.GradientLayer``) is documented once,
    under ``flowkit``; modules themselves are sections, not entries.
    """
    import flowkit

    seen: set[int] = set()
    api: dict[str, list[tuple[str, object]]] = {"flowkit": []}
    for name in flowkit.__all__:
        obj = getattr(flowkit, name)
        if not inspect.ismodule(obj):
            api["flowkit"].append((f"flowkit.{name}", obj))
            seen.add(id(obj))
    for module in _modules():
        entries = []
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.ismodule(obj) or (id(obj) in seen and not _is_data(obj)):
                continue
            entries.append((f"{module.__name__}.{name}", obj))
            if not _is_data(obj):
                seen.add(id(obj))
        if entries:
            api[module.__name__] = entries
    return api


def _is_data(obj: object) -> bool:
    return not (inspect.isclass(obj) or inspect.isroutine(obj) or inspect.ismodule(obj))


def docstring(qualname: str, obj: object) -> str | None:
    """The docstring of a public name; for data, its ``#:`` comment."""
    if not _is_data(obj):
        return inspect.getdoc(obj)
    from sphinx.pycode import ModuleAnalyzer

    import flowkit

    module, _, name = qualname.rpartition(".")
    # the ``#:`` comment sits where the constant is defined, maybe a private sub-module
    candidates = [module] + [m.name for m in pkgutil.walk_packages(flowkit.__path__, "flowkit.")
                             if m.name.startswith(module + ".")]
    for candidate in candidates:
        try:
            docs = ModuleAnalyzer.for_module(candidate).find_attr_docs()
        except Exception:  # noqa: BLE001 - a module without source: nothing to read
            continue
        lines = docs.get(("", name))
        if lines and getattr(importlib.import_module(candidate), name, None) is obj:
            return "\n".join(lines).strip()
    return None


def write_api_index(path: str | Path, usage: dict[str, list[str]] | None = None) -> Path:
    """Write the API reference page (autosummary tables, one stub page per name).

    ``usage`` (from :func:`used_in`) adds under each module the guides that name it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["API reference", "=============", "",
             "Every public name of flowkit, one page each, generated from the ``__all__`` "
             "lists and the numpydoc docstrings.", ""]
    for section, entries in public_api().items():
        lines += [f"``{section}``", "-" * (len(section) + 4), "",
                  f".. automodule:: {section}", "   :no-members:", "",
                  backlinks((usage or {}).get(section, [])),
                  f".. currentmodule:: {section.rpartition('.')[0] or section}"
                  if section == "flowkit" else f".. currentmodule:: {section}", "",
                  ".. autosummary::", "   :toctree: generated", "   :nosignatures:", ""]
        for qualname, _ in entries:
            short = qualname[len(section) + 1:]
            lines.append(f"   {short}")
        lines.append("")
    text = "\n".join(lines)
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")
    return path


# --- cross-references: the guides link the names they discuss, the API pages link back
#
# A build-time pass, so the guides stay plain Markdown: every inline code span of a guide
# that names a public object (``flowkit.X.Y``, ``fk.X.Y`` with ``import flowkit as fk``,
# or the bare name of a class that is unique in the API), and every ``flowkit.X.Y`` in its
# prose, becomes a link to its API page (:func:`link_literals`, on ``doctree-read``), and
# every API page lists the guides that name it (:func:`used_in`, written into the pages on
# ``source-read``). Both read the same :func:`resolve`, so a link and its backlink cannot
# disagree, and both are recomputed at every build, so neither goes stale.

DOCS = Path(__file__).resolve().parent
#: MyST syntax extensions of the site (``conf.py`` reads them from here, and so does the
#: guides' scan, so both see the same code spans).
MYST_EXTENSIONS = ["dollarmath", "amsmath", "colon_fence", "deflist"]
# ``flowkit.a.b`` or ``fk.a.b`` at the start of a code span, up to the first non-name
_QUALIFIED = re.compile(r"(?:flowkit|fk)(?:\.[A-Za-z_]\w*)+")
_BARE = re.compile(r"([A-Za-z_]\w*)(\(|\.|$)")
# roles of the Python domain whose target counts as a mention of that name
_PY_ROLES = {"class", "func", "meth", "obj", "mod", "data", "attr", "exc",
             "py:class", "py:func", "py:meth", "py:obj", "py:mod", "py:data", "py:attr",
             "py:exc"}


def guides() -> dict[str, Path]:
    """``{docname: path}`` of the Markdown guides (every ``docs/*.md``), in the order of
    the site's table of contents (the index first), so a "Used in" line reads like it."""
    paths = {p.stem: p for p in sorted(DOCS.glob("*.md"))}
    toc = re.search(r"```\{toctree\}(.*?)```", paths["index"].read_text("utf-8"), re.S)
    entries = [line.strip() for line in (toc.group(1) if toc else "").splitlines()]
    order = ["index", *(e for e in entries if e in paths)]
    return {name: paths[name] for name in dict.fromkeys([*order, *paths])}


@functools.lru_cache(maxsize=1)
def _targets() -> tuple[dict[int, str], set[str], dict[str, str]]:
    """Canonical qualname by object id, the documented modules, unique short names."""
    by_id: dict[int, str] = {}
    data: set[str] = set()
    short: dict[str, list[str]] = {}
    api = public_api()
    for entries in api.values():
        for qualname, obj in entries:
            short.setdefault(qualname.rpartition(".")[2], []).append(qualname)
            if _is_data(obj):
                data.add(qualname)
            else:
                by_id.setdefault(id(obj), qualname)
    unique = {name: q[0] for name, q in short.items() if len(q) == 1}
    return by_id, data | set(api), unique


def resolve(code: str) -> tuple[str, str] | None:
    """The API target a code span names: ``(role, qualname)`` or None.

    ``role`` is ``"mod"`` for a documented module and ``"obj"`` otherwise; ``qualname``
    is where the name is documented (``fk.objectives.MMD(kernel)`` gives
    ``("obj", "flowkit.objectives.MMD")``; a re-export gives its one page). A method or
    attribute of a public class resolves to the class; a module whose names are all
    documented in one section (``flowkit.potential``) resolves to that section.
    """
    import flowkit

    by_id, documented, unique = _targets()
    code = code.strip().lstrip("~!")
    match = _QUALIFIED.match(code)
    if match:
        parts = match.group(0).split(".")[1:]
        chain: list[object] = [flowkit]
        for part in parts:
            with warnings.catch_warnings():  # a deprecated alias still names its page
                warnings.simplefilter("ignore", DeprecationWarning)
                nxt = getattr(chain[-1], part, None)
            if nxt is None:
                break
            chain.append(nxt)
        # longest documented prefix: flowkit.games.ConjugateGradient.step -> the class
        for k in range(len(chain) - 1, 0, -1):
            obj, dotted = chain[k], ".".join(["flowkit", *parts[:k]])
            if inspect.ismodule(obj):
                if obj.__name__ in documented:
                    return "mod", obj.__name__
                # a module whose names are all documented elsewhere (``flowkit.potential``,
                # re-exported at the top): the section that documents them
                names = [getattr(obj, n, None) for n in getattr(obj, "__all__", ())]
                homes = {by_id[id(o)].rpartition(".")[0] for o in names if id(o) in by_id}
                if names and len(homes) == 1 and all(id(o) in by_id for o in names):
                    return "mod", homes.pop()
            elif not _is_data(obj) and id(obj) in by_id:
                return "obj", by_id[id(obj)]
            elif dotted in documented:
                return "obj", dotted
        return None
    match = _BARE.match(code)
    if match and match.group(1) in unique:
        qualname = unique[match.group(1)]
        obj = dict(public_api()[qualname.rpartition(".")[0]])[qualname]
        # only a class: a bare function name is too often prose (``digits``) or a
        # method of the same name (``PointCloud.particles``, ``FunctionalGradientDescent.run``)
        if inspect.isclass(obj):
            return "obj", qualname
    return None


@functools.lru_cache(maxsize=1)
def _markdown_parser():
    from markdown_it.renderer import RendererHTML
    from myst_parser.config.main import MdParserConfig
    from myst_parser.parsers.mdit import create_md_parser

    # the site's MyST settings, so the spans found here are the ones the build sees
    config = MdParserConfig(enable_extensions=set(MYST_EXTENSIONS))
    return create_md_parser(config, RendererHTML)


def mentions(text: str) -> list[tuple[str, str, bool]]:
    """The public names a guide's Markdown names: ``(code, qualname, linked)`` each.

    Inline code spans, ``flowkit.X`` in prose and Python-domain roles are links
    (``linked`` True: the build links the first two, the author wrote the third);
    ``flowkit.X`` in a fenced code block is a use without a link.
    """
    found = []
    for token in _markdown_parser().parse(text):
        if token.type == "fence":
            found += [(code, target[1], False) for code, target in _qualified_in(token.content)]
        for child in token.children or []:
            if child.type == "text":
                found += [(code, target[1], True) for code, target in _qualified_in(child.content)]
                continue
            code = None
            if child.type == "code_inline":
                code = child.content
            elif child.type == "myst_role" and child.meta.get("name") in _PY_ROLES:
                code = re.sub(r"^.*<(.*)>$", r"\1", child.content)
            target = resolve(code) if code is not None else None
            if target:
                found.append((code, target[1], True))
    return found


def _qualified_in(text: str) -> list[tuple[str, tuple[str, str]]]:
    """``flowkit.X`` / ``fk.X`` names of public objects in running text, resolved."""
    return [(m.group(0), target) for m in _QUALIFIED.finditer(text)
            if (target := resolve(m.group(0)))]


def used_in() -> dict[str, list[str]]:
    """``{qualname: [docname, ...]}``: for every public name, the guides that name it."""
    usage: dict[str, list[str]] = {}
    for docname, path in guides().items():
        for qualname in dict.fromkeys(q for _, q, _ in mentions(path.read_text("utf-8"))):
            usage.setdefault(qualname, []).append(docname)
    return usage


def backlinks(docnames: list[str]) -> str:
    """The "Used in" line of an API page (reStructuredText), empty for no guide."""
    if not docnames:
        return ""
    return "*Used in:* " + ", ".join(f":doc:`/{d}`" for d in docnames) + "\n"


def add_backlinks(source: str, docnames: list[str]) -> str:
    """An autosummary stub page with its "Used in" line under the title."""
    line = backlinks(docnames)
    if not line:
        return source
    lines = source.split("\n")
    # the title is the first line followed by a ``===`` underline
    for i in range(len(lines) - 1):
        if lines[i].strip() and set(lines[i + 1].strip()) == {"="}:
            return "\n".join(lines[:i + 2] + ["", line] + lines[i + 2:])
    return line + "\n" + source


def link_literals(doctree, docname: str) -> int:
    """Link the public names a guide's doctree names to their API pages; the count.

    Inline literals that :func:`resolve` knows become links, and so do ``flowkit.X``
    names in running text (a generated table, a sentence). Each link is a Python-domain
    cross-reference with ``refwarn`` set, so a target that stops existing is a build
    warning (an error under ``-W``), never a dead link.
    """
    from docutils import nodes
    from sphinx import addnodes

    def xref(code: str, target: tuple[str, str], literal=None):
        role, qualname = target
        ref = addnodes.pending_xref("", refdomain="py", reftype=role, reftarget=qualname,
                                    refexplicit=True, refwarn=True, refdoc=docname)
        ref["py:module"] = ref["py:class"] = None
        literal = literal if literal is not None else nodes.literal(code, code)
        literal["classes"] += ["xref", "py", f"py-{role}"]
        ref += literal
        return ref

    skip = (addnodes.pending_xref, nodes.reference, nodes.literal_block, nodes.raw,
            nodes.math, nodes.math_block, nodes.comment, nodes.FixedTextElement)
    count = 0
    for node in list(doctree.findall(nodes.literal)):
        if isinstance(node.parent, skip) or (target := resolve(node.astext())) is None:
            continue
        ref = xref(node.astext(), target, node.deepcopy())
        node.replace_self(ref)
        count += 1
    for text in list(doctree.findall(nodes.Text)):
        parent = text.parent
        if any(isinstance(a, (*skip, nodes.literal)) for a in _ancestors(parent)):
            continue
        found = _qualified_in(text.astext())
        if not found:
            continue
        pieces, rest = [], text.astext()
        for code, target in found:
            before, _, rest = rest.partition(code)
            pieces += [nodes.Text(before), xref(code, target)]
        pieces.append(nodes.Text(rest))
        index = parent.index(text)
        parent.remove(text)
        for offset, piece in enumerate(p for p in pieces if p.astext()):
            parent.insert(index + offset, piece)
        count += len(found)
    return count


def _ancestors(node):
    while node is not None:
        yield node
        node = node.parent
