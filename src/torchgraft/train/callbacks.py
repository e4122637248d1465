"""The Learner's event API: callbacks called at fixed points of training, and the built-in ones.

A callback is an object with any of the methods ``on_fit_begin``, ``on_epoch_begin``, ``on_step_begin``,
``on_step_end``, ``on_epoch_end`` and ``on_fit_end``, each called with the Learner (``on_epoch_end`` also
with the epoch's record). Setting ``learner.stop = True`` ends the fit after the current epoch. The
Learner's own printing (:class:`ProgressPrinter`), best-epoch watch (:class:`BestEpoch`) and checkpointing
(:class:`Checkpointer`) are callbacks too, so user code extends training without subclassing; plain
functions make one with :class:`LambdaCallback`.

Example:
    >>> class PrintLR(Callback):
    ...     def on_epoch_end(self, learner, record):
    ...         print(learner.optimizer.param_groups[-1]["lr"])
    >>> Learner(model, train_dl, valid_dl, callbacks=[PrintLR(), EarlyStopping(patience=2)])
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal, Protocol

from torchgraft.spelling import option
from torchgraft.tasks.metrics import MetricSet
from torchgraft.train.distributed import is_main
from torchgraft.train.table import table_columns, table_header, table_row

__all__ = [
    "COLLAPSE",
    "BestEpoch",
    "Callback",
    "Checkpointer",
    "EarlyStopping",
    "LambdaCallback",
    "Monitor",
    "ProgressPrinter",
    "builtin_callbacks",
    "notify",
]


class Learner(Protocol):
    """What the built-in callbacks read and set on the :class:`torchgraft.Learner` they are given (user
    callbacks receive the whole Learner)."""

    quiet: bool
    history: list[dict[str, Any]]
    phase: int
    stop: bool
    resumed: Path | None
    metric_set: MetricSet
    step: int
    stepped: bool
    stage: str | None
    best_epoch: dict[str, Any] | None

    def save(self, path: str | Path) -> None:
        """Write the resumable state to ``path``."""


Mode = Literal["min", "max"]


class Callback:
    """Base class: override the events you need (every one does nothing by default)."""

    def on_fit_begin(self, learner: Learner) -> None:
        """Before the first epoch of a ``fit`` (after the optimizer and scheduler exist)."""

    def on_epoch_begin(self, learner: Learner) -> None:
        """Before each epoch."""

    def on_step_begin(self, learner: Learner) -> None:
        """Before each training batch."""

    def on_step_end(self, learner: Learner) -> None:
        """After each training batch (and the optimizer step, when one was due)."""

    def on_epoch_end(self, learner: Learner, record: dict[str, Any]) -> None:
        """After each epoch's validation, with its record (``stage``, ``phase``, ``epoch`` within the run,
        ``train_loss``, ``valid_loss``, metrics, ``seconds``)."""

    def on_fit_end(self, learner: Learner) -> None:
        """After the last epoch of a ``fit``."""


def notify(callbacks: Iterable[Any], event: str, learner: Learner, *args: Any) -> None:
    """Call ``event`` on every callback that has it."""
    for callback in callbacks:
        method = getattr(callback, event, None)
        if method is not None:
            method(learner, *args)


Event = Callable[..., None]


class LambdaCallback(Callback):
    """A callback made of plain functions, one per event (Keras' ``LambdaCallback``): each is called as the
    method it stands for (``on_epoch_end(learner, record)``, the others ``(learner)``).

    Example:
        >>> learner.add_callback(LambdaCallback(on_step_end=lambda learner: print(learner.step)))
    """

    def __init__(
        self,
        *,
        on_fit_begin: Event | None = None,
        on_epoch_begin: Event | None = None,
        on_step_begin: Event | None = None,
        on_step_end: Event | None = None,
        on_epoch_end: Event | None = None,
        on_fit_end: Event | None = None,
    ) -> None:
        events = {
            "on_fit_begin": on_fit_begin,
            "on_epoch_begin": on_epoch_begin,
            "on_step_begin": on_step_begin,
            "on_step_end": on_step_end,
            "on_epoch_end": on_epoch_end,
            "on_fit_end": on_fit_end,
        }
        for name, function in events.items():
            if function is not None:
                setattr(self, name, function)


class ProgressPrinter(Callback):
    """One row of the run's epoch table per epoch on stdout (:mod:`torchgraft.train.table`: stage, epoch within
    the run, values, seconds; a header when the columns change, not per stage); only on rank 0."""

    def __init__(self) -> None:
        self.columns: list[str] | None = None

    def on_epoch_end(self, learner: Learner, record: dict[str, Any]) -> None:
        if learner.quiet or not is_main():
            return
        columns = table_columns(record)
        if columns != self.columns:
            print(table_header(columns))
            self.columns = columns
        print(table_row(record, columns), flush=True)


class Monitor:
    """Which recorded value a callback watches and which way is better, shared by :class:`Checkpointer` and
    :class:`EarlyStopping`.

    ``monitor`` defaults to the first metric, else ``valid_loss``; ``mode`` defaults to the metric's own
    direction (torchmetrics' ``higher_is_better``; losses are minimised). A metric that does not say which way
    is better needs ``mode=``.
    """

    def __init__(self, monitor: str | None = None, mode: Mode | None = None, *, owner: str = "Checkpointer") -> None:
        if mode not in (None, "min", "max"):
            raise ValueError(f"monitor: mode={mode!r}; choose 'min' or 'max'.")
        self.monitor, self.mode, self.owner = monitor, mode, owner
        self.resolved: tuple[str, Mode] | None = None

    def resolve(self, learner: Learner) -> tuple[str, Mode]:
        """The monitored name and direction for ``learner``'s metrics (kept for :meth:`score`).

        Raises:
            ValueError: ``monitor`` names nothing the Learner records, or its direction is unknown.
        """
        names = learner.metric_set.names
        monitor = self.monitor or (names[0] if names else "valid_loss")
        if monitor not in ("valid_loss", "train_loss", *names):
            raise ValueError(
                f"{self.owner}: monitor={monitor!r} is not recorded; choose from valid_loss, train_loss, "
                f"{', '.join(names)}."
            )
        higher = None
        if self.mode is None:
            higher = False if monitor.endswith("_loss") else learner.metric_set.higher_is_better(monitor)
            if higher is None:
                raise ValueError(
                    f"{self.owner}: metric {monitor!r} does not say whether higher is better, so best.pt could "
                    f"keep the worst epoch. Pass mode='min' or mode='max' (Learner(..., mode=...)), or set "
                    f"{monitor}.higher_is_better."
                )
        self.resolved = (monitor, self.mode or ("max" if higher else "min"))
        return self.resolved

    def score(self, record: dict[str, Any]) -> float | None:
        """The monitored value of ``record``, signed so that larger is better (``None`` if not recorded)."""
        assert self.resolved is not None, "resolve() first"
        monitor, mode = self.resolved
        value = record.get(monitor)
        return None if value is None else (value if mode == "max" else -value)


class Checkpointer(Callback):
    """``last.pt`` after every epoch and ``best.pt`` whenever the monitored value improves on every epoch of
    the Learner so far (every fit's: the frozen stage of a fine-tune counts) (``monitor`` and ``mode`` as for
    :class:`Monitor`); with ``every=N`` also ``last.pt`` after every ``N``-th optimizer step,
    from which a fit resumes at the next batch. Every file is written atomically (a kill while writing leaves
    the previous one)."""

    def __init__(
        self, directory: str | Path, *, monitor: str | None = None, mode: Mode | None = None, every: int | None = None
    ) -> None:
        if every is not None and every < 1:
            raise ValueError(f"Checkpointer: every must be >= 1 optimizer steps, got {every}.")
        self.directory, self.watch, self.every = Path(directory), Monitor(monitor, mode), every
        self.best = -math.inf

    def on_fit_begin(self, learner: Learner) -> None:
        self.watch.resolve(learner)  # fail before training, not after the first epoch
        scores = [self.watch.score(r) for r in learner.history]  # every fit's: a fine-tune's frozen stage too
        self.best = max((s for s in scores if s is not None), default=-math.inf)
        if learner.resumed is None:
            learner.save(self.directory / "last.pt")  # resumable even if stopped during the first epoch

    def on_step_end(self, learner: Learner) -> None:
        if self.every is not None and learner.stepped and learner.step % self.every == 0:
            learner.save(self.directory / "last.pt")

    def on_epoch_end(self, learner: Learner, record: dict[str, Any]) -> None:
        # best.pt before last.pt: a kill between the two leaves a last.pt from before this epoch's end, so the
        # resumed fit ends the epoch again and writes best.pt (the other way round it would never be written)
        score = self.watch.score(record)
        if score is not None and score > self.best:
            self.best = score
            learner.save(self.directory / "best.pt")
        learner.save(self.directory / "last.pt")


class EarlyStopping(Callback):
    """Stop a fit when ``monitor`` has not improved for ``patience`` epochs (direction as for :class:`Monitor`)."""

    def __init__(self, *, monitor: str | None = None, mode: Mode | None = None, patience: int = 3) -> None:
        if patience < 1:
            raise ValueError(f"EarlyStopping: patience must be >= 1, got {patience}.")
        self.watch = Monitor(monitor, mode, owner="EarlyStopping")
        self.patience = patience
        self.best, self.waited = -math.inf, 0

    def on_fit_begin(self, learner: Learner) -> None:
        self.watch.resolve(learner)
        self.best, self.waited = -math.inf, 0

    def on_epoch_end(self, learner: Learner, record: dict[str, Any]) -> None:
        score = self.watch.score(record)
        if score is not None and score > self.best:
            self.best, self.waited = score, 0
            return
        self.waited += 1
        if self.waited >= self.patience:
            learner.stop = True
            if not learner.quiet and is_main():
                print(f"early stop: no improvement for {self.patience} epochs", file=sys.stderr)


COLLAPSE = 0.2  # an unfrozen epoch worse than the frozen stage's best by more than this share of it


class BestEpoch(Callback):
    """Which epoch was best so far by the monitored value (``learner.best_epoch``: its place in the history,
    phase, epoch, stage and value; every fit counts), and one line when a fine-tune collapses: an epoch after
    unfreezing worse than the frozen stage's best by more than :data:`COLLAPSE` (20%) of it — e.g. accuracy
    0.93 in the frozen stage, below 0.744 after. ``best.pt`` keeps the better epoch; the line says so.
    A metric whose direction is unknown is not watched (the :class:`Checkpointer` asks for ``mode=``)."""

    def __init__(self, monitor: str | None = None, mode: Mode | None = None) -> None:
        self.watch = Monitor(monitor, mode, owner="BestEpoch")
        self.on = False
        self.frozen_best: float | None = None
        self.warned = False
        self.stages: dict[int, str | None] = {}  # the stage of each fit (phase) seen

    def on_fit_begin(self, learner: Learner) -> None:
        try:
            self.watch.resolve(learner)
        except ValueError:
            self.on = False
            return
        self.on = True
        self.stages[learner.phase] = learner.stage
        if learner.stage in (None, "frozen"):
            self.warned = False
        if learner.stage == "frozen" or not learner.history:
            self.frozen_best = None
        if learner.best_epoch is None:
            for index, record in enumerate(learner.history):
                self._consider(learner, index, record)

    def _consider(self, learner: Learner, index: int, record: dict[str, Any]) -> None:
        score = self.watch.score(record)
        best = learner.best_epoch
        if score is not None and (best is None or score > self.watch.score(learner.history[best["index"]])):
            monitor = self.watch.resolved[0]  # type: ignore[index]
            learner.best_epoch = {
                "index": index,
                "phase": record.get("phase"),
                "epoch": record.get("epoch"),
                "stage": record.get("stage", self.stages.get(record.get("phase", -1))),
                monitor: record[monitor],
            }

    def on_epoch_end(self, learner: Learner, record: dict[str, Any]) -> None:
        if not self.on:
            return
        self._consider(learner, len(learner.history) - 1, record)
        score = self.watch.score(record)
        if score is None or learner.stage is None:
            return
        if learner.stage == "frozen":
            self.frozen_best = score if self.frozen_best is None else max(self.frozen_best, score)
            return
        if self.frozen_best is not None and self.frozen_best - score > COLLAPSE * abs(self.frozen_best):
            if not self.warned and not learner.quiet and is_main():
                monitor = self.watch.resolved[0]  # type: ignore[index]
                print(
                    f"collapse: {monitor} {record[monitor]:.4g} after unfreezing, worse than the frozen stage's "
                    f"{abs(self.frozen_best):.4g} by more than {COLLAPSE:.0%}; best.pt keeps the better epoch "
                    f"({option('lower lr, raise lr_mult', 'lower --lr, raise --lr-mult')}, or "
                    f"{option('keep_frozen=-1', '--keep-frozen -1')})",
                    file=sys.stderr,
                )
            self.warned = True


def builtin_callbacks(
    checkpoint_dir: Path | None, *, monitor: str | None, mode: Mode | None, every: int | None
) -> list[Callback]:
    """The Learner's own callbacks, before the user's: printing, checkpoints (with ``checkpoint_dir``: ``last.pt``
    after every epoch, and every ``every`` steps, ``best.pt`` by ``monitor``), the best epoch's watch."""
    checkpoints = [Checkpointer(checkpoint_dir, monitor=monitor, mode=mode, every=every)] if checkpoint_dir else []
    return [ProgressPrinter(), *checkpoints, BestEpoch(monitor, mode)]
