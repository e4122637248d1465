"""Labelled image data from disk: an ImageFolder (``train/`` + ``valid/``, or one folder split by a seed) or a
CSV / JSON-lines file of rows (single-label, multi-label or regression targets), checked before training.

:func:`image_data` finds the samples, scans every file (:func:`torchgraft.data.images.scan_images`) and reports
problems up front — corrupt files (an error naming them, or skipped and counted with ``skip_bad=True``),
empty class folders, classes missing from the validation set — so a run never crashes an hour in.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from torchgraft.data.images import IMAGE_SUFFIXES, BadImage, load_rgb, scan_images
from torchgraft.data.tables import choose_columns, infer_task, parse_targets, read_table

__all__ = ["DataError", "ImageData", "ImageDataset", "image_data"]

Target = int | tuple[int, ...] | tuple[float, ...]
Sample = tuple[str, Target]
_VALID_NAMES = ("valid", "val", "validation")
TASK_NAMES: tuple[str, ...] = ("classify", "multilabel", "regression")


class DataError(ValueError):
    """The data on disk cannot be trained on as given; the message names the paths and the fix."""


class ImageDataset(Dataset):
    """``(transform(RGB image), target)`` pairs read from ``samples`` on access.

    A target is a class index (single label), a multi-hot float vector over ``classes`` (multi-label, from a
    tuple of label indices) or a float vector (regression, from a tuple of values).
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        classes: Sequence[str],
        transform: Callable | None = None,
        *,
        task: str = "classify",
    ) -> None:
        self.samples, self.classes, self.transform, self.task = list(samples), list(classes), transform, task

    def __len__(self) -> int:
        return len(self.samples)

    def target(self, index: int) -> Any:
        """The target of sample ``index`` as the task trains on it."""
        value = self.samples[index][1]
        if self.task == "multilabel":
            hot = torch.zeros(len(self.classes))
            hot[list(value)] = 1.0  # type: ignore[arg-type]
            return hot
        if self.task == "regression":
            return torch.tensor(value, dtype=torch.float32)
        return value

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        image = load_rgb(self.samples[index][0])
        return (self.transform(image) if self.transform is not None else image), self.target(index)


@dataclass
class ImageData:
    """Train and validation samples of one dataset, and what the checks found.

    Attributes:
        classes: class names (single- and multi-label) or target column names (regression).
        train, valid: ``(path, target)`` lists: a class index, a tuple of label indices, or a tuple of values.
        skipped: files that could not be decoded (only with ``skip_bad=True``; else they raise).
        warnings: empty classes, classes without validation images.
        task: ``"classify"``, ``"multilabel"`` or ``"regression"``; ``task_reason`` says why when inferred.
        bad_rows: rows of a CSV left out with ``skip_bad=True`` (line number and why).
    """

    classes: list[str]
    train: list[Sample]
    valid: list[Sample]
    skipped: list[BadImage] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    task: str = "classify"
    task_reason: str = ""
    bad_rows: list[str] = field(default_factory=list)

    @property
    def n_outputs(self) -> int:
        """Outputs the model needs: one per class, label or target column."""
        return len(self.classes)

    def datasets(self, train_transform: Callable, valid_transform: Callable) -> tuple[ImageDataset, ImageDataset]:
        """The two datasets with their transforms."""
        return (
            ImageDataset(self.train, self.classes, train_transform, task=self.task),
            ImageDataset(self.valid, self.classes, valid_transform, task=self.task),
        )

    def summary(self) -> str:
        """One line: the task, counts of classes (or targets), images and skipped files."""
        skipped = f", {len(self.skipped)} unreadable files skipped" if self.skipped else ""
        rows = f", {len(self.bad_rows)} bad rows skipped" if self.bad_rows else ""
        what = f"{len(self.classes)} {'targets' if self.task == 'regression' else 'classes'}"
        task = "" if self.task == "classify" else f"{self.task}: "
        return f"{task}{what}, {len(self.train)} train / {len(self.valid)} valid images{skipped}{rows}"


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _class_folders(root: Path) -> dict[str, list[Path]]:
    """``{class name: image paths}`` for the sub-folders of ``root`` (hidden folders ignored)."""
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(f"{root}: no class folders. Expected {root}/<class>/<image> (or a CSV of path,label rows).")
    return {folder.name: _images_in(folder) for folder in folders}


def _split(samples: list[Sample], valid_pct: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Random split with ``seed``: ``valid_pct`` of each class (at least one image when it has two) to valid;
    multi-label and regression samples are split as one group."""
    if not 0 < valid_pct < 1:
        raise DataError(f"valid_pct must be between 0 and 1, got {valid_pct}.")
    rng = random.Random(seed)
    if any(not isinstance(label, int) for _, label in samples):
        shuffled = sorted(samples)
        rng.shuffle(shuffled)
        cut = min(len(shuffled) - 1, max(1, round(len(shuffled) * valid_pct)))
        return sorted(shuffled[cut:]), sorted(shuffled[:cut])
    train, valid = [], []
    for label in sorted({label for _, label in samples}):
        members = [s for s in samples if s[1] == label]
        rng.shuffle(members)
        cut = min(len(members) - 1, max(1, round(len(members) * valid_pct))) if len(members) > 1 else 0
        valid += members[:cut]
        train += members[cut:]
    return sorted(train), sorted(valid)


def _from_folder(root: Path, valid_pct: float, seed: int) -> tuple[list[str], list[Sample], list[Sample], list[str]]:
    """Classes are the sub-folders holding images; empty class folders are left out with a warning."""
    valid_dir = next((root / name for name in _VALID_NAMES if (root / name).is_dir()), None)
    split = (root / "train").is_dir() and valid_dir is not None
    train_folders = _class_folders(root / "train" if split else root)
    empty = sorted(c for c, paths in train_folders.items() if not paths)
    warnings = [f"class folder {c!r} holds no image files: left out" for c in empty]
    classes = sorted(c for c in train_folders if c not in empty)
    index = {name: i for i, name in enumerate(classes)}
    train = [(str(p), index[c]) for c in classes for p in train_folders[c]]
    if not split:
        train, valid = _split(train, valid_pct, seed)
        return classes, train, valid, warnings
    assert valid_dir is not None
    valid_folders = _class_folders(valid_dir)
    unknown = sorted(c for c, paths in valid_folders.items() if paths and c not in index)
    if unknown:
        raise DataError(f"{valid_dir}: classes {unknown} have no training images in {root / 'train'}; add some.")
    valid = [(str(p), index[c]) for c, paths in valid_folders.items() for p in paths]
    warnings += [f"class {c!r} has no images in {valid_dir}" for c in classes if not valid_folders.get(c)]
    return classes, train, valid, warnings


@dataclass
class _Rows:
    """What a table gave: names, the split samples, warnings, the task and why, and bad rows."""

    classes: list[str]
    train: list[Sample]
    valid: list[Sample]
    warnings: list[str]
    task: str = "classify"
    reason: str = ""
    bad: list[str] = field(default_factory=list)


def _from_table(
    path: Path, valid_pct: float, seed: int, *, task: str | None, x_col: str | None, y_col: str | None
) -> _Rows:
    """Rows of a CSV/JSON-lines file; paths relative to the file's folder. Bad rows (missing file, empty
    label, a number that is not one, a validation label never seen in training) are collected by line."""
    table = read_table(path)
    x, ys, split = choose_columns(table, x_col=x_col, y_col=y_col)
    width = max(x, *ys, *([split] if split is not None else []))
    short = [f"line {n}: {len(cells)} columns, need {width + 1}" for n, cells in table.rows if len(cells) <= width]
    if short:
        raise DataError(f"{path}: rows with too few columns ({'; '.join(short[:5])}); expected 'path,label' rows.")
    cells = [[row[i] for i in ys] for _, row in table.rows]
    chosen, reason = (task, "given") if task else infer_task(cells)
    names = [table.header[i] for i in ys] if table.header else [f"target{i}" for i in range(len(ys))]
    targets = parse_targets(chosen, cells, [n for n, _ in table.rows], names)  # type: ignore[arg-type]
    bad = list(targets.bad)
    samples: list[tuple[Sample, bool]] = []
    for (line, row), target in zip(table.rows, targets.values, strict=True):
        file = path.parent / row[x].strip()
        if target is None:
            continue
        if not file.is_file():
            bad.append(f"line {line}: no file {file}")
            continue
        samples.append(((str(file), target), split is not None and row[split].strip().lower() in _VALID_NAMES))
    if split is not None:
        train = [s for s, is_valid in samples if not is_valid]
        valid = [s for s, is_valid in samples if is_valid]
        valid, unseen = _drop_unseen(train, valid, targets.names, chosen)
        bad += unseen
    else:
        train, valid = _split([s for s, _ in samples], valid_pct, seed)
    held = {label for _, label in valid if isinstance(label, int)}
    warnings = []
    if chosen == "classify":
        warnings = [f"class {c!r} has no validation images" for i, c in enumerate(targets.names) if i not in held]
    return _Rows(targets.names, train, valid, warnings, chosen, reason, bad)


def _drop_unseen(
    train: list[Sample], valid: list[Sample], names: list[str], task: str
) -> tuple[list[Sample], list[str]]:
    """Validation samples with a label no training sample has cannot be learned: they are bad rows."""
    if task == "regression":
        return valid, []
    seen = {i for _, t in train for i in ([t] if isinstance(t, int) else t)}  # type: ignore[union-attr]
    kept, bad = [], []
    for path, target in valid:
        labels = [target] if isinstance(target, int) else list(target)  # type: ignore[arg-type]
        unseen = [names[i] for i in labels if i not in seen]  # type: ignore[index]
        if unseen:
            bad.append(f"{path}: validation label(s) {unseen} have no training images")
        else:
            kept.append((path, target))
    return kept, bad


def _check_bad_rows(source: Path, bad: list[str], skip_bad: bool) -> None:
    if bad and not skip_bad:
        listed = "; ".join(bad[:5]) + (f"; and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise DataError(
            f"{source}: {len(bad)} bad rows: {listed}. Fix them, or leave them out (--skip-bad, skip_bad=True)."
        )


def _read(source: Path, valid_pct: float, seed: int, task: str | None, x_col: str | None, y_col: str | None) -> _Rows:
    if task is not None and task not in TASK_NAMES:
        raise DataError(f"unknown task {task!r} for images; choose from {', '.join(TASK_NAMES)}.")
    if source.is_file():
        return _from_table(source, valid_pct, seed, task=task, x_col=x_col, y_col=y_col)
    if task not in (None, "classify"):
        raise DataError(
            f"{source}: {task} data come as a CSV or JSON-lines file of rows (path, targets); a folder of class "
            f"folders is single-label."
        )
    classes, train, valid, warnings = _from_folder(source, valid_pct, seed)
    return _Rows(classes, train, valid, warnings, "classify", "class folders")


def image_data(
    source: str | Path,
    *,
    task: str | None = None,
    x_col: str | None = None,
    y_col: str | None = None,
    valid_pct: float = 0.2,
    seed: int = 0,
    skip_bad: bool = False,
    progress: bool = False,
) -> ImageData:
    """Find, split and check the images of ``source``: a folder (``train/`` + ``valid/`` or ``val/``, each with
    one sub-folder per class; or just class folders, split ``valid_pct`` per class with ``seed``), or a CSV /
    JSON-lines file of rows — ``path,label`` (single label), ``path,tag1;tag2`` (multi-label),
    ``path,value[,value…]`` (regression), with an optional ``train``/``valid`` column (see
    :mod:`torchgraft.data.tables`).

    Args:
        source: the folder or the CSV / JSON-lines file.
        task: ``"classify"``, ``"multilabel"`` or ``"regression"``; inferred from the rows when ``None``
            (``ImageData.task_reason`` says why).
        x_col: the column of the image paths, by header name.
        y_col: the column(s) of the targets, by header name (``"a,b"`` for several).
        valid_pct: the share of images split off for validation when the data mark no split.
        seed: the seed of that split.
        skip_bad: leave unreadable files and bad rows out (counted) instead of raising.
        progress: show a progress bar over the image scan.

    Every file is decoded once. Unreadable files and bad rows (missing file, empty label, a number that is
    not one, a validation label without training images) raise a :class:`DataError` naming them, or with
    ``skip_bad=True`` are left out and listed in ``skipped`` / ``bad_rows``.

    Example:
        >>> data = image_data("pets/", valid_pct=0.2)
        >>> print(data.summary())
        37 classes, 5912 train / 1478 valid images
    """
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"{source}: no such folder or CSV file.")
    rows = _read(source, valid_pct, seed, task, x_col, y_col)
    _check_bad_rows(source, rows.bad, skip_bad)
    train, valid, warnings = rows.train, rows.valid, rows.warnings
    if not train:
        raise DataError(f"{source}: no training images found (image suffixes: {', '.join(IMAGE_SUFFIXES)}).")
    if not valid:
        raise DataError(f"{source}: no validation images; add a valid/ folder or raise valid_pct.")
    bad = scan_images([p for p, _ in train + valid], progress=progress)
    if bad and not skip_bad:
        listed = "; ".join(str(b) for b in bad[:5]) + (f"; and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise DataError(
            f"{len(bad)} unreadable image files: {listed}. "
            "Fix or remove them, or skip them (--skip-bad, skip_bad=True)."
        )
    gone = {b.path for b in bad}
    train = [s for s in train if s[0] not in gone]
    valid = [s for s in valid if s[0] not in gone]
    if rows.task == "classify":
        counts = Counter(label for _, label in train)
        warnings += [
            f"class {c!r} has no readable training images" for i, c in enumerate(rows.classes) if not counts[i]
        ]
    return ImageData(
        rows.classes,
        train,
        valid,
        skipped=bad,
        warnings=sorted(set(warnings)),
        task=rows.task,
        task_reason=rows.reason,
        bad_rows=rows.bad,
    )
