"""Labelled image data from disk: an ImageFolder (``train/`` + ``valid/``, or one folder split by a seed) or a
CSV of ``path,label`` rows, checked before training.

:func:`image_data` finds the samples, scans every file (:func:`torchgraft.data.images.scan_images`) and reports
problems up front — corrupt files (an error naming them, or skipped and counted with ``skip_bad=True``),
empty class folders, classes missing from the validation set — so a run never crashes an hour in.
"""

from __future__ import annotations

import csv
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from torchgraft.data.images import IMAGE_SUFFIXES, BadImage, load_rgb, scan_images

__all__ = ["DataError", "ImageData", "ImageDataset", "image_data"]

Sample = tuple[str, int]
_VALID_NAMES = ("valid", "val", "validation")


class DataError(ValueError):
    """The data on disk cannot be trained on as given; the message names the paths and the fix."""


class ImageDataset(Dataset):
    """``(transform(RGB image), label)`` pairs read from ``samples`` (path, class index) on access."""

    def __init__(self, samples: Sequence[Sample], classes: Sequence[str], transform: Callable | None = None) -> None:
        self.samples, self.classes, self.transform = list(samples), list(classes), transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, label = self.samples[index]
        image = load_rgb(path)
        return (self.transform(image) if self.transform is not None else image), label


@dataclass
class ImageData:
    """Train and validation samples of one dataset, and what the checks found.

    Attributes:
        classes: class names; a sample's label is an index into this list.
        train, valid: ``(path, label)`` lists.
        skipped: files that could not be decoded (only with ``skip_bad=True``; else they raise).
        warnings: empty classes, classes without validation images.
    """

    classes: list[str]
    train: list[Sample]
    valid: list[Sample]
    skipped: list[BadImage] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def datasets(self, train_transform: Callable, valid_transform: Callable) -> tuple[ImageDataset, ImageDataset]:
        """The two datasets with their transforms."""
        return (
            ImageDataset(self.train, self.classes, train_transform),
            ImageDataset(self.valid, self.classes, valid_transform),
        )

    def summary(self) -> str:
        """One line: counts of classes, images and skipped files."""
        skipped = f", {len(self.skipped)} unreadable files skipped" if self.skipped else ""
        return f"{len(self.classes)} classes, {len(self.train)} train / {len(self.valid)} valid images{skipped}"


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _class_folders(root: Path) -> dict[str, list[Path]]:
    """``{class name: image paths}`` for the sub-folders of ``root`` (hidden folders ignored)."""
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(f"{root}: no class folders. Expected {root}/<class>/<image> (or a CSV of path,label rows).")
    return {folder.name: _images_in(folder) for folder in folders}


def _split(samples: list[Sample], valid_pct: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Stratified random split: ``valid_pct`` of each class (at least one image when it has two) to valid."""
    if not 0 < valid_pct < 1:
        raise DataError(f"valid_pct must be between 0 and 1, got {valid_pct}.")
    rng = random.Random(seed)
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


def _from_csv(path: Path, valid_pct: float, seed: int) -> tuple[list[str], list[Sample], list[Sample], list[str]]:
    """Rows ``path,label`` (header optional; a third column ``split`` = train/valid overrides the random split)."""
    with path.open(newline="") as handle:
        rows = [row for row in csv.reader(handle) if row and any(cell.strip() for cell in row)]
    if rows and rows[0][0].strip().lower() in ("path", "file", "filename", "image"):
        rows = rows[1:]
    if not rows:
        raise DataError(f"{path}: no rows. Expected 'path,label' lines (paths relative to the CSV's folder).")
    for number, row in enumerate(rows, 1):
        if len(row) < 2:
            raise DataError(f"{path}: row {number} {row!r} has no label column; expected 'path,label'.")
    classes = sorted({row[1].strip() for row in rows})
    index = {name: i for i, name in enumerate(classes)}
    samples = [(str(path.parent / row[0].strip()), index[row[1].strip()]) for row in rows]
    missing = [s for s, _ in samples if not Path(s).is_file()]
    if missing:
        raise DataError(f"{path}: {len(missing)} listed files do not exist (first: {missing[0]}).")
    if all(len(row) > 2 for row in rows):
        marks = [row[2].strip().lower() for row in rows]
        train = [s for s, mark in zip(samples, marks, strict=True) if mark not in _VALID_NAMES]
        valid = [s for s, mark in zip(samples, marks, strict=True) if mark in _VALID_NAMES]
    else:
        train, valid = _split(samples, valid_pct, seed)
    held = {label for _, label in valid}
    warnings = [f"class {c!r} has no validation images" for i, c in enumerate(classes) if i not in held]
    return classes, train, valid, warnings


def image_data(
    source: str | Path,
    *,
    valid_pct: float = 0.2,
    seed: int = 0,
    skip_bad: bool = False,
    progress: bool = False,
) -> ImageData:
    """Find, split and check the images of ``source``: a folder (``train/`` + ``valid/`` or ``val/``, each with
    one sub-folder per class; or just class folders, split ``valid_pct`` per class with ``seed``) or a CSV
    file of ``path,label`` rows.

    Every file is decoded once. Unreadable files raise a :class:`DataError` listing them, or with
    ``skip_bad=True`` are left out and listed in ``skipped``.

    Example:
        >>> data = image_data("pets/", valid_pct=0.2)
        >>> print(data.summary())
        37 classes, 5912 train / 1478 valid images
    """
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"{source}: no such folder or CSV file.")
    reader = _from_csv if source.is_file() else _from_folder
    classes, train, valid, warnings = reader(source, valid_pct, seed)
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
    counts = Counter(label for _, label in train)
    warnings += [f"class {c!r} has no readable training images" for i, c in enumerate(classes) if not counts[i]]
    return ImageData(classes, train, valid, skipped=bad, warnings=sorted(set(warnings)))
