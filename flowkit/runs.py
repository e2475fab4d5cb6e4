"""Run folders: where every experiment writes its configuration, results and figures.

A run folder records the full configuration and the library versions next to the results,
so that a figure can always be traced back to the command that made it. Nothing is ever
overwritten: a new run gets a new folder, and writing a file that already exists raises.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["RunFolder", "library_versions"]


def library_versions() -> dict[str, str]:
    """Versions of Python, flowkit and the numerical libraries it runs on."""
    versions = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name, module in [
        ("flowkit", "flowkit"),
        ("torch", "torch"),
        ("numpy", "numpy"),
        ("scipy", "scipy"),
        ("pot", "ot"),
        ("matplotlib", "matplotlib"),
    ]:
        try:
            versions[name] = str(__import__(module).__version__)
        except Exception:  # a missing optional library is recorded, not fatal
            versions[name] = "not installed"
    return versions


def _jsonable(value: Any) -> Any:
    """Convert tensors, arrays, paths and numpy scalars into plain JSON values.

    NaN and the infinities are not JSON: NaN becomes ``null`` and ``+/-inf`` the strings
    ``"inf"`` and ``"-inf"`` (so a reader can tell "missing" from "unbounded").
    """
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):  # torch.Tensor, numpy arrays and scalars
        return _jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


class RunFolder:
    """A fresh folder for one run, holding ``config.json`` and the run's outputs.

    Parameters
    ----------
    root : str or Path
        Parent directory; created if needed.
    name : str
        Short label of the experiment; the folder is ``root/<name>-<UTC timestamp>``,
        with a numeric suffix if that already exists.
    config : mapping
        The full configuration of the run. Written to ``config.json`` together with
        :func:`library_versions` and the command line.
    """

    def __init__(self, root: str | os.PathLike, name: str, config: Mapping[str, Any]):
        if not name or any(c in name for c in "/\\"):
            raise ValueError(f"name must be a plain, non-empty label, got {name!r}")
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
        base = root / f"{name}-{stamp}"
        path, i = base, 1
        while True:
            try:
                path.mkdir()
                break
            except FileExistsError:
                path = Path(f"{base}-{i}")
                i += 1
        self.path = path
        self.write_json(
            "config.json",
            {"config": dict(config), "versions": library_versions(), "argv": sys.argv},
        )

    def file(self, filename: str) -> Path:
        """Path of a new file in the run folder; raises if it already exists.

        ``filename`` is a name relative to the folder (subfolders allowed, created as
        needed); an absolute path or one that leads outside the folder (``..``) is refused.
        """
        if not isinstance(filename, (str, os.PathLike)) or not str(filename):
            raise ValueError(f"filename must be a non-empty relative path, got {filename!r}")
        name = Path(filename)
        root = self.path.resolve()
        target = (self.path / name).resolve()
        if name.is_absolute() or (target != root and root not in target.parents):
            raise ValueError(f"filename must stay inside the run folder {self.path}, got "
                             f"{str(filename)!r}; pass a relative name such as 'results.json'")
        target = self.path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            raise FileExistsError(f"{target} already exists; run folders are never overwritten")
        return target

    def write_json(self, filename: str, obj: Any) -> Path:
        """Write ``obj`` as strict JSON (tensors and arrays converted to lists).

        NaN is written as ``null``, ``inf`` and ``-inf`` as the strings ``"inf"`` and
        ``"-inf"``: the file is valid JSON for any reader.
        """
        target = self.file(filename)
        text = json.dumps(_jsonable(obj), indent=2, allow_nan=False)
        with open(target, "x", encoding="utf-8") as fh:
            fh.write(text)
            fh.write("\n")
        return target

    def savefig(self, fig: Any, filename: str, **kwargs: Any) -> Path:
        """Save a matplotlib figure as a new file in the run folder."""
        target = self.file(filename)
        kwargs.setdefault("dpi", 120)
        kwargs.setdefault("bbox_inches", "tight")
        fig.savefig(target, **kwargs)
        return target

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"
