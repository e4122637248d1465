"""``--trust-pickle``: read a checkpoint whose pickle needs code from the file, after saying so in one line."""

from __future__ import annotations

import argparse
import sys

__all__ = ["WARNING", "add_trust_pickle", "warn_if_trusted"]

WARNING = (
    "warning: --trust-pickle: checkpoints are unpickled with full Python, and a pickle can run any code; use it only "
    "for files you trust (better: convert them once to safetensors)"
)


def add_trust_pickle(parser: argparse.ArgumentParser, what: str) -> None:
    """Add ``--trust-pickle`` to ``parser``; ``what`` names the checkpoint it applies to."""
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help=f"read {what} even when unpickling it needs code from the file (pickles can run any code: only "
        "files you trust); default: refused, with weights_only=True",
    )


def warn_if_trusted(args: argparse.Namespace) -> None:
    """Print :data:`WARNING` to stderr when ``--trust-pickle`` was given."""
    if getattr(args, "trust_pickle", False):
        print(WARNING, file=sys.stderr)
