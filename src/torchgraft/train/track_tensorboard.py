"""Training logged to TensorBoard through its own writer, ``torch.utils.tensorboard.SummaryWriter``
(:mod:`torchgraft.train.tracking` says what is logged); needs the ``tensorboard`` package
(``pip install 'torchgraft[tensorboard]'``), imported only when a :class:`TensorBoardLogger` is made.

Example:
    >>> learner = Learner(model, train_dl, valid_dl, loggers=[TensorBoardLogger(log_dir="runs/pets/tensorboard")])
    >>> learner.fine_tune(2)
    $ tensorboard --logdir runs/pets/tensorboard
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torchgraft.train.tracking import StepRecord, Tracker, require_extra

__all__ = ["TensorBoardLogger"]


def _markdown_table(params: dict[str, str]) -> str:
    """``params`` as a two-column Markdown table (TensorBoard's text dashboard renders Markdown)."""
    rows = [f"| {key} | {value.replace('|', '/')} |" for key, value in params.items()]
    return "\n".join(["| parameter | value |", "| --- | --- |", *rows])


class TensorBoardLogger(Tracker):
    """Scalars, parameters and texts of a run as TensorBoard event files in ``log_dir`` (default:
    ``SummaryWriter``'s own, ``runs/<date>_<host>``); ``torchgraft train --log tensorboard`` writes them to
    ``RUN_DIR/tensorboard``. Parameters are Markdown tables in the text dashboard (``params/learner``,
    ``params/fit1``, ``params/run``) and, when the run ends, one session of the HParams dashboard (every
    parameter beside the last value of each ``epoch/*`` tag: runs compare there); plans and stages are text
    summaries; TensorBoard keeps no files, so the
    exported model is not logged here (MLflow keeps it).

    Raises:
        ImportError: the ``tensorboard`` package is not installed (the message gives the install command).
    """

    name = "tensorboard"

    def __init__(self, log_dir: str | Path | None = None, *, flush_secs: int = 30) -> None:
        super().__init__()
        self.summary_writer = require_extra(
            "tensorboard", "torch.utils.tensorboard", logger="tensorboard", package="tensorboard", extra="tensorboard"
        ).SummaryWriter
        self.log_dir, self.flush_secs = (str(log_dir) if log_dir is not None else None), flush_secs
        self.writer: Any = None
        self.metric_tags: dict[str, None] = {}  # the per-epoch tags written, for the HParams dashboard

    def _open(self) -> None:
        self.writer = self.summary_writer(log_dir=self.log_dir, flush_secs=self.flush_secs)
        self.log_dir = self.writer.log_dir

    def _scalars(self, rows: list[StepRecord]) -> None:
        for step, wall, values in rows:
            for tag, value in values.items():
                self.writer.add_scalar(tag, value, step, walltime=wall)
                if tag.startswith("epoch/"):
                    self.metric_tags[tag] = None

    def _params(self, params: dict[str, str], step: int) -> None:
        groups: dict[str, dict[str, str]] = {}
        for key, value in params.items():
            head, _, rest = key.partition(".")
            group, name = (head, rest) if rest and (head == "learner" or head.startswith("fit")) else ("run", key)
            groups.setdefault(group, {})[name] = value
        for group, values in groups.items():
            self.writer.add_text(f"params/{group}", _markdown_table(values), step)

    def _text(self, name: str, text: str, step: int) -> None:
        self.writer.add_text(name, f"```\n{text}\n```", step)  # a code block: the plan's columns stay aligned

    def _flush_tool(self) -> None:
        self.writer.flush()

    def _close(self, status: str) -> None:
        if self.params:  # the HParams dashboard: the run's parameters beside its per-epoch values (their last)
            from torch.utils.tensorboard.summary import hparams

            for summary in hparams(dict(self.params), dict.fromkeys(self.metric_tags, 0.0)):
                self.writer.file_writer.add_summary(summary)
        self.writer.close()
        self.writer = None
