"""Progress inside an epoch: a tqdm bar with the time left on a terminal, plain timed lines when the output goes
to a file or a pipe (``  epoch 2 (unfrozen): batch 120/500, 40 s left``), so a long epoch is never silent and
never floods a log. The interval between plain lines is :func:`progress_seconds` (20 s, or the environment's
``TORCHGRAFT_PROGRESS_SECONDS``), the same for training and for the commands' own loops
(:mod:`torchgraft.cli.progress`).

Imports no torch (the command line's ``--help`` reads :func:`progress_seconds`' module without it).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from typing import Any

__all__ = ["PROGRESS_ENV", "PROGRESS_SECONDS", "duration", "epoch_progress", "progress_seconds"]

PROGRESS_ENV = "TORCHGRAFT_PROGRESS_SECONDS"
PROGRESS_SECONDS = 20.0  # between plain progress lines, unless the environment says otherwise


def progress_seconds() -> float:
    """Seconds between plain progress lines: ``TORCHGRAFT_PROGRESS_SECONDS`` if set, else 20.

    Raises:
        ValueError: the variable is set to something that is not a number >= 0.
    """
    text = os.environ.get(PROGRESS_ENV, "").strip()
    if not text:
        return PROGRESS_SECONDS
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        raise ValueError(f"{PROGRESS_ENV}={text!r} is not a number of seconds >= 0; set it to e.g. 20, or unset it.")
    return seconds


def duration(seconds: float) -> str:
    """``"8 s"``, ``"3 min 5 s"``, ``"2 h 4 min"``: a time left, as a person reads it.

    Example:
        >>> duration(185.2)
        '3 min 5 s'
    """
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def _timed_lines(iterable: Iterable[Any], desc: str, total: int | None, initial: int, every: float) -> Iterator[Any]:
    """``iterable``, printing ``  epoch 2: batch 120/500, 40 s left`` on stdout when ``every`` seconds have
    passed since the start or the last line (the time left from this run's pace since the loop began)."""
    start = last = time.perf_counter()
    done = initial
    for item in iterable:
        yield item
        done += 1
        now = time.perf_counter()
        if now - last >= every:
            left = ""
            if total and done > initial and done < total:
                left = f", {duration((now - start) / (done - initial) * (total - done))} left"
            print(f"  {desc}: batch {done}{f'/{total}' if total else ''}{left}", flush=True)
            last = now


def epoch_progress(
    iterable: Iterable[Any], desc: str, *, bar: bool, total: int | None = None, initial: int = 0
) -> Iterable[Any]:
    """``iterable`` with its progress shown: with ``bar``, a tqdm bar on stderr (batches done, rate, elapsed and
    time left; it disappears when the loop ends); else plain lines on stdout every :func:`progress_seconds`.
    ``initial``: batches done before (a resumed epoch), counted as done, not in the pace."""
    if not bar:
        return _timed_lines(iterable, desc, total, initial, progress_seconds())
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, leave=False, total=total, initial=initial, unit="batch", dynamic_ncols=True)
