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

import contextlib
import ctypes
import hashlib
import math
import os
import platform
import queue
import shutil
import subprocess
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["available", "unavailable_reason", "library", "reduce", "scaled_exp",
           "softmin", "softmin_ranges", "NativeLibrary", "NativeBuildError", "cache_dir",
           "load_or_build", "FLAGS", "serial_caller", "worker_threads", "torch_threads"]

FLAGS = ("-O3", "-mavx2", "-mfma", "-shared", "-fPIC")
SOURCE = Path(__file__).with_name("fk_native.c")
_ABI = 2  # must match FK_ABI in fk_native.c

#: How the large-d path treats a tile: ``"fused"`` (default) or ``"augmented"`` (the
#: previous path); see :func:`_gram_tiles`. Only ``benchmarks/mmd_gradient.py`` changes it,
#: to time both in one run; it is not a user setting.
LARGE_D_TILES = "fused"
# Most rows and columns of a tile of the large-d path, per kind of tile (1 and 2 MiB in
# float32). Fused: 1024 x 256 measured best among 256-2048 x 128-2048 on one thread of a
# 2-core AMD EPYC (L2 512 KiB, d = 64), though every shape from 512 x 512 to 1024 x 128
# was within 10% and the load on that machine; larger tiles stream from L3 or RAM, smaller
# ones pay Python's per-call cost. Augmented: the previous path's tile, kept as it was.
_TILES = {"fused": (1024, 256), "augmented": (256, 2048)}
# Runs of column panels per worker thread of the fused tiles, handed out dynamically: a
# worker slowed down by other processes does not hold the others up at the end.
_CHUNKS_PER_THREAD = 4


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
            lib.fk_gauss_tile.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int64] * 2 \
                + [ctypes.c_float]
            lib.fk_gauss_tile.restype = None
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

    def _check_sizes(self, entry: str, xs: Tensor, vt: Tensor, r0: int, r1: int
                     ) -> tuple[int, int, int, int]:
        """``(n, d, k, m)`` of a fused entry point's call, refused outside the C limits."""
        n, d = xs.shape
        k, mp = vt.shape
        if d > self.dmax or k > self.kmax or mp % 8 or not 0 <= r0 <= r1 <= n:
            raise ValueError(f"{entry}: unsupported sizes d={d}, k={k}, m={mp}, "
                             f"rows [{r0}, {r1}) of {n}")
        return n, d, k, mp

    def gauss_reduce(self, xs: Tensor, yt: Tensor, vt: Tensor, out: Tensor, r0: int, r1: int
                     ) -> None:
        """``out[i] += sum_j exp(-|xs_i - ys_j|^2) vt[:, j]`` for ``r0 <= i < r1``."""
        n, d, k, mp = self._check_sizes("gauss_reduce", xs, vt, r0, r1)
        self.lib.fk_gauss_reduce(_pointer(xs, "xs", (n, d)), _pointer(yt, "yt", (d, mp)),
                                 _pointer(vt, "vt", (k, mp)), _pointer(out, "out", (n, k)),
                                 r0, r1, mp, d, k)

    def gauss_tile(self, g: Tensor, p: Tensor, q: Tensor, u: Tensor, acc: Tensor, s: float
                   ) -> None:
        """``g <- exp(min(s g + p[:, None] + q[None, :], 0))`` in place on a contiguous
        ``(r, c)`` tile, and ``acc += g @ u`` (the tile's share of the reduction against
        ``u``)."""
        if not isinstance(g, Tensor) or g.dim() != 2:
            raise ValueError(f"native g: expected a 2-d tile, got "
                             f"{getattr(g, 'shape', type(g).__name__)}")
        r, c = g.shape
        self.lib.fk_gauss_tile(_pointer(g, "g", (r, c)), _pointer(p, "p", (r,)),
                               _pointer(q, "q", (c,)), _pointer(u, "u", (c,)),
                               _pointer(acc, "acc", (r,)), r, c, float(s))

    def tile_epilogue(self, buf: Tensor, p: Tensor, q: Tensor, u: Tensor, acc: Tensor,
                      s: float) -> Callable[[int, int, int, int], None]:
        """:meth:`gauss_tile` bound to whole tensors, checked here once, for a hot loop.

        Returns ``run(r0, r1, j0, j1)``: the first ``(r1 - r0) * (j1 - j0)`` entries of
        ``buf`` are the tile of rows ``r0:r1`` (of ``p`` and ``acc``) and columns ``j0:j1``
        (of ``q`` and ``u``); bounds are checked on every call, no tensor is made.
        """
        n, m, size = p.numel(), q.numel(), buf.numel()
        gp, pp = _pointer(buf, "buf", (size,)), _pointer(p, "p", (n,))
        qp, up = _pointer(q, "q", (m,)), _pointer(u, "u", (m,))
        ap, fn, s = _pointer(acc, "acc", (n,)), self.lib.fk_gauss_tile, float(s)

        def run(r0: int, r1: int, j0: int, j1: int) -> None:
            if not (0 <= r0 <= r1 <= n and 0 <= j0 <= j1 <= m
                    and (r1 - r0) * (j1 - j0) <= size):
                raise ValueError(f"tile rows [{r0}, {r1}) of {n}, columns [{j0}, {j1}) of "
                                 f"{m} do not fit a buffer of {size}")
            fn(gp, pp + 4 * r0, qp + 4 * j0, up + 4 * j0, ap + 4 * r0, r1 - r0, j1 - j0, s)

        run.tensors = (buf, p, q, u, acc)  # the memory behind the pointers lives as long
        return run


    def softmin(self, xs: Tensor, yt: Tensor, h: Tensor, vt: Tensor, lse: Tensor,
                out: Tensor, r0: int, r1: int) -> None:
        """``lse[i] = log sum_j exp(h_j - |xs_i - ys_j|^2)`` and ``out[i]`` the softmax
        average of ``vt``'s columns, for ``r0 <= i < r1`` (``vt`` may have 0 rows)."""
        n, d, k, mp = self._check_sizes("softmin", xs, vt, r0, r1)
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
    """Run every entry point on small inputs against float64 torch; raise if they disagree."""
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
    # 13 columns: a vector body and a tail
    tile, acc = x @ y[:13].T, torch.ones(7)
    lib.gauss_tile(tile, -x.pow(2).sum(1), -y[:13].pow(2).sum(1), v[:13, 0].contiguous(),
                   acc, 2.0)
    kernel = torch.exp(-torch.cdist(x.double(), y[:13].double()).pow(2))
    if not (torch.allclose(out.double(), want, rtol=1e-5, atol=1e-5)
            and torch.allclose(e.double(), torch.exp(a.double()), rtol=1e-6, atol=1e-30)
            and torch.allclose(tile.double(), kernel, rtol=1e-5, atol=1e-6)
            and torch.allclose(acc.double(), 1.0 + kernel @ v[:13, 0].double(), rtol=1e-5,
                               atol=1e-5)):
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
    _ranges_known_answer(lib)


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
    """Why the native backend cannot run here, worded to follow "unavailable: "; the
    string ``"available"`` when it can (builds it on first call)."""
    if os.environ.get("FLOWKIT_NATIVE", "1") == "0":
        return "it is turned off by FLOWKIT_NATIVE=0"
    if library() is not None:
        return "available"
    return _State.error or "unknown reason"


class WorkerPool:
    """A thread pool this module owns, resized when the wanted number of workers changes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._size = 0

    def run(self, fn, n: int, chunk: int, single_threaded_torch: bool = False) -> None:
        """``fn(start, stop)`` over ``range(n)`` in chunks, on :func:`worker_threads`
        workers.

        Chunks are handed out dynamically (many more chunks than threads), so a thread
        slowed down by other processes does not hold the others up at a barrier. With
        ``single_threaded_torch`` each worker runs its torch ops (BLAS) on one thread: the
        parallelism is over blocks instead of inside each product. Torch's thread count is
        global, so it is restored on return.
        """
        before = torch.get_num_threads()
        size = max(1, min(worker_threads(), -(-n // chunk)))
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


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to ``n`` for the block (``None``: left as it is),
    restored after it. The one place flowkit changes the count for a block of work."""
    before = torch.get_num_threads()
    if n is None or before == n:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


_CALLER = threading.local()  # the worker count saved by serial_caller, per calling thread
#: Whether :func:`serial_caller` takes the caller's torch operations to one thread (the
#: default). Only ``benchmarks/mmd_gradient.py`` turns it off, in its "before" cells'
#: processes, to time the previous behaviour in the same run; it is not a user setting.
SERIAL_CALLER = True


def worker_threads() -> int:
    """The number of workers the native entry points split their work over: torch's
    intra-op thread count, or the count it had when :func:`serial_caller` was entered."""
    return getattr(_CALLER, "threads", None) or torch.get_num_threads()


@contextlib.contextmanager
def serial_caller():
    """The calling thread's own torch operations on one thread for the block, while the
    native entry points called in it keep torch's thread count for their workers.

    A caller that prepares each block with torch operations (centring, stacking ``V``)
    between native calls would otherwise run them on torch's OpenMP threads, which then
    spin-wait for the next parallel region while the native workers compute, taking their
    cores: measured on 2 cores, the large-d gradient's process CPU time then exceeds the
    work by half or more. Those operations are ``O((N + M) d)``, the native call
    ``O(N M d)``: one thread suffices for them. Nests (the outer count is kept). torch's
    thread count is process-wide: a thread started meanwhile also sees one thread, as
    during :meth:`WorkerPool.run` with ``single_threaded_torch``.
    """
    if not SERIAL_CALLER or getattr(_CALLER, "threads", None):
        yield
        return
    _CALLER.threads = torch.get_num_threads()
    try:
        with torch_threads(1):
            yield
    finally:
        _CALLER.threads = None


def scaled_exp(a: Tensor, s: float = 1.0) -> None:
    """``a <- exp(s a)`` in place with the native exponential (float32 CPU tensor)."""
    lib = library()
    if lib is None:
        raise RuntimeError(f"the native backend is unavailable: {unavailable_reason()}")
    lib.scaled_exp(a, s)


def reduce(x: Tensor, y: Tensor, V: Tensor, c: float, rows: int) -> Tensor:
    r"""``out_i = sum_j exp(-c |x_i - y_j|^2) V_j``, shape ``(N, K)`` (float32 CPU inputs).

    Small ``d``: fused, r2, exp and the weighted sums in registers (explicit differences).
    Large ``d``: Gram tiles (:func:`_gram_tiles`); that form needs ``x`` and ``y`` centred
    near the origin (the caller, :class:`flowkit.geometry.PointCloud`, does it).
    """
    lib = library()
    n, d = x.shape
    m, k = V.shape
    threads = worker_threads()
    if d <= lib.dmax and k <= lib.kmax:
        out = torch.zeros(n, k, dtype=torch.float32)
        s = math.sqrt(c)
        pad = (-m) % 8
        xs = (x * s).contiguous()
        yt = torch.nn.functional.pad((y * s).T, (0, pad)).contiguous()
        vt = torch.nn.functional.pad(V.T, (0, pad)).contiguous()
        chunk = max(4, -(-n // (8 * threads)))
        POOL.run(lambda a, b: lib.gauss_reduce(xs, yt, vt, out, a, b), n, chunk)
        return out
    return _gram_tiles(lib, x, y, V, c, rows, threads)


def _gram_tiles(lib: NativeLibrary, x: Tensor, y: Tensor, V: Tensor, c: float, rows: int,
                threads: int) -> Tensor:
    r"""The large-``d`` path: per cache-sized tile of kernel entries, a BLAS product written
    into a preallocated buffer, the exponential in place while the tile is in cache, then
    the tile's second product ``tile @ V``. Each worker runs BLAS on one thread.

    ``"fused"`` tiles (:data:`LARGE_D_TILES`, :func:`_fused_tiles`): the tile is ``x y^T``
    (inner size ``d``), then one native pass (``fk_gauss_tile``) adds the exponent's row
    and column terms ``-c|x_i|^2 - c|y_j|^2``, exponentiates and reduces ``V``'s last column
    (the weights of a kernel sum or of a gradient), so the second BLAS product has
    ``K - 1`` columns (``d`` for a gradient) and a kernel sum needs none. ``"augmented"``
    tiles (the previous path, :func:`_augmented_tiles`): one product of ``[x, 1, |x|^2]``
    and ``[2c y, -c|y|^2, -c]`` (inner size ``d + 2``), the exponential, then all ``K``
    columns by BLAS; kept for the benchmark.
    """
    if LARGE_D_TILES == "augmented":
        return _augmented_tiles(lib, x, y, V, c, rows, threads)
    return _fused_tiles(lib, x, y, V, c, rows, threads)


def _fused_tiles(lib: NativeLibrary, x: Tensor, y: Tensor, V: Tensor, c: float, rows: int,
                 threads: int) -> Tensor:
    r"""Fused tiles, the workers splitting the *columns* of the kernel matrix.

    The columns are cut into runs of whole panels, handed out dynamically; a run's worker
    sweeps every row tile per panel into the run's own accumulators, which are summed in
    run order at the end (the result does not depend on which worker took which run).
    Splitting columns instead of rows keeps the tile the shape measured best on one thread
    whatever the number of threads (splitting ``N`` rows over ``T`` workers made the tiles
    ``T`` times shorter), and balances the work to one panel. What runs on this thread
    before the workers start runs single-threaded: a torch operation on several threads
    leaves OpenMP threads spinning, which would take cores from the workers (see
    :func:`serial_caller`).
    """
    n, m = x.shape[0], y.shape[0]
    k = V.shape[1] - 1
    tile_rows, tile_cols = _TILES["fused"]
    rows = max(1, min(rows, tile_rows, n))
    rows = -(-n // -(-n // rows))  # equal row tiles: no short last tile
    cols = min(m, max(tile_cols, tile_rows * tile_cols // rows // 8 * 8))
    with torch_threads(1):
        xb, yb = x.contiguous(), y.contiguous()
        p, q = -c * xb.pow(2).sum(1), -c * yb.pow(2).sum(1)
        u, vb = V[:, -1].contiguous(), V[:, :-1]  # vb: BLAS reads the strided view
    buffers: queue.SimpleQueue[Tensor] = queue.SimpleQueue()  # one per running worker
    sums: dict[int, tuple[Tensor, Tensor]] = {}  # per run of columns: (out, last)

    def work(j0: int, j1: int) -> None:
        try:
            buf = buffers.get_nowait()
        except queue.Empty:
            buf = x.new_empty(rows * cols)
        out, last = x.new_zeros(n, k), x.new_zeros(n)
        epilogue = lib.tile_epilogue(buf, p, q, u, last, 2.0 * c)
        for j in range(j0, j1, cols):
            jn = min(j1, j + cols)
            yj, vj = yb[j:jn], vb[j:jn]
            for r in range(0, n, rows):
                r1 = min(n, r + rows)
                e = buf[:(r1 - r) * (jn - j)].view(r1 - r, jn - j)
                torch.mm(xb[r:r1], yj.T, out=e)
                epilogue(r, r1, j, jn)
                if k:
                    out[r:r1].addmm_(e, vj)
        sums[j0] = (out, last)
        buffers.put(buf)

    panels = -(-m // cols)
    POOL.run(work, m, cols * max(1, panels // (_CHUNKS_PER_THREAD * threads)),
             single_threaded_torch=True)
    with torch_threads(1):
        out, last = (torch.stack(t).sum(0) for t in zip(*(sums[j] for j in sorted(sums))))
        return torch.cat([out, last[:, None]], 1)


def _augmented_tiles(lib: NativeLibrary, x: Tensor, y: Tensor, V: Tensor, c: float,
                     rows: int, threads: int) -> Tensor:
    """The previous large-d path (``LARGE_D_TILES = "augmented"``), kept as it was for the
    benchmark's before/after comparison: augmented operands, workers split the rows."""
    n, m = x.shape[0], y.shape[0]
    tile_rows, cols = _TILES["augmented"]
    rows = max(1, min(rows, tile_rows, -(-n // (4 * threads))))
    xb = torch.cat([x, x.new_ones(n, 1), x.pow(2).sum(1, keepdim=True)], 1)
    yb = torch.cat([(2.0 * c) * y, -c * y.pow(2).sum(1, keepdim=True),
                    y.new_full((m, 1), -c)], 1)
    out = x.new_zeros(n, V.shape[1])
    cols = min(m, cols)
    panels = [(yb[j:j + cols], V[j:j + cols]) for j in range(0, m, cols)]
    buffers: queue.SimpleQueue[Tensor] = queue.SimpleQueue()  # one per running worker

    def work(a: int, b: int) -> None:
        # the previous path tiled the columns only: one worker (one thread) took all rows
        step = max(1, b - a)
        try:
            buf = buffers.get_nowait()
        except queue.Empty:
            buf = None
        if buf is None or buf.numel() < step * cols:
            buf = x.new_empty(step * cols)
        for r in range(a, b, step):
            r1 = min(b, r + step)
            xi, oi = xb[r:r1], out[r:r1]
            for yj, vj in panels:
                e = buf[:(r1 - r) * yj.shape[0]].view(r1 - r, yj.shape[0])
                torch.mm(xi, yj.T, out=e)
                lib.scaled_exp(e, 1.0)
                oi.addmm_(e, vj)
        buffers.put(buf)

    POOL.run(work, n, rows, single_threaded_torch=True)
    return out


def _softmin_operands(x: Tensor, y: Tensor, h: Tensor, eps: float, with_barycenter: bool
                      ) -> tuple[Tensor, Tensor, Tensor, Tensor, int]:
    """The fused softmins' operands: points scaled by ``1 / sqrt(2 eps)`` (so the logit is
    ``h_j - |x_i - y_j|^2``), columns padded to whole 8-lane groups (``h = -inf`` there:
    padding adds nothing), ``y`` transposed for the barycentre (empty without it)."""
    m = y.shape[0]
    s = 1.0 / math.sqrt(2.0 * eps)
    pad = (-m) % 8
    xs = (x * s).contiguous()
    yt = torch.nn.functional.pad((y * s).T, (0, pad)).contiguous()
    hp = torch.nn.functional.pad(h, (0, pad), value=-math.inf).contiguous()
    vt = torch.nn.functional.pad(y.T, (0, pad)).contiguous() if with_barycenter \
        else x.new_empty(0, m + pad)
    return xs, yt, hp, vt, pad


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
    n = x.shape[0]
    xs, yt, hp, vt, _ = _softmin_operands(x, y, h, eps, with_barycenter)
    lse = x.new_empty(n)
    out = x.new_empty(n, vt.shape[0])
    chunk = max(4, -(-n // (8 * worker_threads())))
    POOL.run(lambda a, b: lib.softmin(xs, yt, hp, vt, lse, out, a, b), n, chunk)
    return lse, (out if with_barycenter else None)


def _index_pointer(t: Tensor, name: str, shape) -> int:
    """The data pointer of an int64, contiguous CPU tensor of exactly ``shape`` (the gate
    for index arrays, as :func:`_pointer` is for float32 ones)."""
    if not isinstance(t, Tensor) or t.dtype != torch.int64 or t.device.type != "cpu" \
            or not t.is_contiguous() or tuple(t.shape) != tuple(shape):
        raise ValueError(f"native {name}: expected a contiguous int64 CPU tensor of shape "
                         f"{tuple(shape)}, got {getattr(t, 'dtype', type(t).__name__)} of "
                         f"shape {tuple(getattr(t, 'shape', ()))}")
    return t.data_ptr()


def _ranges_entry(lib: NativeLibrary):
    """``fk_softmin_ranges`` with its argument types declared (once)."""
    fn = lib.lib.fk_softmin_ranges
    if fn.argtypes is None:
        fn.argtypes = [ctypes.c_void_p] * 9 + [ctypes.c_int64] * 5
        fn.restype = None
    return fn


def _check_ranges(sparsity, n: int, m: int) -> None:
    """Every range inside its axis and the CSR offsets consistent: the C code trusts them."""
    rows, ptr, cols = sparsity.rows, sparsity.ptr, sparsity.cols
    k, r = rows.shape[0], cols.shape[0]
    ok = (rows.dim() == 2 and rows.shape[1] == 2 and ptr.shape == (k + 1,)
          and cols.dim() == 2 and cols.shape[1] == 2)
    if ok and k:
        ok = bool((rows[:, 0] >= 0).all() and (rows[:, 0] <= rows[:, 1]).all()
                  and (rows[:, 1] <= n).all() and int(ptr[0]) == 0 and int(ptr[-1]) == r
                  and (ptr[1:] >= ptr[:-1]).all())
    if ok and r:
        ok = bool((cols[:, 0] >= 0).all() and (cols[:, 0] <= cols[:, 1]).all()
                  and (cols[:, 1] <= m).all())
    if not ok:
        raise ValueError(f"sparsity: ranges outside a {n} x {m} interaction or inconsistent "
                         f"offsets")


def softmin_ranges(x: Tensor, y: Tensor, h: Tensor, eps: float, sparsity,
                   with_barycenter: bool = False) -> tuple[Tensor, Tensor | None]:
    r""":func:`softmin` over the kept blocks of ``sparsity``
    (:class:`flowkit.geometry.BlockSparsity`) only: row cluster ``I`` sums over its column
    ranges (:c:func:`fk_softmin_ranges`; float32 CPU inputs, ``d`` at most ``dmax``).

    Rows outside every row range get ``lse = -inf``. Row clusters are split over the
    worker pool (dynamic chunks: clusters keep unequal numbers of pairs).
    """
    lib = library()
    n, d = x.shape
    m = y.shape[0]
    if d > lib.dmax:
        raise ValueError(f"softmin_ranges: d={d} above the fused kernel's {lib.dmax}")
    _check_ranges(sparsity, n, m)
    xs, yt, hp, vt, pad = _softmin_operands(x, y, h, eps, with_barycenter)
    k = vt.shape[0]
    lse = x.new_full((n,), -math.inf)
    out = x.new_zeros(n, k)
    rows, ptr, cols = sparsity.rows, sparsity.ptr, sparsity.cols
    nc, nr = rows.shape[0], cols.shape[0]
    ptrs = (_pointer(xs, "xs", (n, d)), _pointer(yt, "yt", (d, m + pad)),
            _pointer(hp, "h", (m + pad,)), _pointer(vt, "vt", (k, m + pad)),
            _pointer(lse, "lse", (n,)), _pointer(out, "out", (n, k)),
            _index_pointer(rows, "rows", (nc, 2)), _index_pointer(ptr, "ptr", (nc + 1,)),
            _index_pointer(cols, "cols", (nr, 2)))
    fn = _ranges_entry(lib)
    chunk = max(1, -(-nc // (16 * worker_threads())))
    POOL.run(lambda a, b: fn(*ptrs, a, b, m + pad, d, k), nc, chunk)
    return lse, (out if with_barycenter else None)


def _ranges_known_answer(lib: NativeLibrary) -> None:
    """``fk_softmin_ranges`` on small inputs, unaligned ranges, against float64 torch."""
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(6, 2, generator=g), torch.randn(21, 2, generator=g)
    h = torch.randn(21, generator=g)
    rows = torch.tensor([[0, 4], [4, 6]])
    ptr = torch.tensor([0, 2, 3])
    cols = torch.tensor([[3, 5], [9, 20], [1, 17]])
    pad = (-21) % 8
    yt = torch.nn.functional.pad(y.T, (0, pad)).contiguous()
    hp = torch.nn.functional.pad(h, (0, pad), value=-math.inf)
    lse, bar = torch.empty(6), torch.empty(6, 2)
    _ranges_entry(lib)(x.data_ptr(), yt.data_ptr(), hp.data_ptr(), yt.data_ptr(),
                       lse.data_ptr(), bar.data_ptr(), rows.data_ptr(), ptr.data_ptr(),
                       cols.data_ptr(), 0, 2, 24, 2, 2)
    mask = torch.zeros(6, 21, dtype=torch.bool)
    mask[:4, 3:5] = mask[:4, 9:20] = mask[4:, 1:17] = True
    logits = (h.double() - torch.cdist(x.double(), y.double()).pow(2)).masked_fill(
        ~mask, -math.inf)
    if not (torch.allclose(lse.double(), logits.logsumexp(1), rtol=1e-5, atol=1e-5)
            and torch.allclose(bar.double(), torch.softmax(logits, 1) @ y.double(),
                               rtol=1e-5, atol=1e-5)):
        raise NativeBuildError(f"{lib.path} failed the block-sparse softmin known-answer "
                               f"check", loud=True)
