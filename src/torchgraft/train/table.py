"""The epoch table a run prints: one row per epoch of the whole run, with its stage, the epoch within the run
(1, 2, ... over every stage, never repeated), the losses and metrics, and the seconds it took.

    stage      epoch  train_loss  valid_loss    accuracy  seconds
    frozen         1      0.8123      0.5012      0.8420     12.3
    unfrozen       2      0.4411      0.3920      0.8680     30.1

The widths come from the column names alone, so the Learner prints each row as its epoch ends
(:class:`~torchgraft.train.callbacks.ProgressPrinter`) and :func:`epoch_table` gives the same lines for a
whole history afterwards (``torchgraft demo --quiet``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["epoch_table", "table_columns", "table_header", "table_row"]

_LEADING = ("stage", "epoch")  # first, in this order
_HIDDEN = ("phase",)  # the stage names the fit; phase stays in the history, not in the table
_STAGE_WIDTH = 9  # "unfrozen" and "top10" fit; a longer name widens its own row only


def table_columns(record: dict[str, Any]) -> list[str]:
    """The columns of ``record``'s row: stage, epoch, the recorded values in their order, seconds last."""
    rest = [k for k in record if k not in (*_LEADING, *_HIDDEN, "seconds")]
    return [*(k for k in _LEADING if k in record), *rest, *(["seconds"] if "seconds" in record else [])]


def _width(column: str) -> int:
    return {"stage": _STAGE_WIDTH, "epoch": 5, "seconds": 7}.get(column, max(10, len(column)))


def _cell(column: str, value: Any) -> str:
    if column == "stage":
        return f"{'' if value is None else value:<{_STAGE_WIDTH}}"
    if isinstance(value, float):
        return f"{value:>{_width(column)}.{1 if column == 'seconds' else 4}f}"
    return f"{'' if value is None else value:>{_width(column)}}"


def table_header(columns: Sequence[str]) -> str:
    """The header line of ``columns``."""
    return "  ".join(f"{c:<{_width(c)}}" if c == "stage" else f"{c:>{_width(c)}}" for c in columns).rstrip()


def table_row(record: dict[str, Any], columns: Sequence[str]) -> str:
    """One epoch's line under :func:`table_header` (a column the record lacks is left blank)."""
    return "  ".join(_cell(c, record.get(c)) for c in columns).rstrip()


def epoch_table(history: Sequence[dict[str, Any]]) -> str:
    """The whole history as the table the Learner printed while training (a header again where the columns
    change).

    Example:
        >>> print(epoch_table(learner.history))
        stage      epoch  train_loss  valid_loss    accuracy  seconds
        frozen         1      0.8123      0.5012      0.8420     12.3
    """
    lines: list[str] = []
    shown: list[str] | None = None
    for record in history:
        columns = table_columns(record)
        if columns != shown:
            lines.append(table_header(columns))
            shown = columns
        lines.append(table_row(record, columns))
    return "\n".join(lines)
