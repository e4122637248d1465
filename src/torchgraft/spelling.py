"""How messages spell an option: as the Python API takes it (``skip_bad=True``) or, while the ``torchgraft``
command runs, as its flag (``--skip-bad``).

A message that tells the user what to pass writes ``option("skip_bad=True", "--skip-bad")``: Python callers read
the argument, the command line reads the flag, and neither sees the other's spelling. The command line turns
the flag spelling on around its whole run (:func:`command_line`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

__all__ = ["command_line", "option", "speaks_cli"]

_cli = False  # set by the command line for its run; a plain flag so threads see it too


def speaks_cli() -> bool:
    """Whether messages spell options as command-line flags now (inside :func:`command_line`)."""
    return _cli


def option(python: str, cli: str) -> str:
    """``python`` (the argument as the Python API takes it), or ``cli`` (the flag) while the command line runs.

    Example:
        >>> f"leave them out ({option('skip_bad=True', '--skip-bad')})"
        'leave them out (skip_bad=True)'
    """
    return cli if _cli else python


@contextlib.contextmanager
def command_line() -> Iterator[None]:
    """Spell options as command-line flags inside the block (the ``torchgraft`` command's run)."""
    global _cli
    before, _cli = _cli, True
    try:
        yield
    finally:
        _cli = before
