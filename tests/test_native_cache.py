"""The native library's on-disk cache: never load a damaged or foreign file, rebuild it."""

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from flowkit.backends import native

pytestmark = pytest.mark.skipif(
    shutil.which("cc") is None and shutil.which("gcc") is None or not native.available(),
    reason="the native path needs a C compiler and AVX2")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One verified build in a private cache: (cache dir, library file, digest file)."""
    cache = tmp_path_factory.mktemp("fkcache")
    lib = native.load_or_build(cache)
    digest = lib.path.with_suffix(".sha256")
    return cache, lib.path, digest


def _copy(built, tmp_path):
    cache, lib, digest = built
    dst = tmp_path / "cache"
    shutil.copytree(cache, dst)
    return dst, dst / lib.name, dst / digest.name


def _run(code: str, **env) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), **env}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full,
                          capture_output=True, text=True, timeout=60)


def test_a_cached_library_is_reused_when_its_digest_matches(built, tmp_path):
    cache, lib_path, _ = _copy(built, tmp_path)
    mtime = lib_path.stat().st_mtime_ns
    assert native.load_or_build(cache).path == lib_path
    assert lib_path.stat().st_mtime_ns == mtime  # not rebuilt


def test_truncated_library_is_rebuilt_not_loaded(built, tmp_path):
    cache, lib_path, digest = _copy(built, tmp_path)
    data = lib_path.read_bytes()
    lib_path.write_bytes(data[: len(data) // 3])
    # in a subprocess: loading the truncated file used to die with SIGBUS
    proc = _run("""
        import torch
        from flowkit.kernels import Gaussian, kernel_sum, native_available
        assert native_available()
        x = torch.randn(20, 2)
        print(float(kernel_sum(x, x, Gaussian(1.0), backend="native")[0]))
        """, FLOWKIT_CACHE=str(cache))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert lib_path.read_bytes() != data[: len(data) // 3]
    assert digest.read_text().strip() == native._sha256(lib_path)


@pytest.mark.parametrize("garbage", [b"not a library at all", None])
def test_garbage_or_foreign_library_is_rebuilt(built, tmp_path, garbage):
    cache, lib_path, digest = _copy(built, tmp_path)
    if garbage is None:  # a real shared library, but not ours, with a matching digest
        libm = next(p for p in ("/lib/x86_64-linux-gnu/libm.so.6", "/usr/lib64/libm.so.6")
                    if Path(p).exists())
        shutil.copy(libm, lib_path)
        digest.write_text(native._sha256(lib_path))
    else:
        lib_path.write_bytes(garbage)
    lib = native.load_or_build(cache)
    assert lib.path == lib_path
    assert digest.read_text().strip() == native._sha256(lib_path)
    native._known_answer(lib)


def test_missing_cc_is_named_not_replaced(monkeypatch, tmp_path):
    import torch

    from flowkit.kernels import Gaussian, kernel_sum

    monkeypatch.setenv("CC", "/no/such/cc")
    monkeypatch.setenv("FLOWKIT_CACHE", str(tmp_path))
    with pytest.raises(native.NativeBuildError, match="CC='/no/such/cc'"):
        native.load_or_build()
    # a fresh process state: the warning under auto, the error under backend="native"
    for name, value in (("tried", False), ("lib", None), ("error", None)):
        monkeypatch.setattr(native._State, name, value)
    with pytest.warns(RuntimeWarning, match="CC='/no/such/cc'"):
        assert not native.available()
    with pytest.raises(RuntimeError, match="CC='/no/such/cc'"):
        kernel_sum(torch.zeros(3, 2), torch.zeros(3, 2), Gaussian(), backend="native")


def test_xdg_cache_home_is_honoured_and_flowkit_cache_overrides(monkeypatch, tmp_path):
    monkeypatch.delenv("FLOWKIT_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert native.cache_dir() == tmp_path / "xdg" / "flowkit"
    monkeypatch.setenv("FLOWKIT_CACHE", str(tmp_path / "mine"))
    assert native.cache_dir() == tmp_path / "mine"


def test_cache_key_follows_flags_and_compiler(built, tmp_path, monkeypatch):
    cache, lib_path, _ = _copy(built, tmp_path)
    monkeypatch.setattr(native, "FLAGS", (*native.FLAGS, "-DFK_UNUSED_FLAG"))
    assert native.load_or_build(cache).path != lib_path
    real = native._compiler()
    monkeypatch.setattr(native, "FLAGS", native.FLAGS[:-1])
    monkeypatch.setattr(native, "_compiler", lambda: (real[0], real[1] + " (another build)"))
    assert native.load_or_build(cache).path != lib_path
