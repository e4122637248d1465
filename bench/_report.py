"""Shared by the benchmarks: the ``--write`` flag, the machine line, and appending a section to the docs."""

from __future__ import annotations

import argparse
import datetime
import platform
from pathlib import Path

import torch

DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def should_write() -> bool:
    """Parse the benchmark's command line: ``--write`` appends the results to docs/benchmarks.md."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--write", action="store_true", help="append the results to docs/benchmarks.md")
    return parser.parse_args().write


def machine() -> str:
    """``x86_64, 2 threads, torch 2.15.0``: where the numbers were taken."""
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def report(title: str, lines: list[str], *, write: bool) -> None:
    """Print a dated section; with ``write``, append it to the benchmarks page."""
    text = "\n".join([f"## {title} ({datetime.date.today()})", "", *lines, ""])
    print(text)
    if write:
        with open(DOCS, "a", encoding="utf-8") as handle:
            handle.write("\n" + text)
