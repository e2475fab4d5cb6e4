"""The public API of flowkit, read from the ``__all__`` lists, and its reference page.

``conf.py`` calls :func:`write_api_index` at every build, so a name added to an ``__all__``
gets its page without anyone editing the docs; ``tests/test_docs_site.py`` uses
:func:`public_api` to check that every public name has a docstring and a page.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
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


def write_api_index(path: str | Path) -> Path:
    """Write the API reference page (autosummary tables, one stub page per name)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["API reference", "=============", "",
             "Every public name of flowkit, one page each, generated from the ``__all__`` "
             "lists and the numpydoc docstrings.", ""]
    for section, entries in public_api().items():
        lines += [f"``{section}``", "-" * (len(section) + 4), "",
                  f".. automodule:: {section}", "   :no-members:", "",
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
