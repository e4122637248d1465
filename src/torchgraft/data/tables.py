"""Labelled rows from a CSV or JSON-lines file: which column is the input, which the targets, which task.

Images: ``path,label`` (single label), ``path,tag1;tag2`` or ``path,"tag1 tag2"`` (multi-label),
``path,value[,value…]`` (regression); an optional column of ``train``/``valid`` marks the split. Columns are
chosen by header name (``x_col``, ``y_col``) or by position when the file has no header. When the task is
not given it is inferred from the target cells and the reason is kept for printing. Bad rows are reported
by their line number in the file.
"""

from __future__ import annotations

import csv
import itertools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from torchgraft.spelling import option

__all__ = ["Table", "TableError", "Targets", "choose_columns", "infer_task", "parse_targets", "read_table"]

TaskName = Literal["classify", "multilabel", "regression"]
X_NAMES = ("path", "file", "filename", "image", "text")
Y_NAMES = ("label", "labels", "tags", "tag", "target", "targets", "class", "category", "y")
SPLIT_NAMES = ("split", "set", "fold", "is_valid")
SPLIT_VALUES = ("train", "valid", "val", "validation")
_MULTI = re.compile(r"[;|]|\s")


class TableError(ValueError):
    """The file cannot be read as labelled rows; the message names the file, the rows and the fix."""


@dataclass
class Table:
    """The rows of a file: ``header`` (``None`` when the first row is data) and ``(line number, cells)``."""

    path: Path
    header: list[str] | None
    rows: list[tuple[int, list[str]]]


def _looks_like_header(first: list[str]) -> bool:
    names = {cell.strip().lower() for cell in first}
    return bool(names & {*X_NAMES, *Y_NAMES, *SPLIT_NAMES})


def read_table(path: str | Path, *, limit: int | None = None) -> Table:
    """Read a ``.csv`` (header optional) or ``.jsonl`` file (one object per line; lists of labels allowed);
    ``limit`` stops after that many non-empty rows (a probe of a large file reads only its start).

    Raises:
        TableError: an empty file, or a JSON line that does not parse (its line number is named).
    """
    path = Path(path)
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        return _read_jsonl(path, limit)
    with path.open(newline="", encoding="utf-8-sig") as handle:
        rows = ((number, row) for number, row in _file_lines(csv.reader(handle)) if any(c.strip() for c in row))
        numbered = list(itertools.islice(rows, limit))
    if not numbered:
        raise TableError(f"{path}: no rows. Expected 'path,label' lines (paths relative to the file's folder).")
    header = [c.strip() for c in numbered[0][1]] if _looks_like_header(numbered[0][1]) else None
    return Table(path, header, numbered[1:] if header else numbered)


def _file_lines(reader: Any) -> Iterator[tuple[int, list[str]]]:
    """``(file line where the record starts, cells)`` per record: a quoted cell may hold line breaks, so the
    record number is not the line number (``reader.line_num`` counts lines, up to the record's last)."""
    end = 0
    for row in reader:
        yield end + 1, row
        end = reader.line_num


def _read_jsonl(path: Path, limit: int | None) -> Table:
    rows: list[tuple[int, dict]] = []
    with path.open(encoding="utf-8") as handle:
        lines = [(n, line) for n, line in enumerate(handle, 1) if line.strip()]
    for number, line in lines[:limit]:
        try:
            value = json.loads(line)
        except json.JSONDecodeError as error:
            raise TableError(f"{path}: line {number} is not JSON ({error.msg}).") from None
        if not isinstance(value, dict):
            raise TableError(f"{path}: line {number} is a {type(value).__name__}, not an object of columns.")
        rows.append((number, value))
    if not rows:
        raise TableError(f"{path}: no rows.")
    header = list(dict.fromkeys(key for _, row in rows for key in row))

    def cell(value: object) -> str:
        return ";".join(str(v) for v in value) if isinstance(value, list) else "" if value is None else str(value)

    return Table(path, header, [(n, [cell(row.get(key)) for key in header]) for n, row in rows])


def _index(table: Table, name: str, what: str) -> int:
    if table.header is None:
        raise TableError(f"{table.path}: {what}={name!r} names a column, but the file has no header row.")
    lowered = [h.lower() for h in table.header]
    if name.lower() not in lowered:
        raise TableError(f"{table.path}: no column {name!r} ({what}); the columns are {', '.join(table.header)}.")
    return lowered.index(name.lower())


def _split_column(table: Table, taken: set[int]) -> int | None:
    width = min(len(cells) for _, cells in table.rows)
    if table.header is not None:
        named = [i for i, h in enumerate(table.header) if h.lower() in SPLIT_NAMES and i not in taken]
        if named:
            return named[0]
    last = width - 1
    if last not in taken and last > 0 and all(cells[last].strip().lower() in SPLIT_VALUES for _, cells in table.rows):
        return last
    return None


def choose_columns(
    table: Table, *, x_col: str | None = None, y_col: str | None = None
) -> tuple[int, list[int], int | None]:
    """``(input column, target columns, split column or None)``.

    Defaults: the input is the column named like ``path``/``image``/``text`` (else the first); the targets
    are ``y_col`` (several names separated by commas), the column named like ``label``/``tags``/``target``,
    else every remaining column except the split column (``split`` by name, or a last column of only
    ``train``/``valid``) — in a file without header, only when they all hold numbers (else the second).

    Raises:
        TableError: a named column that does not exist, or no column left for the targets.
    """
    header = [h.lower() for h in table.header] if table.header else None
    x = (
        _index(table, x_col, "x_col")
        if x_col
        else next((header.index(n) for n in X_NAMES if header and n in header), 0)
    )
    if y_col:
        ys = [_index(table, name.strip(), "y_col") for name in y_col.split(",")]
    else:
        named = [header.index(n) for n in Y_NAMES if header and n in header]
        ys = named[:1]
    split = _split_column(table, {x, *ys})
    if not ys:
        width = min(len(cells) for _, cells in table.rows)
        rest = [i for i in range(width) if i not in (x, split)]
        numeric = all(_number(cells[i].strip()) is not None for _, cells in table.rows for i in rest)
        ys = rest if table.header is not None or numeric else rest[:1]
    if not ys:
        pass_y = option("y_col=", "--y-col")
        raise TableError(f"{table.path}: no target column; expected 'path,label' rows (or pass {pass_y}).")
    return x, ys, split


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def infer_task(cells: list[list[str]]) -> tuple[TaskName, str]:
    """The task the target ``cells`` (one list per row) look like, and why.

    Several labels in one cell (separated by ``;``, ``|`` or spaces) mean multi-label; numbers (at least 90%
    of the cells: the rest are bad rows) that are not all whole, or several number columns, mean
    regression; anything else is single-label.
    """
    if len(cells[0]) == 1 and any(len([t for t in _MULTI.split(row[0].strip()) if t]) > 1 for row in cells):
        return "multilabel", "some rows hold several labels"
    numbers = [_number(c.strip()) for row in cells for c in row]
    parsed = [n for n in numbers if n is not None]
    if len(parsed) >= 0.9 * len(numbers):  # a few cells that are not numbers are bad rows, not class names
        if len(cells[0]) > 1:
            return "regression", f"{len(cells[0])} numeric target columns"
        if any(n != int(n) for n in parsed):
            return "regression", "the targets are numbers with fractions"
    if len(cells[0]) > 1:
        return "regression", f"{len(cells[0])} target columns"
    return "classify", "one label per row"


@dataclass
class Targets:
    """Parsed targets: one per row (``None`` for a bad row), the class or column names, bad rows by reason."""

    values: list[int | tuple[int, ...] | tuple[float, ...] | None]
    names: list[str]
    bad: list[str] = field(default_factory=list)


def parse_targets(task: TaskName, cells: list[list[str]], lines: list[int], columns: list[str]) -> Targets:
    """Turn target cells into class indices, label-index tuples or float tuples; rows that do not parse
    (an empty label, a number that is not one) become ``None`` and are described in ``bad`` by line."""
    if task == "regression":
        values: list[int | tuple[int, ...] | tuple[float, ...] | None] = []
        bad = []
        for line, row in zip(lines, cells, strict=True):
            numbers = [_number(c.strip()) for c in row]
            if any(n is None for n in numbers):
                bad.append(f"line {line}: {row!r} is not a number in every target column")
                values.append(None)
            else:
                values.append(tuple(float(n) for n in numbers if n is not None))
        return Targets(values, columns, bad)
    if task == "multilabel":
        tokens = [[t for t in _MULTI.split(row[0].strip()) if t] for row in cells]
        names = sorted({t for row in tokens for t in row})
        index = {name: i for i, name in enumerate(names)}
        return Targets([tuple(sorted(index[t] for t in row)) for row in tokens], names)
    labels = [row[0].strip() for row in cells]
    names = sorted({label for label in labels if label})
    index = {name: i for i, name in enumerate(names)}
    bad = [f"line {line}: empty label" for line, label in zip(lines, labels, strict=True) if not label]
    return Targets([index[label] if label else None for label in labels], names, bad)
