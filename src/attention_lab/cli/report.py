"""Compare runs: ``python -m attention_lab.cli.report RUN_OR_SWEEP_DIR [...] [--out DIR]``
(``attention_lab.results.sweep``).

Also ``python -m attention_lab.cli.report keep RUN_DIR [...]`` (keep a finished run's record in
``outputs/results/``) and ``python -m attention_lab.cli.report --results [--check]`` (rewrite, or
check, README.md's results table from those records, and with ``--check`` that each command still
makes its run): see ``attention_lab.results.table`` and ``attention_lab.results.recipes``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from attention_lab.errors import AttentionLabError
from attention_lab.results import table
from attention_lab.results.sweep import write_report


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: a report on run directories, ``keep``, or ``--results``."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv[:1] == ["keep"]:
            keeper = argparse.ArgumentParser(
                prog="python -m attention_lab.cli.report keep",
                description="Copy finished runs' records into outputs/results/<experiment>/.",
            )
            keeper.add_argument("runs", nargs="+", type=Path, help="finished run directories")
            keeper.add_argument("--results-dir", type=Path, default=table.RESULTS_DIR)
            keeper.add_argument("--name", help="record name (one run only)")
            args = keeper.parse_args(argv[1:])
            if args.name and len(args.runs) > 1:
                keeper.error("--name names one record: give one run directory")
            for run in args.runs:
                print(f"Kept: {table.keep(run, args.results_dir, args.name)}")
            return 0
        parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
        parser.add_argument("dirs", nargs="*", type=Path, help="run or sweep directories")
        parser.add_argument("--out", type=Path, help="where to write (default: the first dir)")
        parser.add_argument(
            "--results", action="store_true", help="rewrite README.md's results table"
        )
        parser.add_argument(
            "--check", action="store_true", help="with --results: fail if README disagrees"
        )
        parser.add_argument("--readme", type=Path, default=Path("README.md"))
        parser.add_argument("--results-dir", type=Path, default=table.RESULTS_DIR)
        args = parser.parse_args(argv)
        if args.results:
            conf_dir = args.readme.parent / "conf"
            if args.check:
                return _check(args.readme, args.results_dir, conf_dir)
            changed = table.update_readme(args.readme, args.results_dir, conf_dir)
            print(f"{args.readme}: results table {'rewritten' if changed else 'unchanged'}")
            return 0
        if not args.dirs:
            parser.error("give run or sweep directories, or --results")
        report = write_report(args.dirs, args.out or args.dirs[0])
    except AttentionLabError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"Report: {report}")
    return 0


def _check(readme: Path, results_dir: Path, conf_dir: Path) -> int:
    """0 when README's table is the one the records give and every command still makes its
    run with today's configs (those beside the README, when there); else 1, saying what
    disagrees."""
    records = table.load_records(results_dir)
    stale = table.stale(records, conf_dir) if conf_dir.is_dir() else []
    for line in stale:
        print(line, file=sys.stderr)
    if not table.readme_agrees(readme, results_dir, conf_dir):
        print(
            f"{readme}: the results table disagrees with {results_dir}; "
            f"run python -m attention_lab.cli.report --results",
            file=sys.stderr,
        )
        return 1
    if stale:
        return 1
    print(f"{readme}: the results table agrees with {results_dir}, and every command with its run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
