"""The ``flowkit`` command: ``flowkit demo``, ``flowkit reproduce NAME`` and ``flowkit verify``."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

import flowkit.experiments as _experiments

__all__ = ["main"]


def _experiment_modules() -> dict[str, object]:
    modules = {}
    for info in pkgutil.iter_modules(_experiments.__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"flowkit.experiments.{info.name}")
        if hasattr(module, "NAME") and hasattr(module, "main"):
            modules[module.NAME] = module
    return modules


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs", help="parent folder of the run folder")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flowkit", description="Functional-gradient descent and particle flows on torch."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    modules = _experiment_modules()
    if "demo" in modules:
        demo = sub.add_parser("demo", help=modules["demo"].HELP)
        _add_common(demo)
        modules["demo"].add_arguments(demo)
        demo.set_defaults(_module=modules["demo"])
    reproduce = sub.add_parser("reproduce", help="reproduce a paper's experiment")
    which = reproduce.add_subparsers(dest="experiment", required=True)
    for name, module in sorted(modules.items()):
        if name == "demo":
            continue
        p = which.add_parser(name, help=module.HELP)
        _add_common(p)
        module.add_arguments(p)
        p.set_defaults(_module=module)
    _add_verify(sub)
    return parser


def _add_verify(sub) -> None:
    # the command's logic lives with the claims it runs
    from flowkit.claims import cli as verify

    p = sub.add_parser("verify", help=verify.HELP)
    verify.add_arguments(p)
    p.set_defaults(_verify=verify.main)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if hasattr(args, "_verify"):
        return args._verify(args)
    run = args._module.main(args)
    if run is not None:
        print(f"results written to {run.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
