"""Checkpoint files of :class:`flowkit.FunctionalGradientDescent`: format, checks, safe I/O.

A checkpoint is one file plus, when the run keeps its layers, a sidecar directory
``<file>.layers/`` of append-only segment files: each checkpoint writes the layers added
since the previous one to a new file ``layers_<first>-<last>.pt`` and rewrites only the
small main file, so its cost per step does not grow with the number of layers.

The main file is ``torch.save`` of a plain dictionary: ``format``, ``version``, ``meta``
(what the checkpoint belongs to: objective class and a hash of its configuration, step
size, particle shape and dtype, flowkit version), ``payload`` (the serialised run state, as
bytes), ``sha256`` (of the payload) and ``layers`` (count and the SHA-256 of each layer
file). Every read goes through :func:`flowkit.serialization.safe_load`, so a file never
runs code, and every defect of a file (truncated, corrupted, foreign) raises
:class:`CheckpointError`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import pickle
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from flowkit.serialization import UntrustedFileError, safe_load

__all__ = ["CheckpointError", "atomic_write", "config_digest"]

FORMAT = "flowkit.checkpoint"
VERSION = 2


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, corrupted, truncated, or from another run.

    Also a ``ValueError``, so callers catching bad input keep working.
    """


# ----------------------------------------------------------------------------- writing
@contextlib.contextmanager
def atomic_write(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically.

    The temporary name is unique per writer (two runs on one path never share it) and the
    file is removed if the write fails.
    """
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def to_bytes(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def write_bytes(path: Path, data: bytes) -> None:
    with atomic_write(path) as tmp:
        tmp.write_bytes(data)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def layers_dir(path: Path) -> Path:
    return path.with_name(path.name + ".layers")


def segment_file(directory: Path, first: int, last: int) -> Path:
    return directory / f"layers_{first:05d}-{last:05d}.pt"


def check_target(path: Any, name: str = "checkpoint") -> Path:
    """A writable checkpoint location: fail before the first step, saying what to do."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name} must be a path (str or os.PathLike), got {type(path).__name__}")
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{name}={str(path)!r} is a directory; give a file path inside it, "
                         f"e.g. {str(path / 'run.ckpt')!r}")
    parent = path.parent
    if not parent.is_dir():
        raise ValueError(f"{name}={str(path)!r}: the directory {str(parent)!r} does not exist; "
                         "create it first (e.g. Path(...).mkdir(parents=True))")
    try:  # the only reliable writability test is a write, under a name no other writer uses
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ValueError(f"{name}={str(path)!r} is not writable ({err.strerror}); choose a "
                         "location you can write to") from None
    return path


def check_picklable(obj: Any, what: str) -> None:
    """Fail early (before the first step) when ``obj`` cannot go into a checkpoint."""
    try:
        torch.save(obj, io.BytesIO())
    except (pickle.PicklingError, AttributeError, TypeError) as err:
        raise ValueError(
            f"checkpointing needs to save {what}, which cannot be pickled ({err}). A "
            "potential built from a lambda or a local function cannot be saved: define it "
            "as a module-level flowkit.Potential subclass, or run without checkpoint= (or "
            "with keep_layers=False, which saves no layers)."
        ) from None


# ----------------------------------------------------------------------------- reading
def read_main(path: Path, trusted_classes: Iterable[Any] = ()) -> dict[str, Any]:
    """The main file's dictionary, checked for format, version and payload checksum."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist or is not a file")
    blob = _load(path, f"checkpoint {str(path)!r}", trusted_classes)
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a flowkit checkpoint")
    if blob.get("version") != VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {blob.get('version')!r}; this flowkit reads "
            f"format {VERSION} only (re-run with this version to make a new checkpoint)")
    payload = blob.get("payload")
    if not isinstance(payload, bytes) or sha256(payload) != blob.get("sha256"):
        raise CheckpointError(f"{path} is corrupted: its payload does not match its checksum")
    return blob


def read_payload(blob: dict[str, Any], path: Path, trusted_classes: Iterable[Any] = (),
                 map_location: Any = None) -> dict[str, Any]:
    return _load(io.BytesIO(blob["payload"]), f"checkpoint {str(path)!r}", trusted_classes,
                 map_location)


def read_layers(path: Path, blob: dict[str, Any], trusted_classes: Iterable[Any] = (),
                map_location: Any = None) -> list[nn.Module]:
    """The layers the checkpoint references, each segment file checked against its SHA-256."""
    info = blob.get("layers")
    if info is None:
        return []
    directory = layers_dir(path)
    layers: list[nn.Module] = []
    for first, last, checksum in info["segments"]:
        file = segment_file(directory, first, last)
        try:
            data = file.read_bytes()
        except OSError as err:
            raise CheckpointError(f"checkpoint {path} needs layer file {file}, which cannot "
                                  f"be read ({err.strerror}); keep the {directory.name} "
                                  "directory next to the checkpoint") from None
        if sha256(data) != checksum:
            raise CheckpointError(f"layer file {file} is corrupted or from another run: it "
                                  "does not match the checksum recorded in the checkpoint")
        segment = _load(io.BytesIO(data), f"layer file {str(file)!r}", trusted_classes,
                        map_location)
        if not isinstance(segment, list) or len(segment) != last - first + 1:
            raise CheckpointError(f"layer file {file} does not hold layers {first}..{last}")
        layers += segment
    if len(layers) != info["n"]:
        raise CheckpointError(f"checkpoint {path} lists {len(layers)} layers, expected "
                              f"{info['n']}")
    return layers


def _load(source: Any, what: str, trusted_classes: Iterable[Any],
          map_location: Any = None) -> Any:
    try:
        return safe_load(source, what=what, trusted_classes=trusted_classes,
                         map_location=map_location)
    except UntrustedFileError as err:
        raise CheckpointError(str(err)) from None
    except Exception as err:  # truncated zip, bad pickle, I/O: one named error
        raise CheckpointError(f"{what} cannot be read ({type(err).__name__}: {err}); the "
                              "file is truncated, corrupted or not a checkpoint") from None


def copy_segments(src: Path, dst: Path, segments: list[list[Any]]) -> None:
    """Copy the layer files of ``src`` into ``dst``'s sidecar (a continuation's new target)."""
    a, b = layers_dir(src), layers_dir(dst)
    if a.resolve() == b.resolve():
        return
    b.mkdir(exist_ok=True)
    for first, last, _ in segments:
        shutil.copyfile(segment_file(a, first, last), segment_file(b, first, last))


# ----------------------------------------------------------------------------- identity
def config_digest(obj: Any) -> dict[str, str]:
    """A short description of each public attribute of an objective: its configuration.

    Tensors are summarised by shape, dtype and a hash of their values; numbers and strings
    by value; objects by their ``repr`` when it is informative, else by class name and
    their own plain attributes. Private attributes (``_name``) are left out.
    """
    return {name: describe(value, 0) for name, value in sorted(vars(obj).items())
            if not name.startswith("_")}


def describe(value: Any, depth: int = 0) -> str:
    """A short, address-free description of a configuration value (see config_digest)."""
    if isinstance(value, Tensor):
        if value.device.type == "meta":
            return f"Tensor{tuple(value.shape)} {value.dtype}"
        data = value.detach().to("cpu").contiguous()
        h = hashlib.sha1(data.view(torch.uint8).numpy().tobytes()
                         if data.numel() else b"").hexdigest()[:12]
        return f"Tensor{tuple(value.shape)} {value.dtype} #{h}"
    if value is None or isinstance(value, (bool, int, float, str)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        inner = ", ".join(describe(v, depth + 1) for v in value) if depth < 3 else "..."
        return f"[{inner}]"
    if isinstance(value, dict):
        if depth >= 3:
            return "{...}"
        return "{" + ", ".join(f"{k!r}: {describe(v, depth + 1)}"
                               for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))) + "}"
    if isinstance(value, torch.Generator):
        return "torch.Generator"  # its state is run state, restored by the checkpoint
    if isinstance(value, (torch.dtype, torch.device)):
        return str(value)
    if isinstance(value, type) or callable(value) and hasattr(value, "__qualname__"):
        return f"{getattr(value, '__module__', '?')}.{value.__qualname__}"
    text = repr(value)
    if " at 0x" not in text:
        return text
    name = f"{type(value).__module__}.{type(value).__qualname__}"
    if depth >= 2 or not hasattr(value, "__dict__"):
        return name
    plain = {k: v for k, v in vars(value).items() if not k.startswith("_")
             and (v is None or isinstance(v, (bool, int, float, str)))}
    return f"{name}({describe(plain, depth + 1)})"
