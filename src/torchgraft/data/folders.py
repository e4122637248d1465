"""Labelled image data from disk: an ImageFolder (``train/`` + ``valid/``, or one folder split by a seed) or a
CSV / JSON-lines file of rows (single-label, multi-label or regression targets), checked before training.

:func:`image_data` finds the samples, scans every file (:func:`torchgraft.data.images.scan_images`) and reports
problems up front — corrupt files (an error naming them, or skipped and counted with ``skip_bad=True``),
empty class folders, classes missing from the validation set — so a run never crashes an hour in.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from torchgraft.data.badfiles import BadFiles
from torchgraft.data.decode import decode_rgb
from torchgraft.data.images import IMAGE_SUFFIXES, BadImage
from torchgraft.data.manifest import checked_files
from torchgraft.data.samples import (
    DataError,
    Sample,
    check_bad_rows,
    read_rows,
)
from torchgraft.spelling import option

__all__ = ["DataError", "ImageData", "ImageDataset", "image_data"]


class ImageDataset(Dataset):
    """``(transform(RGB image), target)`` pairs read from ``samples`` on access.

    A target is a class index (single label), a multi-hot float vector over ``classes`` (multi-label, from a
    tuple of label indices) or a float vector (regression, from a tuple of values).

    A file that fails to decode never stops training: it is recorded in ``bad_files`` (path and error; shared
    by every DataLoader worker, see :class:`~torchgraft.data.badfiles.BadFiles`) and the next sample of the
    dataset that decodes is returned in its place, its target with it — the same one whichever process reads
    it, so seeded augmentation, resumed and distributed runs stay exact. :meth:`bad_samples` lists them.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        classes: Sequence[str],
        transform: Callable | None = None,
        *,
        task: str = "classify",
        bad_files: BadFiles | None = None,
        files_fingerprint: str | None = None,
    ) -> None:
        self.samples, self.classes, self.transform, self.task = list(samples), list(classes), transform, task
        self.bad_files = bad_files if bad_files is not None else BadFiles()
        self.files_fingerprint = files_fingerprint

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

    def fingerprint(self) -> str | None:
        """A hash of every sample's (path, size, mtime, target), the task, the classes and the transform's
        ``repr``: what the feature cache keys stored features by. ``None`` when the transform's ``repr``
        holds an address (``<function <lambda> at 0x...>``: it does not say what the transform does).
        Given ``files_fingerprint`` (the data's manifest: :attr:`ImageData.fingerprint`, which covers every
        file's size and mtime as read), the files are not stat'ed again: a million files cost seconds."""
        described = repr(self.transform)
        if " at 0x" in described:
            return None
        digest = hashlib.blake2b(f"{self.task}|{self.classes}|{described}".encode(), digest_size=16)
        if self.files_fingerprint is not None:
            digest.update(f"\nfiles {self.files_fingerprint}".encode())
            digest.update("\0".join(f"{path}|{target}" for path, target in self.samples).encode())
            return digest.hexdigest()
        for path, target in self.samples:
            stat = os.stat(path)
            digest.update(f"\n{path}|{stat.st_size}|{stat.st_mtime_ns}|{target}".encode())
        return digest.hexdigest()

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        for at in self._candidates(index):
            try:
                image = decode_rgb(self.samples[at][0])
            except BadImage as error:
                self.bad_files.record(error)
                continue
            return (self.transform(image) if self.transform is not None else image), self.target(at)
        raise DataError(f"{len(self)} images: not one decodes ({self.bad_files.summary()}).")

    def _candidates(self, index: int) -> Iterator[int]:
        """``index``, then the next ones (wrapping around): where a replacement for a bad file is looked for."""
        size = len(self.samples)
        return ((index + step) % size for step in range(size))

    def bad_samples(self) -> list[BadImage]:
        """The files that failed to decode so far (in every worker process), each once, in the order met."""
        return self.bad_files.read()


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
        fingerprint: a hash of the samples, their files' sizes and modification times and the check verdicts
            (:attr:`torchgraft.data.manifest.Manifest.fingerprint`): equal for the same data on disk.
        checked, reused: files checked by this read, and files whose verdicts came from the manifest.
        split_off: the share split off at random for validation (``None``: the data brought its split).
    """

    classes: list[str]
    train: list[Sample]
    valid: list[Sample]
    skipped: list[BadImage] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    task: str = "classify"
    task_reason: str = ""
    bad_rows: list[str] = field(default_factory=list)
    fingerprint: str = ""
    checked: int = 0
    reused: int = 0
    split_off: float | None = None

    @property
    def n_outputs(self) -> int:
        """Outputs the model needs: one per class, label or target column."""
        return len(self.classes)

    def datasets(
        self, train_transform: Callable, valid_transform: Callable, *, bad_files: BadFiles | None = None
    ) -> tuple[ImageDataset, ImageDataset]:
        """The two datasets with their transforms, recording files that fail to decode in one ``bad_files``
        (default: a new temporary log)."""
        bad_files = bad_files if bad_files is not None else BadFiles()
        options = {"task": self.task, "bad_files": bad_files, "files_fingerprint": self.fingerprint or None}
        return (
            ImageDataset(self.train, self.classes, train_transform, **options),  # type: ignore[arg-type]
            ImageDataset(self.valid, self.classes, valid_transform, **options),  # type: ignore[arg-type]
        )

    def summary(self) -> str:
        """One line: the task, counts of classes (or targets), images and skipped files."""
        skipped = f", {len(self.skipped)} unreadable files skipped" if self.skipped else ""
        rows = f", {len(self.bad_rows)} bad rows skipped" if self.bad_rows else ""
        kept = f" ({self.reused} unchanged since the manifest, not checked again)" if self.reused else ""
        what = f"{len(self.classes)} {'targets' if self.task == 'regression' else 'classes'}"
        task = "" if self.task == "classify" else f"{self.task}: "
        return f"{task}{what}, {len(self.train)} train / {len(self.valid)} valid images{skipped}{rows}{kept}"


def _image_cell(line: int, cell: str, table: Path) -> tuple[str | None, str | None]:
    """A table's image path, relative to the table's folder, or why the row is bad."""
    file = table.parent / cell.strip()
    return (str(file), None) if file.is_file() else (None, f"no file {file}")


def image_data(
    source: str | Path,
    *,
    task: str | None = None,
    x_col: str | None = None,
    y_col: str | None = None,
    valid_pct: float = 0.2,
    seed: int = 0,
    skip_bad: bool = False,
    check: str = "header",
    manifest: str | Path | bool = True,
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
        check: how each file is checked: ``"header"`` (opened, its header verified: fast), ``"full"`` (decoded)
            or ``"none"``; a file that passes but fails to decode in training is replaced there and reported.
        manifest: keep the files' verdicts in the data's manifest (:mod:`torchgraft.data.manifest`), so that
            the next read checks only new and changed files: ``True`` (in ``$TORCHGRAFT_CACHE/manifests``), a
            folder to keep it in, or ``False`` (check everything, remember nothing).
        progress: show a progress bar over the image check.

    Unreadable files and bad rows (missing file, empty label, a number that is
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
    rows = read_rows(
        source,
        valid_pct,
        seed,
        task=task,
        x_col=x_col,
        y_col=y_col,
        read_cell=_image_cell,
        suffixes=IMAGE_SUFFIXES,
        what="image",
    )
    check_bad_rows(source, rows.bad, skip_bad)
    train, valid, warnings = rows.train, rows.valid, rows.warnings
    if not train:
        raise DataError(f"{source}: no training images found (image suffixes: {', '.join(IMAGE_SUFFIXES)}).")
    if not valid:
        raise DataError(f"{source}: no validation images; add a valid/ folder or raise valid_pct.")
    remember, where = manifest is not False, None if isinstance(manifest, bool) else manifest
    found = checked_files(
        train, valid, source=source, check=check, directory=where, remember=remember, progress=progress
    )
    bad, warnings = found.bad, warnings + found.warnings
    if bad and not skip_bad:
        listed = "; ".join(str(b) for b in bad[:5]) + (f"; and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise DataError(
            f"{len(bad)} unreadable image files: {listed}. "
            f"Fix or remove them, or skip them ({option('skip_bad=True', '--skip-bad')})."
        )
    if bad:
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
        fingerprint=found.fingerprint,
        checked=found.checked,
        reused=found.reused,
        split_off=rows.split_off,
    )
