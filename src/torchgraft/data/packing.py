"""An image folder or CSV / JSON-lines table (any label kind), or a table or folder of texts, packed into
WebDataset tar shards, each image checked as it is copied: ``train-000000.tar ...`` and ``valid-000000.tar ...``
(the split as :func:`~torchgraft.data.folders.image_data` makes it) and :data:`~torchgraft.data.wds.META_NAME` (classes,
task, samples per shard, what was left out), so that a run on the shards knows its classes and length without
a scan.

The check is the conversion: the files are listed and split without being opened, then each is read once,
decoded in a thread pool (:func:`~torchgraft.data.images.load_rgb`) and written as its original bytes (the
shards decode to exactly the source's pixels). Unreadable files are left out and listed, as ``--skip-bad``
does. Training samples are written in an order shuffled with ``seed`` (a shard holds a mix of classes).
Texts (what :func:`~torchgraft.data.texts.looks_like_text` recognises) are read and checked as
:func:`~torchgraft.data.texts.text_data` reads them (bad rows listed by line) and written as ``txt`` members.
"""

from __future__ import annotations

import io
import json
import os
import random
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchgraft.data.folders import _image_cell  # a table's image cell, read as image_data reads it
from torchgraft.data.images import IMAGE_SUFFIXES, BadImage, load_rgb
from torchgraft.data.samples import DataError, Rows, Sample, check_bad_rows, read_rows
from torchgraft.data.texts import looks_like_text, text_data
from torchgraft.data.wds import META_NAME, webdataset_module

__all__ = ["PackReport", "pack"]


@dataclass
class PackReport:
    """What :func:`pack` wrote: the shards, the metadata file, counts, and the files left out."""

    out: Path
    classes: list[str]
    task: str
    counts: dict[str, int]
    shards: list[Path]
    meta: Path
    skipped: list[BadImage] = field(default_factory=list)
    bad_rows: list[str] = field(default_factory=list)
    kind: str = "image"  # or "text"

    def summary(self) -> str:
        """One line: counts of samples and shards, and of files left out."""
        left = f"; left out {len(self.skipped)} unreadable files" if self.skipped else ""
        rows = f" and {len(self.bad_rows)} bad rows" if self.bad_rows else ""
        return (
            f"packed {self.counts['train']} train / {self.counts['valid']} valid {self.kind}s ({self.task}, "
            f"{len(self.classes)} {'targets' if self.task == 'regression' else 'classes'}) into {len(self.shards)} "
            f"shards in {self.out}{left}{rows}"
        )


def _read_checked(path: str) -> bytes | BadImage:
    """The file's bytes once they decode, else why not."""
    try:
        data = Path(path).read_bytes()
        load_rgb(io.BytesIO(data))  # type: ignore[arg-type]  # PIL opens file objects too
    except BadImage as error:
        return BadImage(path, error.reason)
    except OSError as error:
        return BadImage(path, f"{type(error).__name__}: {error}")
    return data


def _checked(samples: Sequence[Sample], workers: int) -> Iterator[tuple[Sample, bytes | BadImage]]:
    with ThreadPoolExecutor(workers) as pool:
        yield from zip(samples, pool.map(_read_checked, [p for p, _ in samples], chunksize=16), strict=True)


def _target_member(task: str, target: Any, classes: list[str]) -> tuple[str, Any]:
    """The member a target is written as: ``cls`` (a class index), else ``json`` (label names or values)."""
    if task == "classify":
        return "cls", int(target)
    if task == "multilabel":
        return "json", [classes[i] for i in target]
    return "json", [float(v) for v in target]


def _texts(samples: Sequence[Sample]) -> Iterator[tuple[Sample, bytes]]:
    return ((sample, sample[0].encode("utf-8")) for sample in samples)


def _write(
    samples: Sequence[Sample],
    out: Path,
    split: str,
    rows: Rows,
    shard_size: int,
    workers: int,
    on_sample: Callable[[], None] | None = None,
    *,
    kind: str = "image",
) -> tuple[dict[str, int], list[Any], list[BadImage]]:
    """Write one split's samples (images from their files, checked; texts as ``txt``); returns samples per shard
    file, the targets written, the files left out. ``on_sample()`` is called after each sample is checked
    (written or left out)."""
    counts: Counter[str] = Counter()
    targets, bad = [], []
    pattern = str(out / f"{split}-%06d.tar")
    read = _texts(samples) if kind == "text" else _checked(samples, workers)
    with webdataset_module().ShardWriter(pattern, maxcount=shard_size, maxsize=float("inf"), verbose=0) as writer:
        for number, ((path, target), data) in enumerate(read):
            if on_sample is not None:
                on_sample()
            if isinstance(data, BadImage):
                bad.append(data)
                continue
            suffix = "txt" if kind == "text" else Path(path).suffix.lower().lstrip(".")
            key, value = _target_member(rows.task, target, rows.classes)
            writer.write({"__key__": f"{number:09d}", suffix: data, key: value})
            counts[Path(writer.fname).name] += 1
            targets.append(target)
    for file in sorted(out.glob(f"{split}-*.tar")):
        if file.name not in counts:  # a shard opened for nothing (an empty split's)
            file.unlink()
    return dict(counts), targets, bad


def pack(
    source: str | Path,
    out: str | Path,
    *,
    shard_size: int = 10000,
    task: str | None = None,
    x_col: str | None = None,
    y_col: str | None = None,
    valid_pct: float = 0.2,
    seed: int = 0,
    skip_bad_rows: bool = False,
    workers: int | None = None,
    on_count: Callable[[int, int], None] | None = None,
) -> PackReport:
    """Pack the images of ``source`` (a folder or a CSV / JSON-lines table, read as
    :func:`~torchgraft.data.folders.image_data` reads it) into WebDataset shards of at most ``shard_size``
    samples in ``out``, checking each image; unreadable ones are left out and listed in the report. A table
    or folder of texts is read as :func:`~torchgraft.data.texts.text_data` reads it and packed as ``txt``
    members. ``on_count(done, total)`` is called after each sample is checked (progress over both splits).

    Example:
        >>> report = pack("pets/", "pets-shards/", shard_size=1000)
        >>> print(report.summary())
        packed 5912 train / 1478 valid images (classify, 37 classes) into 8 shards in pets-shards

    Raises:
        DataError: bad rows in a table (unless ``skip_bad_rows``), no readable training or validation image,
            or ``out`` already holding shards.
    """
    source, out = Path(source), Path(out)
    if not source.exists():
        raise FileNotFoundError(f"{source}: no such folder or CSV file.")
    if shard_size < 1:
        raise ValueError(f"pack: shard_size must be >= 1, got {shard_size}.")
    if out.is_dir() and any(out.glob("*.tar")):
        raise DataError(f"{out}: already holds .tar shards; pack into an empty folder.")
    kind = "text" if looks_like_text(source, x_col=x_col) else "image"
    rows = _rows(source, kind, task=task, x_col=x_col, y_col=y_col, valid_pct=valid_pct, seed=seed, skip=skip_bad_rows)
    out.mkdir(parents=True, exist_ok=True)
    workers = workers or min(8, (os.cpu_count() or 1) + 2)
    train = list(rows.train)
    random.Random(seed).shuffle(train)
    splits, skipped = {}, []
    total, done = len(train) + len(rows.valid), 0

    def on_sample() -> None:
        nonlocal done
        done += 1
        if on_count is not None:
            on_count(done, total)

    for name, samples in (("train", train), ("valid", rows.valid)):
        counts, targets, bad = _write(samples, out, name, rows, shard_size, workers, on_sample, kind=kind)
        splits[name] = {"shards": counts, "count": sum(counts.values())}
        if rows.task == "regression" and name == "train":
            splits[name]["targets"] = [list(t) for t in targets]  # the scale a regression is fitted to
        skipped += bad
    if not splits["train"]["count"] or not splits["valid"]["count"]:
        empty = "training" if not splits["train"]["count"] else "validation"
        raise DataError(f"{source}: no readable {empty} {kind}s.")
    meta = {
        "format": "torchgraft-shards",
        "version": 1,
        "source": str(source),
        "kind": kind,
        "x": "txt" if kind == "text" else None,
        "y": "cls" if rows.task == "classify" else "json",
        "task": rows.task,
        "task_reason": rows.reason,
        "classes": rows.classes,
        "splits": splits,
        "skipped": [{"path": b.path, "reason": b.reason} for b in skipped],
        "bad_rows": rows.bad,
    }
    (out / META_NAME).write_text(json.dumps(meta, indent=1) + "\n")
    counts = {name: split["count"] for name, split in splits.items()}
    shards = sorted(out.glob("*.tar"))
    return PackReport(out, rows.classes, rows.task, counts, shards, out / META_NAME, skipped, rows.bad, kind)


def _rows(source: Path, kind: str, *, task: str | None, x_col: str | None, y_col: str | None, valid_pct: float,
          seed: int, skip: bool) -> Rows:  # fmt: skip
    """The split samples of ``source`` as ``train`` reads them: image paths (bad rows refused unless ``skip``),
    or texts (checked by :func:`~torchgraft.data.texts.text_data`)."""
    if kind == "text":
        texts = text_data(source, task=task, x_col=x_col, y_col=y_col, valid_pct=valid_pct, seed=seed, skip_bad=skip)
        found = (texts.classes, texts.train, texts.valid, texts.warnings, texts.task, texts.task_reason)
        return Rows(*found, bad=texts.bad_rows)
    options = {"task": task, "x_col": x_col, "y_col": y_col, "read_cell": _image_cell, "suffixes": IMAGE_SUFFIXES}
    rows = read_rows(source, valid_pct, seed, **options, what="image")  # type: ignore[arg-type]
    check_bad_rows(source, rows.bad, skip)
    return rows
