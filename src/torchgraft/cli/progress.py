"""Progress of a long step loop in a command: a tqdm bar on a terminal, plain lines when the output goes to a
file or a pipe (about 20 of them, each flushed at once), so a piped ``lr-find`` is never silent for minutes."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

__all__ = ["sweep_progress"]

OnStep = Callable[[int, float, float], None]


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
