"""Labelled samples of any kind (image paths, texts) before they are read: from a CSV / JSON-lines table or
from one folder per class, split into train and validation, bad rows collected by line number.

The readers of each kind (:mod:`torchgraft.data.folders` for images, :mod:`torchgraft.data.texts` for
texts) say what a valid input cell or file is; everything else — columns, targets, the inferred task, the
split, unseen validation labels — is shared here.
"""

from __future__ import annotations

import itertools
import os
import random
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path

from torchgraft.data.tables import choose_columns, infer_task, parse_targets, read_table
from torchgraft.spelling import option

__all__ = [
    "TASK_NAMES",
    "DataError",
    "Rows",
    "Sample",
    "Target",
    "by_line",
    "check_bad_rows",
    "list_files",
    "read_rows",
    "rows_from_folders",
    "rows_from_table",
    "split_samples",
]

Target = int | tuple[int, ...] | tuple[float, ...]
Sample = tuple[str, Target]
VALID_NAMES = ("valid", "val", "validation")
TASK_NAMES: tuple[str, ...] = ("classify", "multilabel", "regression")
# read_cell(line, cell, table path) -> (input, None) or (None, why the row is bad)
CellReader = Callable[[int, str, Path], tuple[str | None, str | None]]


_name = attrgetter("name")


class DataError(ValueError):
    """The data on disk cannot be trained on as given; the message names the paths and the fix."""


@dataclass
class Rows:
    """What a table or a folder gave: names, the split samples, warnings, the task and why, bad rows, and the
    share split off at random for validation (``None``: the data brought its own split)."""

    classes: list[str]
    train: list[Sample]
    valid: list[Sample]
    warnings: list[str]
    task: str = "classify"
    reason: str = ""
    bad: list[str] = field(default_factory=list)
    split_off: float | None = None


def split_samples(samples: list[Sample], valid_pct: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Random split with ``seed``: ``valid_pct`` of each class (at least one sample when it has two) to valid;
    multi-label and regression samples are split as one group. O(N log N): the samples are grouped by label
    once, each group (in input order) shuffled in label order; each side comes back sorted."""
    if not 0 < valid_pct < 1:
        raise DataError(f"valid_pct must be between 0 and 1, got {valid_pct}.")
    rng = random.Random(seed)
    if any(not isinstance(label, int) for _, label in samples):
        shuffled = sorted(samples)
        rng.shuffle(shuffled)
        cut = min(len(shuffled) - 1, max(1, round(len(shuffled) * valid_pct)))
        return sorted(shuffled[cut:]), sorted(shuffled[:cut])
    groups: defaultdict[int, list[int]] = defaultdict(list)
    for i, (_, label) in enumerate(samples):
        groups[label].append(i)
    train: list[int] = []
    valid: list[int] = []
    for label in sorted(groups):
        members = groups[label]
        rng.shuffle(members)  # the permutation depends on the length only: as shuffling the samples themselves
        cut = min(len(members) - 1, max(1, round(len(members) * valid_pct))) if len(members) > 1 else 0
        valid += members[:cut]
        train += members[cut:]
    ordered = all(a <= b for a, b in itertools.pairwise(samples))  # a listing of plain names is
    return _in_order(samples, train, ordered), _in_order(samples, valid, ordered)


def _in_order(samples: list[Sample], indices: list[int], ordered: bool) -> list[Sample]:
    """``sorted(samples[i] for i in indices)``; when ``samples`` is ``ordered`` (sorted already), by sorting
    the indices: integers sort several times faster than (path, label) pairs."""
    if ordered:
        return [samples[i] for i in sorted(indices)]
    return sorted(samples[i] for i in indices)


def _walk(folder: str, suffixes: Sequence[str], found: list[str]) -> None:
    """Append the files under ``folder`` with ``suffixes`` to ``found`` in path order (each folder's entries by
    name, a sub-folder's files in its place: what sorting whole paths part by part gives); symlinked folders are
    not entered (as ``Path.rglob``), symlinked files are kept."""
    with os.scandir(folder) as listing:
        entries = sorted(listing, key=_name)
    for entry in entries:
        name = entry.name
        dot = name.rfind(".")  # Path.suffix: from the last dot, unless the name starts with it
        if entry.is_dir(follow_symlinks=False):
            _walk(entry.path, suffixes, found)
        elif dot > 0 and name[dot:].lower() in suffixes and entry.is_file():
            found.append(entry.path)


def list_files(folder: Path, suffixes: Sequence[str]) -> list[str]:
    """The files under ``folder`` (recursively) whose suffix is one of ``suffixes`` (lower case), sorted as
    paths (part by part, as ``sorted(Path.rglob(...))``). One ``os.scandir`` per folder, a stat only for what
    the entry cannot tell.

    Example:
        >>> list_files(Path("pets/cat"), (".jpg",))[:1]
        ['pets/cat/001.jpg']
    """
    found: list[str] = []
    _walk(str(folder), tuple(suffixes), found)
    return found


def _class_folders(root: Path, suffixes: Sequence[str], what: str) -> dict[str, list[str]]:
    """``{class name: file paths}`` for the sub-folders of ``root`` (hidden folders ignored)."""
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(f"{root}: no class folders. Expected {root}/<class>/<{what}> (or a CSV of rows).")
    return {folder.name: list_files(folder, suffixes) for folder in folders}


def rows_from_folders(root: Path, valid_pct: float, seed: int, *, suffixes: Sequence[str], what: str) -> Rows:
    """One sub-folder per class (or ``train/`` + ``valid/`` each holding them) of files with ``suffixes``;
    classes are the sub-folders holding such files, empty ones are left out with a warning."""
    valid_dir = next((root / name for name in VALID_NAMES if (root / name).is_dir()), None)
    split = (root / "train").is_dir() and valid_dir is not None
    train_folders = _class_folders(root / "train" if split else root, suffixes, what)
    empty = sorted(c for c, paths in train_folders.items() if not paths)
    warnings = [f"class folder {c!r} holds no {what} files: left out" for c in empty]
    classes = sorted(c for c in train_folders if c not in empty)
    index = {name: i for i, name in enumerate(classes)}
    train: list[Sample] = [(p, index[c]) for c in classes for p in train_folders[c]]
    if not split:
        train, valid = split_samples(train, valid_pct, seed)
        return Rows(classes, train, valid, warnings, "classify", "class folders", split_off=valid_pct)
    assert valid_dir is not None
    valid_folders = _class_folders(valid_dir, suffixes, what)
    unknown = sorted(c for c, paths in valid_folders.items() if paths and c not in index)
    if unknown:
        raise DataError(f"{valid_dir}: classes {unknown} have no training {what}s in {root / 'train'}; add some.")
    valid: list[Sample] = [(p, index[c]) for c, paths in valid_folders.items() for p in paths]
    warnings += [f"class {c!r} has no {what}s in {valid_dir}" for c in classes if not valid_folders.get(c)]
    return Rows(classes, train, valid, warnings, "classify", "class folders")


def rows_from_table(
    path: Path,
    valid_pct: float,
    seed: int,
    *,
    read_cell: CellReader,
    task: str | None,
    x_col: str | None,
    y_col: str | None,
    what: str = "sample",
) -> Rows:
    """Rows of a CSV/JSON-lines file, each input cell turned into a sample input by ``read_cell`` (which
    names why a row is bad: a missing file, an empty text). Bad rows (also an empty label, a number that is
    not one, a validation label never seen in training) are collected by line; ``what`` names a sample in
    messages (``"image"``, ``"text"``)."""
    table = read_table(path)
    x, ys, split = choose_columns(table, x_col=x_col, y_col=y_col)
    width = max(x, *ys, *([split] if split is not None else []))
    short = [f"line {n}: {len(cells)} columns, need {width + 1}" for n, cells in table.rows if len(cells) <= width]
    if short:
        raise DataError(f"{path}: rows with too few columns ({'; '.join(short[:5])}); expected 'input,label' rows.")
    cells = [[row[i] for i in ys] for _, row in table.rows]
    chosen, reason = (task, "given") if task else infer_task(cells)
    names = [table.header[i] for i in ys] if table.header else [f"target{i}" for i in range(len(ys))]
    targets = parse_targets(chosen, cells, [n for n, _ in table.rows], names)  # type: ignore[arg-type]
    bad = list(targets.bad)
    samples: list[tuple[Sample, bool]] = []
    for (line, row), target in zip(table.rows, targets.values, strict=True):
        if target is None:
            continue
        value, why = read_cell(line, row[x], path)
        if value is None:
            bad.append(f"line {line}: {why}")
            continue
        samples.append(((value, target), split is not None and row[split].strip().lower() in VALID_NAMES))
    if split is not None:
        train = [s for s, is_valid in samples if not is_valid]
        valid, unseen = _drop_unseen(train, [s for s, is_valid in samples if is_valid], targets.names, chosen, what)
        bad += unseen
    else:
        train, valid = split_samples([s for s, _ in samples], valid_pct, seed)
    held = {label for _, label in valid if isinstance(label, int)}
    warnings = []
    if chosen == "classify":
        warnings = [f"class {c!r} has no validation {what}s" for i, c in enumerate(targets.names) if i not in held]
    return Rows(
        targets.names, train, valid, warnings, chosen, reason, by_line(bad), None if split is not None else valid_pct
    )


def _drop_unseen(
    train: list[Sample], valid: list[Sample], names: list[str], task: str, what: str
) -> tuple[list[Sample], list[str]]:
    """Validation samples with a label no training sample has cannot be learned: they are bad rows."""
    if task == "regression":
        return valid, []
    seen = {i for _, t in train for i in ([t] if isinstance(t, int) else t)}  # type: ignore[union-attr]
    kept, bad = [], []
    for value, target in valid:
        labels = [target] if isinstance(target, int) else list(target)  # type: ignore[arg-type]
        unseen = [names[i] for i in labels if i not in seen]  # type: ignore[index]
        if unseen:
            bad.append(f"{_short(value)}: validation label(s) {unseen} have no training {what}s")
        else:
            kept.append((value, target))
    return kept, bad


def _short(value: str) -> str:
    return value if len(value) <= 60 else value[:57] + "..."


def by_line(bad: list[str]) -> list[str]:
    """Bad-row descriptions in file order: ``line N: ...`` by ``N``, then the others as they came."""

    def key(entry: str) -> tuple[int, int]:
        found = re.match(r"line (\d+):", entry)
        return (0, int(found.group(1))) if found else (1, 0)

    return sorted(bad, key=key)


def check_bad_rows(source: Path, bad: list[str], skip_bad: bool) -> None:
    """Raise a :class:`DataError` listing ``bad`` rows (by line) unless ``skip_bad``."""
    bad = by_line(bad)
    if bad and not skip_bad:
        listed = "; ".join(bad[:5]) + (f"; and {len(bad) - 5} more" if len(bad) > 5 else "")
        skip = option("skip_bad=True", "--skip-bad")
        raise DataError(f"{source}: {len(bad)} bad rows: {listed}. Fix them, or leave them out ({skip}).")


def read_rows(
    source: Path,
    valid_pct: float,
    seed: int,
    *,
    task: str | None,
    x_col: str | None,
    y_col: str | None,
    read_cell: CellReader,
    suffixes: Sequence[str],
    what: str,
) -> Rows:
    """The rows of ``source``: a table (any task) or class folders of files with ``suffixes`` (single label).

    Raises:
        DataError: an unknown task, or a task other than single-label asked of class folders.
    """
    if task is not None and task not in TASK_NAMES:
        raise DataError(f"unknown task {task!r} for {what}s; choose from {', '.join(TASK_NAMES)}.")
    if source.is_file():
        return rows_from_table(
            source, valid_pct, seed, read_cell=read_cell, task=task, x_col=x_col, y_col=y_col, what=what
        )
    if task not in (None, "classify"):
        raise DataError(
            f"{source}: {task} {what}s come as a CSV or JSON-lines file of rows ({what} column, targets); a folder "
            f"of class folders is single-label."
        )
    return rows_from_folders(source, valid_pct, seed, suffixes=suffixes, what=what)
