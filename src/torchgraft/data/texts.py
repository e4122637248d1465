"""Labelled texts from disk: a CSV / JSON-lines file of ``text,label`` rows (multi-label: ``a;b``) or one
folder per class of ``.txt`` files (``train/`` + ``valid/``, or split by a seed), checked before training.

Bad input is reported up front by line number or path — an empty text, an empty label, an unparsable number,
a validation label without training texts — as a :class:`~torchgraft.data.samples.DataError`, or left out
and counted with ``skip_bad=True``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from torchgraft.data.images import IMAGE_SUFFIXES
from torchgraft.data.samples import (
    DataError,
    Rows,
    Sample,
    by_line,
    check_bad_rows,
    read_rows,
)
from torchgraft.data.tables import choose_columns, read_table

__all__ = ["TEXT_SUFFIXES", "TextData", "looks_like_text", "text_data"]

TEXT_SUFFIXES = (".txt",)


@dataclass
class TextData:
    """Train and validation texts of one dataset, and what the checks found.

    Attributes:
        classes: class or label names (classification), target column names (regression).
        train, valid: ``(text, target)`` lists: a class index, a tuple of label indices, or a tuple of values.
        task: ``"classify"``, ``"multilabel"`` or ``"regression"``; ``task_reason`` says why when inferred.
        bad_rows: rows or files left out with ``skip_bad=True`` (line number or path, and why).
        warnings: empty class folders, classes without validation texts.
        split_off: the share split off at random for validation (``None``: the data brought its split).
    """

    classes: list[str]
    train: list[Sample]
    valid: list[Sample]
    task: str = "classify"
    task_reason: str = ""
    bad_rows: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # kept empty: texts have no unreadable files, only bad rows
    split_off: float | None = None

    @property
    def n_outputs(self) -> int:
        """Outputs the model needs: one per class, label or target column."""
        return len(self.classes)

    def summary(self) -> str:
        """One line: the task, counts of classes (or targets), texts and bad rows."""
        rows = f", {len(self.bad_rows)} bad rows skipped" if self.bad_rows else ""
        what = f"{len(self.classes)} {'targets' if self.task == 'regression' else 'classes'}"
        return f"text {self.task}: {what}, {len(self.train)} train / {len(self.valid)} valid texts{rows}"


def _text_cell(line: int, cell: str, table: Path) -> tuple[str | None, str | None]:
    return (cell, None) if cell.strip() else (None, "empty text")


def _read_files(samples: list[Sample]) -> tuple[list[Sample], list[str]]:
    """Each ``(path, label)`` as ``(its text, label)``; empty files are bad (undecodable bytes are replaced)."""
    read, bad = [], []
    for path, label in samples:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
        if text.strip():
            read.append((text, label))
        else:
            bad.append(f"{path}: empty text")
    return read, bad


def looks_like_text(source: str | Path, *, x_col: str | None = None) -> bool:
    """Whether ``source`` holds texts rather than images: a folder whose files are ``.txt`` (none an image),
    or a table whose input column is named ``text`` or holds no image file names in its first 50 rows (the
    probe reads only those: the reader reads the whole table once, after)."""
    source = Path(source)
    if source.is_dir():
        texts = False
        for path in source.rglob("*"):  # stops at the first image
            suffix = path.suffix.lower()
            if suffix in IMAGE_SUFFIXES and path.is_file():
                return False
            texts = texts or suffix in TEXT_SUFFIXES
        return texts
    if not source.is_file() or source.suffix.lower() not in (".csv", ".jsonl", ".ndjson", ".tsv"):
        return False
    try:
        table = read_table(source, limit=51)
        x, _, _ = choose_columns(table, x_col=x_col)
    except ValueError:
        return False
    if table.header is not None and table.header[x].lower() == "text":
        return True
    cells = [row[x].strip().lower() for _, row in table.rows[:50] if len(row) > x]
    return bool(cells) and not any(cell.endswith(IMAGE_SUFFIXES) for cell in cells)


def _read(source: Path, valid_pct: float, seed: int, task: str | None, x_col: str | None, y_col: str | None) -> Rows:
    rows = read_rows(
        source,
        valid_pct,
        seed,
        task=task,
        x_col=x_col,
        y_col=y_col,
        read_cell=_text_cell,
        suffixes=TEXT_SUFFIXES,
        what="text",
    )
    if not source.is_file():  # class folders: the samples are file paths until read
        rows.train, bad_train = _read_files(rows.train)
        rows.valid, bad_valid = _read_files(rows.valid)
        rows.bad += bad_train + bad_valid
    return rows


def text_data(
    source: str | Path,
    *,
    task: str | None = None,
    x_col: str | None = None,
    y_col: str | None = None,
    valid_pct: float = 0.2,
    seed: int = 0,
    skip_bad: bool = False,
) -> TextData:
    """Find, split and check the texts of ``source``.

    Args:
        source: a CSV / JSON-lines file of rows — ``text,label``, ``text,"a;b"`` (multi-label; lists in JSON
            lines), ``text,value[,value…]`` (regression), with an optional ``train``/``valid`` column — or a
            folder of class folders of ``.txt`` files (``train/`` + ``valid/``, or split ``valid_pct`` per class).
        task: ``"classify"``, ``"multilabel"`` or ``"regression"``; inferred from the rows when ``None``.
        x_col: the column of the texts, by header name (default: ``text``, else the first).
        y_col: the column(s) of the targets, by header name (``"a,b"`` for several).
        valid_pct: the share of texts split off for validation when the data mark no split.
        seed: the seed of that split.
        skip_bad: leave bad rows out (counted in ``bad_rows``) instead of raising.

    Raises:
        DataError: bad rows (listed by line number or path), no training or validation texts.

    Example:
        >>> data = text_data("news.csv")
        >>> print(data.summary())
        text classify: 5 classes, 1780 train / 445 valid texts
    """
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"{source}: no such folder or CSV file.")
    rows = _read(source, valid_pct, seed, task, x_col, y_col)
    check_bad_rows(source, rows.bad, skip_bad)
    if not rows.train:
        raise DataError(f"{source}: no training texts found (a CSV of text,label rows or class folders of .txt).")
    if not rows.valid:
        raise DataError(f"{source}: no validation texts; add a valid/ folder or a split column, or raise valid_pct.")
    warnings, split_off, bad = sorted(set(rows.warnings)), rows.split_off, by_line(rows.bad)
    return TextData(rows.classes, rows.train, rows.valid, rows.task, rows.reason, bad, warnings, [], split_off)
