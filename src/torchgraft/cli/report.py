"""``torchgraft report RUN_DIR``: rebuild the run's one-page report, ``RUN_DIR/report.html``, from the run
folder's files (``torchgraft train`` writes it at the end of every run)."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_parser", "run"]


def add_parser(commands: Any) -> None:
    """Register the ``report`` subcommand."""
    parser = commands.add_parser(
        "report",
        help="rebuild RUN_DIR/report.html: one self-contained page of a run",
        description="Write RUN_DIR/report.html from the run folder's files: the plan and the stages as run, the "
        "curves, per-class metrics, the task's pictures, timings and the environment, in one HTML file with the "
        "pictures embedded (nothing is fetched when it is opened). A folder missing pieces (no plots without "
        "matplotlib, an older run) gives a page of what exists that says what is missing.",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a folder written by torchgraft train (or demo)")
    parser.add_argument("--quiet", action="store_true", help="print nothing")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Execute ``report``."""
    from torchgraft.app.report import write_report

    path = write_report(args.run_dir)
    if not args.quiet:
        print(f"wrote {path}")
    return 0
