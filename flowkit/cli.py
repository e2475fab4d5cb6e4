"""The ``flowkit`` command: ``flowkit demo``, ``flowkit reproduce NAME`` and ``flowkit verify``.

Every sub-command takes the common options of :func:`flowkit.experiments._common.add_common`
(``--seed``, ``--device``, ``--out``, ``--threads``, ``--quick``, ``--no-progress``). A bad
invocation is refused with one line on stderr and exit code 2, before any folder is
created.

Sub-commands are registered by the functions of :data:`COMMANDS`; another command is one
more function ``register(subparsers)`` appended there, which adds its parser and sets
``_handler`` (a callable ``args -> int``) with ``parser.set_defaults``; the leading
underscore keeps it out of the run's ``config.json``.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

import flowkit.experiments as _experiments
from flowkit.experiments import _common

__all__ = ["main", "build_parser", "COMMANDS"]


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line: ``prog: error: message``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _experiment_modules() -> dict[str, object]:
    modules = {}
    for info in pkgutil.iter_modules(_experiments.__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"flowkit.experiments.{info.name}")
        if hasattr(module, "NAME") and hasattr(module, "run"):
            modules[module.NAME] = module
    return modules


def _add_experiment(sub: argparse._SubParsersAction, name: str, module: object) -> None:
    parser = sub.add_parser(name, help=module.HELP, description=module.HELP)
    module.add_arguments(parser)
    _common.add_common(parser)

    def handler(args: argparse.Namespace) -> int:
        folder = _common.launch(module, args, error=parser.error)
        if folder is not None:  # None on the ranks > 0 of a sharded run
            print(f"results written to {folder.path}")
        return 0

    parser.set_defaults(_handler=handler, _module=module)


def _register_demo(sub: argparse._SubParsersAction) -> None:
    modules = _experiment_modules()
    if "demo" in modules:
        _add_experiment(sub, "demo", modules["demo"])


def _register_reproduce(sub: argparse._SubParsersAction) -> None:
    reproduce = sub.add_parser("reproduce", help="reproduce a paper's experiment")
    which = reproduce.add_subparsers(dest="experiment", required=True, metavar="NAME")
    for name, module in sorted(_experiment_modules().items()):
        if name != "demo":
            _add_experiment(which, name, module)


def _register_verify(sub: argparse._SubParsersAction) -> None:
    # the command's logic lives with the claims it runs
    from flowkit.claims import cli as verify

    parser = sub.add_parser("verify", help=verify.HELP, description=verify.HELP)
    verify.add_arguments(parser)
    parser.set_defaults(_handler=verify.main)


#: Functions ``register(subparsers)``, one per top-level sub-command, in help order.
COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _register_demo, _register_reproduce, _register_verify]


def build_parser() -> argparse.ArgumentParser:
    """The ``flowkit`` parser with every registered sub-command."""
    parser = _Parser(prog="flowkit",
                     description="Functional-gradient descent and particle flows on torch.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in COMMANDS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``flowkit`` with ``argv`` (default: the process's arguments); the exit code."""
    args = build_parser().parse_args(argv)
    return args._handler(args)


if __name__ == "__main__":
    sys.exit(main())
