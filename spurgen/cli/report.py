"""Report of a sweep: `spurgen report <sweep_dir> [--out DIR] [--wandb] [--dashboard [--dry-run]]`.

Reads every run's eval/metrics.json and .hydra/config.yaml under the sweep folder and writes report.md,
report.csv and figures/ (spurgen/report/). Exit codes: 0 ok, 2 bad input (one-line message).
"""

from __future__ import annotations

import argparse
import sys

from spurgen.errors import SpurgenError


def main(argv: list[str] | None = None, prog: str = "spurgen report") -> int:
    """Write the report of a sweep folder; return the exit code (0 ok, 2 bad input)."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", help="a Hydra multirun folder (one sub-folder per run)")
    parser.add_argument("--out", default=None, help="where to write the report (default: the sweep folder)")
    parser.add_argument("--wandb", action="store_true", help="also log the table and figures to W&B")
    parser.add_argument(
        "--dashboard", action="store_true", help="also build the W&B dashboard (spurgen dashboard)"
    )
    parser.add_argument("--dry-run", action="store_true", help="with --dashboard: only write dashboard.json")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2): an exit code, as the Hydra commands give
        return exc.code if isinstance(exc.code, int) else 2
    from spurgen.report import write_report

    try:
        paths = write_report(args.sweep_dir, args.out, args.wandb)
    except SpurgenError as exc:
        print(f"spurgen: error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(
        f"spurgen: report written: {paths['report.md']} ({paths['report.csv'].name}, {len(paths) - 2} figures)"
    )
    if args.dashboard:  # spurgen/dashboards/command.py
        from spurgen.dashboards.command import Request, run

        return run(Request(args.sweep_dir, args.out, dry_run=args.dry_run), paths)
    return 0
