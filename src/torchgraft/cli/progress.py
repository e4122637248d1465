"""Progress of a long loop in a command: a tqdm bar on a terminal, plain lines when the output goes to a file
or a pipe, so a piped command is never silent for minutes.

:func:`sweep_progress` reports ``lr-find``'s steps (about 20 lines on stdout). :func:`count_progress` reports
the items ``predict``, ``export`` (its check runs) and ``pack`` work through: a line such as
``predict: 1,200/5,000 images`` on stderr every :func:`progress_seconds` seconds (20, or the environment's
``TORCHGRAFT_PROGRESS_SECONDS``: the interval of the training loop's own lines, :mod:`torchgraft.train.progress`),
so their stdout — the result, or ``--json`` — stays as it was."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from torchgraft.train.progress import PROGRESS_ENV, progress_seconds

__all__ = ["PROGRESS_ENV", "count_progress", "progress_seconds", "sweep_progress"]

OnStep = Callable[[int, float, float], None]
OnCount = Callable[[int, int], None]  # (items done, items in all)


@contextlib.contextmanager
def sweep_progress(total: int, *, quiet: bool = False, label: str = "lr-find") -> Iterator[OnStep | None]:
    """An ``on_step(step, lr, loss)`` reporter for ``total`` steps (``None`` when ``quiet``).

    On a terminal (stderr a TTY) a tqdm bar; else a line ``lr-find: step 5/100  lr 1.2e-06  loss 2.31`` on
    stdout at the first step and every ``total // 20`` steps after.
    """
    if quiet:
        yield None
        return
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=label, leave=False, unit="step")

        def on_bar(step: int, lr: float, loss: float) -> None:
            bar.n = step
            bar.set_postfix_str(f"lr {lr:.2g} loss {loss:.4g}", refresh=True)

        try:
            yield on_bar
        finally:
            bar.close()
        return
    every = max(1, total // 20)

    def on_line(step: int, lr: float, loss: float) -> None:
        if step == 1 or step % every == 0 or step == total:
            print(f"{label}: step {step}/{total}  lr {lr:.2g}  loss {loss:.4g}", flush=True)

    yield on_line


@contextlib.contextmanager
def count_progress(label: str, *, unit: str, quiet: bool = False) -> Iterator[OnCount | None]:
    """An ``on_count(done, total)`` reporter for a loop over ``total`` items (``None`` when ``quiet``).

    On a terminal (stderr a TTY) a tqdm bar; else, on stderr, a line ``predict: 1,200/5,000 images`` when
    :func:`progress_seconds` have passed since the start or the last line (none for work done sooner).

    Example:
        >>> with count_progress("predict", unit="images") as on_count:
        ...     predictions = predict_images(exported, "photos/", on_batch=on_count)
    """
    if quiet:
        yield None
        return
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        bars: list[Any] = []

        def on_bar(done: int, total: int) -> None:
            if not bars:
                bars.append(tqdm(total=total, desc=label, leave=False, unit=unit.split()[0].rstrip("s") or unit))
            bars[0].total = total
            bars[0].n = done
            bars[0].refresh()

        try:
            yield on_bar
        finally:
            for bar in bars:
                bar.close()
        return
    every = progress_seconds()
    last = time.perf_counter()

    def on_line(done: int, total: int) -> None:
        nonlocal last
        if time.perf_counter() - last >= every:
            print(f"{label}: {done:,}/{total:,} {unit}", file=sys.stderr, flush=True)
            last = time.perf_counter()

    yield on_line
