"""``flowkit verify``: run the ledger of claims and report their verdicts.

The command prints one row per claim with a progress bar, writes the table as Markdown and
JSON to a fresh run folder, and exits with status 1 when a claim flowkit asserts no longer
has its asserted verdict (or, with ``--mutate``, when a deliberately wrong oracle is not
caught).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from flowkit.claims.registry import ClaimResult, claims, run_claims
from flowkit.claims.report import DOCS_HEADER, docs_page, markdown_table, text_table

__all__ = ["HELP", "add_arguments", "main", "run", "update_docs"]

HELP = "check the papers' claims flowkit implements (the ledger of docs/verify.md)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``flowkit verify``."""
    parser.add_argument("--only", default=None,
                        help="comma-separated claim ids to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the claims and exit")
    parser.add_argument("--json", action="store_true",
                        help="print the results as JSON instead of a table")
    parser.add_argument("--seed", type=int, default=0, help="seed of every claim's instance")
    parser.add_argument("--mutate", action="store_true",
                        help="run every check against a deliberately wrong oracle: each must "
                             "then reject it")
    parser.add_argument("--out", default="runs", help="parent folder of the run folder")
    parser.add_argument("--no-save", action="store_true", help="write no run folder")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(only: Sequence[str] | None = None, *, seed: int = 0, mutate: bool = False,
        progress: bool = False) -> list[ClaimResult]:
    """Run the selected claims (all by default) and return their results."""
    from tqdm.auto import tqdm

    selected = claims(only)
    bar = tqdm(total=len(selected), disable=not progress, desc="verify", leave=False,
               file=sys.stderr)

    def tick(result: ClaimResult) -> None:
        bar.set_postfix_str(result.claim.id, refresh=False)
        bar.update(1)

    try:
        return run_claims(selected, seed=seed, mutate=mutate, callback=tick)
    finally:
        bar.close()


def main(args: argparse.Namespace) -> int:
    """Run ``flowkit verify`` with parsed ``args``; return the exit status."""
    only = None if args.only is None else [s.strip() for s in args.only.split(",") if s.strip()]
    if args.list:
        for c in claims(only):
            print(f"{c.id:34}  {c.expected:6}  {c.statement}")
        return 0
    t0 = time.perf_counter()
    results = run(only, seed=args.seed, mutate=args.mutate, progress=not args.no_progress)
    wall = time.perf_counter() - t0
    payload = {"seed": args.seed, "mutate": args.mutate, "wall_time": wall,
               "results": [r.as_dict() for r in results]}
    bad = [r.claim.id for r in results if not r.ok]
    if args.json:
        print(json.dumps(payload, indent=2))
    else:
        print(text_table(results))
        what = "wrong oracles not caught" if args.mutate else "claims off their asserted verdict"
        print(f"{len(results)} claims in {wall:.1f} s; {len(bad)} {what}"
              + (f": {', '.join(bad)}" if bad else ""))
    if not args.no_save:
        from flowkit.runs import RunFolder

        folder = RunFolder(args.out, "verify", {"only": only, "seed": args.seed,
                                                "mutate": args.mutate})
        folder.write_json("claims.json", payload)
        folder.file("claims.md").write_text(markdown_table(results) + "\n", encoding="utf-8")
        if not args.json:
            print(f"results written to {folder.path}")
    return 1 if bad else 0


def update_docs(path: str | Path = "docs/verify.md", seed: int = 0) -> None:
    """Regenerate the table of ``docs/verify.md`` from the registry: everything from the
    generated-table marker to the end of the page is replaced."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    start = text.index(DOCS_HEADER)
    path.write_text(text[:start] + docs_page(run(seed=seed)), encoding="utf-8")


if __name__ == "__main__":
    if sys.argv[1:] == ["--docs"]:
        update_docs()
    else:
        parser = argparse.ArgumentParser(prog="flowkit verify", description=HELP)
        add_arguments(parser)
        sys.exit(main(parser.parse_args()))
