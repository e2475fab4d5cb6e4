"""Sphinx configuration of the flowkit site.

Build (from the repository root, after ``pip install -e ".[docs]"``)::

    python -m sphinx -W -b html docs docs/_build/html

The API pages are generated at every build from the ``__all__`` lists (``docs/_api.py``),
the Markdown guides are read through MyST, and the gallery runs ``examples/plot_*.py``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
os.environ.setdefault("MPLBACKEND", "Agg")

import _api  # noqa: E402

import flowkit  # noqa: E402

project = "flowkit"
author = "the flowkit authors"
copyright = "the flowkit authors"  # noqa: A001 - Sphinx's name
release = getattr(flowkit, "__version__", "0.1.0")

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    # MathJax 3 shipped with the site: math renders without network (clusters, sandboxes)
    "sphinx-mathjax-offline",
    "sphinx.ext.viewcode",
    "numpydoc",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
]

root_doc = "index"
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "api/generated/*.examples", "figures/README*",
                    "auto_examples/*.ipynb", "auto_examples/*.py", "auto_examples/*.zip",
                    "auto_examples/*.md5", "auto_examples/*.json"]

# --- API pages: regenerated from the __all__ lists at every build, each with the guides
# that name it; the guides' names link to these pages (``docs/_api.py``)
USAGE = _api.used_in()
GUIDES = set(_api.guides())
_api.write_api_index(HERE / "api" / "index.rst", USAGE)
autosummary_generate = True
autosummary_imported_members = True
autodoc_default_options = {"members": True, "inherited-members": False,
                           "show-inheritance": True}
autodoc_typehints = "none"  # numpydoc's Parameters sections carry the types
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

# --- Markdown guides
myst_enable_extensions = _api.MYST_EXTENSIONS
myst_heading_anchors = 3
# The guides link to source files of the repository (``../flowkit/...``) for GitHub
# readers; those are not pages of the site.
suppress_warnings = ["myst.xref_missing", "myst.header"]

# --- gallery
sphinx_gallery_conf = {
    "examples_dirs": str(HERE.parent / "examples"),
    "gallery_dirs": str(HERE / "auto_examples"),
    "filename_pattern": r"/plot_",
    "download_all_examples": False,
    "remove_config_comments": True,
    "within_subsection_order": "FileNameSortKey",
    "matplotlib_animations": False,
    "min_reported_time": 1,
}

# --- HTML
html_theme = "pydata_sphinx_theme"
html_title = "flowkit"
html_theme_options = {
    "navbar_align": "left",
    "header_links_before_dropdown": 4,
    "show_toc_level": 2,
    "secondary_sidebar_items": ["page-toc"],
}
html_static_path: list[str] = []


# --- cross-references between the guides and the API pages


def _link_guide(app, doctree):
    if app.env.docname in GUIDES:
        _api.link_literals(doctree, app.env.docname)


def _add_backlinks(app, docname, source):
    if docname.startswith("api/generated/"):
        source[0] = _api.add_backlinks(source[0], USAGE.get(docname.rpartition("/")[2], []))


def _reread_changed_backlinks(app, env, added, changed, removed):
    # an API page's "Used in" line comes from the guides: when a guide's names change,
    # the pages whose line changed are read again (an incremental build stays right)
    old = getattr(env, "flowkit_usage", {})
    env.flowkit_usage = USAGE
    return [f"api/generated/{q}" for q in set(old) | set(USAGE)
            if old.get(q) != USAGE.get(q) and f"api/generated/{q}" in env.found_docs]


def setup(app):
    app.connect("doctree-read", _link_guide)
    app.connect("source-read", _add_backlinks)
    app.connect("env-get-outdated", _reread_changed_backlinks)
