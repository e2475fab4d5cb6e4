r"""The native backend: fused Gaussian reductions in C (AVX2 + FMA, float32, CPU).

The C source ships with the package (``fk_native.c``); it is compiled once with the system
C compiler and cached on disk. The cache is never trusted blindly:

* the cache key is a checksum of the source, the compiler flags and the compiler's identity
  (its resolved path and ``--version``), so a new compiler or new flags build a new file;
* a build goes to a temporary name, is loaded and checked against a known answer, and only
  then renamed into place (atomically), with a sidecar file holding the SHA-256 of the
  library;
* before a cached library is loaded its checksum is compared with the sidecar: a truncated,
  corrupted or foreign file is never handed to ``dlopen`` (a truncated ELF file can kill
  the process with SIGBUS); it is rebuilt, and a rebuilt library that fails the
  known-answer check is refused.

The cache directory is ``$FLOWKIT_CACHE`` if set, else ``$XDG_CACHE_HOME/flowkit``, else
``~/.cache/flowkit``. ``$CC`` names the compiler (default ``cc``, then ``gcc``); a ``CC``
that does not exist is reported (a warning under ``backend="auto"``, the error under
``backend="native"``), never silently replaced. ``FLOWKIT_NATIVE=0`` turns the backend off.

Every tensor handed to the C code goes through :func:`_pointer` (dtype, device, layout and
shape checked): the C code trusts what it is given, so nothing else may call it.
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["available", "unavailable_reason", "library", "reduce", "scaled_exp",
           "softmin", "NativeLibrary", "NativeBuildError", "cache_dir", "load_or_build", "FLAGS"]

FLAGS = ("-O3", "-mavx2", "-mfma", "-shared", "-fPIC")
SOURCE = Path(__file__).with_name("fk_native.c")
_ABI = 2  # must match FK_ABI in fk_native.c

# Cache-friendly tile of the large-d path (2 MiB in float32): larger tiles only add memory
# traffic (the products and the exponential then stream from RAM, not L2/L3).
_TILE_ROWS = 256
_TILE_COLS = 2048


class NativeBuildError(RuntimeError):
    """The native library could not be built, loaded or verified here.

    ``loud`` marks a failure the user should hear about under ``backend="auto"`` (a
    ``CC`` that does not exist, a failed compilation or verification), as opposed to a
    machine without a compiler or AVX2, where the torch path is simply the answer.
    """

    def __init__(self, message: str, loud: bool = False):
        super().__init__(message)
        self.loud = loud


def cache_dir() -> Path:
    """``$FLOWKIT_CACHE``, else ``$XDG_CACHE_HOME/flowkit``, else ``~/.cache/flowkit``."""
    if os.environ.get("FLOWKIT_CACHE"):
        return Path(os.environ["FLOWKIT_CACHE"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "flowkit"
    return Path.home() / ".cache" / "flowkit"


def _compiler() -> tuple[str, str]:
    """The compiler's resolved path and identity (``--version``'s first line)."""
    requested = os.environ.get("CC")
    if requested:
        cc = shutil.which(requested)
        if cc is None:
            raise NativeBuildError(
                f"CC={requested!r} names no compiler on PATH; fix CC (or unset it to use "
                f"cc/gcc)", loud=True)
    else:
        cc = shutil.which("cc") or shutil.which("gcc")
        if cc is None:
            raise NativeBuildError("the native path needs a C compiler: install gcc (or set CC)")
    proc = subprocess.run([cc, "--version"], capture_output=True, text=True)
    ident = (proc.stdout or proc.stderr).splitlines()[:1]
    return cc, f"{os.path.realpath(cc)}|{ident[0] if ident else ''}"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class NativeLibrary:
    """The loaded C library with typed entry points; raises if it is not ours."""

    def __init__(self, path: Path):
        try:
            lib = ctypes.CDLL(str(path))
            for name in ("fk_abi", "fk_dmax", "fk_kmax"):
                getattr(lib, name).restype = ctypes.c_int64
                getattr(lib, name).argtypes = []
            lib.fk_scaled_exp.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_float]
            lib.fk_scaled_exp.restype = None
            lib.fk_gauss_reduce.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 5
            lib.fk_gauss_reduce.restype = None
            lib.fk_softmin.argtypes = [ctypes.c_void_p] * 6 + [ctypes.c_int64] * 5
            lib.fk_softmin.restype = None
        except (OSError, AttributeError) as err:
            raise NativeBuildError(f"{path} is not flowkit's native library: {err}") from err
        if lib.fk_abi() != _ABI:
            raise NativeBuildError(f"{path} has ABI {lib.fk_abi()}, expected {_ABI}")
        self.lib = lib
        self.path = path
        #: the largest dimension and number of reduced columns of the fused kernel
        self.dmax = int(lib.fk_dmax())
        self.kmax = int(lib.fk_kmax())

    def scaled_exp(self, a: Tensor, s: float) -> None:
        """``a <- exp(s a)`` in place (float32, contiguous, CPU)."""
        self.lib.fk_scaled_exp(_pointer(a, "a", (a.numel(),) if a.dim() == 1 else a.shape),
                               a.numel(), float(s))

    def gauss_reduce(self, xs: Tensor, yt: Tensor, vt: Tensor, out: Tensor, r0: int, r1: int
                     ) -> None:
        """``out[i] += sum_j exp(-|xs_i - ys_j|^2) vt[:, j]`` for ``r0 <= i < r1``."""
        n, d = xs.shape
        k, mp = vt.shape
        if d > self.dmax or k > self.kmax or mp % 8 or not 0 <= r0 <= r1 <= n:
            raise ValueError(f"gauss_reduce: unsupported sizes d={d}, k={k}, m={mp}, "
                             f"rows [{r0}, {r1}) of {n}")
        self.lib.fk_gauss_reduce(_pointer(xs, "xs", (n, d)), _pointer(yt, "yt", (d, mp)),
                                 _pointer(vt, "vt", (k, mp)), _pointer(out, "out", (n, k)),
                                 r0, r1, mp, d, k)


    def softmin(self, xs: Tensor, yt: Tensor, h: Tensor, vt: Tensor, lse: Tensor,
                out: Tensor, r0: int, r1: int) -> None:
        """``lse[i] = log sum_j exp(h_j - |xs_i - ys_j|^2)`` and ``out[i]`` the softmax
        average of ``vt``'s columns, for ``r0 <= i < r1`` (``vt`` may have 0 rows)."""
        n, d = xs.shape
        k, mp = vt.shape
        if d > self.dmax or k > self.kmax or mp % 8 or not 0 <= r0 <= r1 <= n:
            raise ValueError(f"softmin: unsupported sizes d={d}, k={k}, m={mp}, "
                             f"rows [{r0}, {r1}) of {n}")
        self.lib.fk_softmin(_pointer(xs, "xs", (n, d)), _pointer(yt, "yt", (d, mp)),
                            _pointer(h, "h", (mp,)), _pointer(vt, "vt", (k, mp)),
                            _pointer(lse, "lse", (n,)), _pointer(out, "out", (n, k)),
                            r0, r1, mp, d, k)


def _pointer(t: Tensor, name: str, shape) -> int:
    """The data pointer of a float32, contiguous CPU tensor of exactly ``shape``.

    The one gate into the C code: it reads raw memory as float32, so anything else would be
    read as garbage (or out of bounds).
    """
    if not isinstance(t, Tensor):
        raise TypeError(f"native {name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dtype != torch.float32 or t.device.type != "cpu" or not t.is_contiguous() \
            or tuple(t.shape) != tuple(shape):
        raise ValueError(f"native {name}: expected a contiguous float32 CPU tensor of shape "
                         f"{tuple(shape)}, got {t.dtype} on {t.device} of shape "
                         f"{tuple(t.shape)} (contiguous={t.is_contiguous()})")
    return t.data_ptr()


def _known_answer(lib: NativeLibrary) -> None:
    """Run both entry points on small inputs against float64 torch; raise if they disagree."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 3, generator=g)
    y = torch.randn(16, 3, generator=g)
    v = torch.randn(16, 2, generator=g)
    out = torch.zeros(7, 2)
    lib.gauss_reduce(x.contiguous(), y.T.contiguous(), v.T.contiguous(), out, 0, 7)
    want = torch.exp(-torch.cdist(x.double(), y.double()).pow(2)) @ v.double()
    a = torch.tensor([0.0, -1.0, 1.0, -200.0, 2.5, -3.0, 0.5, 7.0, -0.25])
    e = a.clone()
    lib.scaled_exp(e, 1.0)
    if not (torch.allclose(out.double(), want, rtol=1e-5, atol=1e-5)
            and torch.allclose(e.double(), torch.exp(a.double()), rtol=1e-6, atol=1e-30)):
        raise NativeBuildError(f"{lib.path} failed the known-answer check", loud=True)
    _softmin_known_answer(lib)


def _softmin_known_answer(lib: NativeLibrary) -> None:
    """The softmin entry point on small inputs against float64 torch."""
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(5, 3, generator=g), torch.randn(11, 3, generator=g)
    h = torch.randn(11, generator=g)
    pad = 5
    yt = torch.nn.functional.pad(y.T, (0, pad)).contiguous()
    hp = torch.nn.functional.pad(h, (0, pad), value=-math.inf)
    lse, bar = torch.empty(5), torch.empty(5, 3)
    lib.softmin(x, yt, hp, yt, lse, bar, 0, 5)
    logits = h.double() - torch.cdist(x.double(), y.double()).pow(2)
    want = logits.logsumexp(1)
    want_bar = torch.softmax(logits, 1) @ y.double()
    if not (torch.allclose(lse.double(), want, rtol=1e-5, atol=1e-5)
            and torch.allclose(bar.double(), want_bar, rtol=1e-5, atol=1e-5)):
        raise NativeBuildError(f"{lib.path} failed the softmin known-answer check", loud=True)


def load_or_build(cache: Path | None = None) -> NativeLibrary:
    """Load the cached library if its checksum checks out, else build, verify and cache it."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        raise NativeBuildError(f"the native path needs an x86-64 CPU, this is "
                               f"{platform.machine()}")
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        raise NativeBuildError("the native path needs a CPU with AVX2 and FMA")
    cc, ident = _compiler()
    source = SOURCE.read_text()
    key = hashlib.sha256("\0".join([source, " ".join(FLAGS), ident]).encode()).hexdigest()[:16]
    cache = cache_dir() if cache is None else Path(cache)
    lib_path = cache / f"fk_native_{key}.so"
    digest_path = cache / f"fk_native_{key}.sha256"
    try:
        if lib_path.exists() and digest_path.exists() \
                and digest_path.read_text().strip() == _sha256(lib_path):
            lib = NativeLibrary(lib_path)
            _known_answer(lib)
            return lib
    except (OSError, NativeBuildError):
        pass  # a damaged or foreign cache entry: rebuild it below
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        src, out = Path(tmp) / "fk_native.c", Path(tmp) / "fk_native.so"
        src.write_text(source)
        proc = subprocess.run([cc, *FLAGS, "-o", str(out), str(src)], capture_output=True,
                              text=True)
        if proc.returncode != 0:
            raise NativeBuildError(f"compiling the native path with {cc} failed: "
                                   f"{proc.stderr[-500:]}", loud=True)
        lib = NativeLibrary(out)  # verified under its temporary name, before it is cached
        _known_answer(lib)
        checksum = Path(tmp) / "checksum"
        checksum.write_text(_sha256(out))
        # the checksum first: a reader that sees the new library with an old checksum rebuilds
        os.replace(checksum, digest_path)
        os.replace(out, lib_path)  # atomic: concurrent processes never see half a file
    lib.path = lib_path  # the loaded file, renamed
    return lib


class _State:
    """The process's library (built at most once) and its worker pool."""

    lock = threading.Lock()
    lib: NativeLibrary | None = None
    error: str | None = None
    tried = False


def library() -> NativeLibrary | None:
    """The native library, or None when it cannot run here (the reason in
    :func:`unavailable_reason`). Builds it on first call; honours ``FLOWKIT_NATIVE=0``."""
    if os.environ.get("FLOWKIT_NATIVE", "1") == "0":
        return None
    with _State.lock:
        if not _State.tried:
            _State.tried = True
            try:
                _State.lib = load_or_build()
            except NativeBuildError as err:
                _State.error = str(err)
                if err.loud:  # a configuration the user asked for, broken: say so, once
                    warnings.warn(f"flowkit's native path is off: {err}", RuntimeWarning,
                                  stacklevel=3)
    return _State.lib


def available() -> bool:
    """Whether the native backend can run here (builds it on first call)."""
    return library() is not None


def unavailable_reason() -> str:
    if os.environ.get("FLOWKIT_NATIVE", "1") == "0":
        return "it is turned off by FLOWKIT_NATIVE=0"
    library()
    return _State.error or "unknown reason"


class WorkerPool:
    """A thread pool this module owns, resized when the wanted number of workers changes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._size = 0

    def run(self, fn, n: int, chunk: int, single_threaded_torch: bool = False) -> None:
        """``fn(start, stop)`` over ``range(n)`` in chunks, on ``torch.get_num_threads()``
        workers.

        Chunks are handed out dynamically (many more chunks than threads), so a thread
        slowed down by other processes does not hold the others up at a barrier. With
        ``single_threaded_torch`` each worker runs its torch ops (BLAS) on one thread: the
        parallelism is over blocks instead of inside each product. Torch's thread count is
        global, so it is restored on return.
        """
        before = torch.get_num_threads()
        size = max(1, min(before, -(-n // chunk)))
        if size == 1:
            fn(0, n)
            return
        with self._lock:
            if self._pool is None or self._size != size:
                if self._pool is not None:
                    self._pool.shutdown(wait=True)
                self._pool = ThreadPoolExecutor(size, thread_name_prefix="flowkit")
                self._size = size
            pool = self._pool

        def task(a: int, b: int) -> None:
            if single_threaded_torch:
                torch.set_num_threads(1)
            fn(a, b)

        futures = [pool.submit(task, s, min(n, s + chunk)) for s in range(0, n, chunk)]
        try:
            for f in futures:
                f.result()
        finally:
            if single_threaded_torch:
                torch.set_num_threads(before)


POOL = WorkerPool()


def scaled_exp(a: Tensor, s: float = 1.0) -> None:
    """``a <- exp(s a)`` in place with the native exponential (float32 CPU tensor)."""
    lib = library()
    if lib is None:
        raise RuntimeError(f"the native backend is unavailable: {unavailable_reason()}")
    lib.scaled_exp(a, s)


def reduce(x: Tensor, y: Tensor, V: Tensor, c: float, rows: int) -> Tensor:
    r"""``out_i = sum_j exp(-c |x_i - y_j|^2) V_j``, shape ``(N, K)`` (float32 CPU inputs).

    Small ``d``: fused, r2, exp and the weighted sums in registers (explicit differences).
    Large ``d``: the exponent comes out of one BLAS product of augmented matrices
    ``[x, 1, |x|^2] . [2c y, -c |y|^2, -c]``, the exponential runs in place on a
    cache-resident tile and a second product reduces it; that Gram form needs ``x`` and
    ``y`` centred near the origin (the caller, :class:`flowkit.geometry.PointCloud`, does it).
    """
    lib = library()
    n, d = x.shape
    m, k = V.shape
    out = torch.zeros(n, k, dtype=torch.float32)
    threads = torch.get_num_threads()
    if d <= lib.dmax and k <= lib.kmax:
        s = math.sqrt(c)
        pad = (-m) % 8
        xs = (x * s).contiguous()
        yt = torch.nn.functional.pad((y * s).T, (0, pad)).contiguous()
        vt = torch.nn.functional.pad(V.T, (0, pad)).contiguous()
        chunk = max(4, -(-n // (8 * threads)))
        POOL.run(lambda a, b: lib.gauss_reduce(xs, yt, vt, out, a, b), n, chunk)
        return out
    xa = torch.cat([x, x.new_ones(n, 1), x.pow(2).sum(1, keepdim=True)], 1)
    ya = torch.cat([(2.0 * c) * y, -c * y.pow(2).sum(1, keepdim=True), y.new_full((m, 1), -c)],
                   1)
    cols = min(m, _TILE_COLS)
    rows = max(1, min(rows, _TILE_ROWS, -(-n // (4 * threads))))

    def work(a: int, b: int) -> None:
        buf = x.new_empty((b - a) * cols)
        xi, oi = xa[a:b], out[a:b]
        for j in range(0, m, cols):
            yj = ya[j:j + cols]
            e = buf[:xi.shape[0] * yj.shape[0]].view(xi.shape[0], yj.shape[0])
            torch.mm(xi, yj.T, out=e)
            lib.scaled_exp(e, 1.0)
            oi.addmm_(e, V[j:j + cols])

    POOL.run(work, n, rows, single_threaded_torch=True)
    return out


def softmin(x: Tensor, y: Tensor, h: Tensor, eps: float, with_barycenter: bool = False
            ) -> tuple[Tensor, Tensor | None]:
    r"""``lse_i = log sum_j exp(h_j - |x_i - y_j|^2 / (2 eps))`` and, with
    ``with_barycenter``, ``sum_j softmax_j(...) y_j`` (float32 CPU inputs, ``d`` at most
    the library's ``dmax``).

    Fused (:c:func:`fk_softmin`): explicit differences, the exponential and the sums in
    registers, two sweeps (the row maximum, then the shifted sums), ``O(N + M)`` memory, so
    no block size applies. Rows are split over the worker pool.
    """
    lib = library()
    n, d = x.shape
    m = y.shape[0]
    s = 1.0 / math.sqrt(2.0 * eps)
    pad = (-m) % 8
    xs = (x * s).contiguous()
    yt = torch.nn.functional.pad((y * s).T, (0, pad)).contiguous()
    hp = torch.nn.functional.pad(h, (0, pad), value=-math.inf).contiguous()
    vt = torch.nn.functional.pad(y.T, (0, pad)).contiguous() if with_barycenter \
        else x.new_empty(0, m + pad)
    lse = x.new_empty(n)
    out = x.new_empty(n, vt.shape[0])
    chunk = max(4, -(-n // (8 * torch.get_num_threads())))
    POOL.run(lambda a, b: lib.softmin(xs, yt, hp, vt, lse, out, a, b), n, chunk)
    return lse, (out if with_barycenter else None)
