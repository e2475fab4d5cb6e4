"""What every command shares: the common options, their checks, the run folder and threads.

An experiment module keeps only its science. It defines

- ``NAME`` (the sub-command) and ``HELP`` (one line);
- ``add_arguments(parser)``: its own options, typed with :func:`integer` and :func:`number`
  so that a bad value is refused by the parser, before anything is created;
- ``configure(args) -> dict`` (optional): applies ``--quick``, checks the options against
  each other (raising ``ValueError`` with the option's name) and returns the configuration
  recorded in ``config.json``; the default records every option;
- ``run(args, folder)``: prints its table and writes ``results.json`` and its figures
  (through :func:`flowkit.plotting.save_figure`) into ``folder``;
- ``main(args)``: ``return launch(<module>, args)``, kept so that callers holding parsed
  arguments run the module the same way the command line does.

:func:`launch` does the rest in one place: checks of the common options, the
configuration, the seed, the thread count, and the run folder, created only once
everything has been accepted.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

import torch

from flowkit.backends.native import torch_threads
from flowkit.validation import check_int, check_number

__all__ = ["add_common", "integer", "number", "device", "check_common", "launch",
           "git_state", "usable_cores", "map_in_processes", "spawned_pool"]


def integer(minimum: int = 1) -> Callable[[str], int]:
    """An argparse ``type``: an integer ``>= minimum``, refused with a one-line message."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        try:
            return check_int(value, "value", minimum=minimum)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected an integer >= {minimum}, got {value}") from None

    parse.__name__ = f"integer >= {minimum}"
    return parse


def number(minimum: float | None = None, *, strict: bool = False,
           maximum: float | None = None) -> Callable[[str], float]:
    """An argparse ``type``: a finite real number within the bounds (``strict``: ``>``)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        try:
            return check_number(value, "value", minimum=minimum, maximum=maximum,
                                strict_minimum=strict)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err).replace("value must be", "expected")
                                             ) from None

    parse.__name__ = "number"
    return parse


def device(text: str) -> str:
    """An argparse ``type``: a torch device that exists on this machine."""
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(
            f"expected a torch device such as cpu, cuda or cuda:1, got {text!r}") from None
    if dev.type == "cpu":
        return text
    backend = getattr(torch, dev.type, None)
    available = getattr(backend, "is_available", None)
    if available is None or not available():
        raise argparse.ArgumentTypeError(f"{dev.type} is not available on this machine "
                                         f"(torch {torch.__version__}); use --device cpu")
    count = getattr(backend, "device_count", lambda: 1)()
    if dev.index is not None and dev.index >= count:
        raise argparse.ArgumentTypeError(
            f"{text} does not exist: this machine has {count} {dev.type} device(s)")
    return text


def add_common(parser: argparse.ArgumentParser) -> None:
    """The options every command takes, with the same meaning everywhere."""
    group = parser.add_argument_group("common options")
    group.add_argument("--seed", type=integer(0), default=0,
                       help="random seed (an integer >= 0; derived seeds are seed + k)")
    group.add_argument("--device", type=device, default="cpu",
                       help="torch device, e.g. cpu or cuda (checked before the run)")
    group.add_argument("--out", default="runs",
                       help="parent folder of the run folder (default: runs)")
    group.add_argument("--threads", type=integer(1), default=None,
                       help="torch CPU threads during the run (default: the command's choice)")
    group.add_argument("--quick", action="store_true",
                       help="a small version of the run, seconds on a CPU (tests, smoke checks)")
    group.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _writable_parent(out: str) -> str | None:
    """Why ``out`` cannot hold a run folder, or None when it can (nothing is created)."""
    path = Path(out).expanduser().absolute()
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            return f"--out {out!r}: no existing parent folder"
        probe = probe.parent
    if not probe.is_dir():
        return f"--out {out!r}: {str(probe)!r} is a file, not a folder"
    try:  # a real attempt: permission bits do not tell for root or special file systems
        os.rmdir(tempfile.mkdtemp(prefix=".flowkit-probe-", dir=probe))
    except OSError as err:
        return f"--out {out!r}: cannot create a folder in {str(probe)!r} ({err.strerror})"
    return None


def check_common(args: argparse.Namespace) -> None:
    """Checks of the common options that a parser ``type`` cannot make (the output folder).

    Raises
    ------
    ValueError
        With the option's name, e.g. ``--out '/proc': '/proc' is not writable``.
    """
    problem = _writable_parent(args.out)
    if problem:
        raise ValueError(problem)


def git_state(path: str | os.PathLike | None = None) -> dict[str, Any] | None:
    """The git commit and dirty flag of the checkout holding flowkit, or None outside one."""
    root = Path(path) if path is not None else Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"],
                                capture_output=True, text=True, timeout=10, check=True)
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain",
                                 "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}


def _default_config(args: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in vars(args).items() if not k.startswith("_")}


def _raise(message: str) -> NoReturn:
    raise ValueError(message)


def launch(module: ModuleType, args: argparse.Namespace,
           error: Callable[[str], NoReturn] | None = None) -> Any:
    """Check, configure and run one experiment module; return its run folder (None on the
    ranks > 0 of a run sharded over processes, which write nothing).

    Parameters
    ----------
    module : module
        An experiment module (see this module's docstring for what it defines).
    args : argparse.Namespace
        Parsed options, common ones included.
    error : callable, optional
        Called with a one-line message when an option is refused, before anything is
        created (the command line passes its parser's ``error``: exit code 2). By default a
        ``ValueError`` is raised.
    """
    from flowkit.distributed import world
    from flowkit.plotting import style
    from flowkit.runs import RunFolder

    error = error or _raise
    try:
        check_common(args)
        configure = getattr(module, "configure", None)
        config = configure(args) if configure is not None else None
    except ValueError as err:
        error(str(err))
    config = dict(config) if config is not None else _default_config(args)
    config.setdefault("seed", args.seed)
    config.setdefault("device", args.device)
    config["threads"] = args.threads if args.threads is not None else torch.get_num_threads()
    config["quick"] = bool(args.quick)
    config["git"] = git_state()
    folder_name = getattr(module, "folder_name", None)
    name = folder_name(args) if folder_name is not None else module.NAME
    # a module sharded over processes (the demo under torchrun): rank 0 alone writes
    folder = RunFolder(args.out, name, config) if world()[0] == 0 else None
    torch.manual_seed(args.seed)
    with torch_threads(args.threads), style():  # one figure style for every experiment
        module.run(args, folder)
    return folder


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows: no affinity mask
        return os.cpu_count() or 1


def _start_worker(threads: int | None, initializer: Callable[..., None] | None,
                  initargs: tuple) -> None:
    if threads is not None:
        torch.set_num_threads(threads)
    if initializer is not None:
        initializer(*initargs)


def _indexed(function: Callable[[Any], Any], job: tuple[int, Any]) -> tuple[int, Any]:
    return job[0], function(job[1])


def map_in_processes(function: Callable[[Any], Any], items: list, workers: int, *,
                     threads: int | None = None,
                     initializer: Callable[..., None] | None = None, initargs: tuple = (),
                     on_result: Callable[[Any, Any], None] | None = None) -> list:
    """``[function(item) for item in items]``, spread over ``workers`` processes.

    The results come back in the order of ``items`` whatever order the processes finish
    in, so a job whose every random stream is seeded gives the same numbers as in a
    single process (bit for bit at equal thread counts). ``workers == 1`` runs in this
    process, after ``initializer(*initargs)``.

    The processes come from :func:`spawned_pool` (its notes on spawning and shutting down
    apply; an error raised by a job propagates). Each runs ``initializer(*initargs)`` once:
    hand it the large inputs the jobs share, so that they are sent once per process and
    not once per job. ``function`` and ``initializer`` must be importable module-level
    functions.

    Parameters
    ----------
    function : callable
        Applied to each item; errors should name the item (this function cannot).
    items : list
        The jobs, picklable.
    workers : int
        Number of processes, ``>= 1``; more than ``len(items)`` are not started.
    threads : int, optional
        torch threads in each spawned process (default: torch's choice).
    initializer, initargs
        Run once in each process before its first job.
    on_result : callable, optional
        Called in this process as ``on_result(item, result)`` when a job finishes (in
        the order they finish): progress reports.

    Returns
    -------
    list
        ``function(item)`` for each item, in the order of ``items``.
    """
    import functools

    workers = check_int(workers, "workers", minimum=1)
    results: list = [None] * len(items)

    def done(i: int, result: Any) -> None:
        results[i] = result
        if on_result is not None:
            on_result(items[i], result)

    if workers == 1 or len(items) <= 1:
        if initializer is not None:
            initializer(*initargs)
        for i, item in enumerate(items):
            done(i, function(item))
        return results
    with spawned_pool(min(workers, len(items)), threads=threads, initializer=initializer,
                      initargs=initargs) as pool:
        for i, result in pool.imap_unordered(functools.partial(_indexed, function),
                                             list(enumerate(items))):
            done(i, result)
    return results


@contextlib.contextmanager
def spawned_pool(processes: int, *, threads: int | None = None,
                 initializer: Callable[..., None] | None = None,
                 initargs: tuple = ()) -> Iterator[Any]:
    """A ``multiprocessing`` pool of spawned processes, shut down on leaving the block.

    Spawned, not forked: a fork of a process whose OpenMP threads are running can hang.
    Each process starts with ``threads`` torch threads, then runs ``initializer(*initargs)``.
    On a normal exit the pool is closed and joined (``Pool.__exit__`` only terminates it,
    which leaves its semaphore for the resource tracker to report as leaked); on an error
    it is terminated and joined, and the error propagates.
    """
    import multiprocessing

    pool = multiprocessing.get_context("spawn").Pool(
        check_int(processes, "processes", minimum=1), _start_worker,
        (threads, initializer, initargs))
    try:
        yield pool
    except BaseException:
        pool.terminate()
        pool.join()
        raise
    pool.close()
    pool.join()
