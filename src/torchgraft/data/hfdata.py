"""Hugging Face ``datasets`` as labelled data: a folder saved with ``save_to_disk`` (``load_from_disk``), or a
folder or glob of Parquet / Arrow files (``load_dataset("parquet", data_files=...)``), read by index
(map-style) or, with ``streaming=True``, as an ``IterableDataset``.

Splits: a ``DatasetDict``'s ``train`` and ``validation`` (or ``valid``, ``val``, ``test``); files whose path
names ``valid``/``val``/``validation``/``test`` are validation, the rest training. A map-style dataset without
a validation split is split as a CSV is (``valid_pct`` per class, ``seed``); a stream must bring one.
Columns are chosen as a CSV's (``x_col``, ``y_col``; defaults ``image``/``img``/``jpg``/``png``/``path``/
``text`` and ``label``/``labels``/``cls``/...). Class names come from a ``ClassLabel`` feature (or a sequence
of them: multi-label) when there is one, else from the values, the task inferred as a CSV's. Images are
decoded to uint8 tensors (:func:`~torchgraft.data.streams.image_of`) from the stored bytes or files.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Container, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torchgraft.data.images import IMAGE_SUFFIXES
from torchgraft.data.samples import DataError, Target, check_bad_rows, split_samples
from torchgraft.data.streams import Split, StreamData, code_target, decoded, image_of, target_cells
from torchgraft.data.tables import X_NAMES, Y_NAMES, infer_task, parse_targets

__all__ = ["HFRows", "HFStream", "hf_data", "looks_like_hf", "probe_kind"]

IMAGE_COLUMNS = ("image", "img", "jpg", "jpeg", "png", "picture")
X_COLUMNS = (*IMAGE_COLUMNS, *X_NAMES)
Y_COLUMNS = (*Y_NAMES, "cls")
VALID_SPLITS = ("validation", "valid", "val", "test")
_DISK_FILES = ("dataset_dict.json", "state.json")
_FILE_KINDS = {".parquet": "parquet", ".arrow": "arrow"}


def _datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise ImportError("Hugging Face datasets need datasets: pip install 'torchgraft[datasets]'.") from None
    return datasets


def _data_files(source: str) -> list[Path]:
    folder = Path(source)
    if folder.is_dir():
        return sorted(p for p in folder.rglob("*") if p.suffix in _FILE_KINDS and p.is_file())
    return sorted(Path(p) for p in glob.glob(source) if Path(p).suffix in _FILE_KINDS)


def _holds_data_files(folder: Path) -> bool:
    """Whether ``folder`` or one of its split folders (``train/``, ``data/``, ``valid/``...) holds Parquet or
    Arrow files: two directory listings at most, never a walk (an image folder of millions of files)."""
    with os.scandir(folder) as entries:
        listed = list(entries)
    if any(e.name.endswith(tuple(_FILE_KINDS)) and e.is_file() for e in listed):
        return True
    splits = [e for e in listed if e.is_dir() and e.name.lower() in ("train", "data", *VALID_SPLITS)]
    for split in splits:
        with os.scandir(split.path) as entries:
            if any(e.name.endswith(tuple(_FILE_KINDS)) and e.is_file() for e in entries):
                return True
    return False


def looks_like_hf(source: str | Path) -> bool:
    """Whether ``source`` is a ``save_to_disk`` folder or a folder / glob / file of Parquet or Arrow files."""
    folder = Path(source)
    if folder.is_dir():
        return any((folder / name).is_file() for name in _DISK_FILES) or _holds_data_files(folder)
    return bool(_data_files(str(source)))


def _is_valid(path: Path) -> bool:
    parts = {p.lower() for p in path.parts} | {path.name.split("-")[0].split(".")[0].lower()}
    return bool(parts & set(VALID_SPLITS))


def _open(source: str, streaming: bool) -> dict[str, Any]:
    """``{split name: dataset}`` of ``source``."""
    datasets = _datasets()
    folder = Path(source)
    if folder.is_dir() and any((folder / name).is_file() for name in _DISK_FILES):
        loaded = datasets.load_from_disk(str(folder))
        splits = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
        return {k: v.to_iterable_dataset() if streaming else v for k, v in splits.items()}
    files = _data_files(source)
    kind = _FILE_KINDS[files[0].suffix]
    valid = [str(f) for f in files if _is_valid(f)]
    data_files = {"train": [str(f) for f in files if not _is_valid(f)], **({"validation": valid} if valid else {})}
    return dict(datasets.load_dataset(kind, data_files=data_files, streaming=streaming))


def _columns(
    dataset: Any, x_col: str | None, y_col: str | None, where: str, *, need_target: bool = True
) -> tuple[str, list[str]]:
    names = list(dataset.features) if dataset.features is not None else list(next(iter(dataset)))
    lowered = {n.lower(): n for n in names}
    for name in [x_col, *(y_col.split(",") if y_col else [])]:
        if name and name.strip().lower() not in lowered:
            raise DataError(f"{where}: no column {name!r}; the columns are {', '.join(names)}.")
    x = lowered[x_col.lower()] if x_col else next((lowered[n] for n in X_COLUMNS if n in lowered), names[0])
    ys = [lowered[n.strip().lower()] for n in y_col.split(",")] if y_col else []
    ys = ys or [lowered[n] for n in Y_COLUMNS if n in lowered][:1]
    if not ys and need_target:
        raise DataError(f"{where}: no target column (label, labels, cls, ...) in {', '.join(names)}; pass --y-col.")
    return x, ys


def _kind(dataset: Any, x: str) -> str:
    feature = dataset.features[x] if dataset.features is not None else None
    if type(feature).__name__ == "Image" or x.lower() in IMAGE_COLUMNS:
        return "image"
    first = next(iter(dataset.select_columns([x])))[x]
    return "image" if isinstance(first, str) and first.lower().endswith(IMAGE_SUFFIXES) else "text"


def probe_kind(source: str | Path, *, x_col: str | None = None) -> str:
    """``"image"`` or ``"text"``: what the input column of the dataset at ``source`` holds (read as a stream:
    nothing is converted or loaded whole)."""
    train = _open(str(source), streaming=True).get("train")
    if train is None:
        return "image"
    x = x_col or _columns(train, x_col, None, str(source), need_target=False)[0]
    return _kind(train, x)


def _label_names(dataset: Any, ys: list[str]) -> tuple[str, list[str]] | None:
    """``(task, names)`` from a ``ClassLabel`` feature (or a sequence of them), else ``None``."""
    if dataset.features is None or len(ys) != 1:
        return None
    feature = dataset.features[ys[0]]
    if type(feature).__name__ == "ClassLabel":
        return "classify", list(feature.names)
    inner = getattr(feature, "feature", None)
    if isinstance(feature, list) and feature:
        inner = feature[0]
    return ("multilabel", list(inner.names)) if type(inner).__name__ == "ClassLabel" else None


def _target_values(dataset: Any, ys: list[str]) -> list[list[Any]]:
    """Each row's values of the target columns (one pass over those columns only)."""
    only = dataset.select_columns(ys)
    if hasattr(only, "__len__") and hasattr(only, "to_dict"):
        columns = only.to_dict()
        return [list(row) for row in zip(*(columns[y] for y in ys), strict=True)]
    return [[row[y] for y in ys] for row in only]


@dataclass
class Coder:
    """How a row's target values become a target: a class-label feature's numbers as they are, else the
    values read as table cells (:func:`~torchgraft.data.streams.code_target`)."""

    task: str
    names: list[str]
    labelled: bool

    def __call__(self, values: list[Any]) -> Target | None:
        if self.labelled:
            value = values[0]
            return tuple(sorted(value)) if self.task == "multilabel" else value
        cells = [c for v in values for c in target_cells(v)]
        return code_target(self.task, cells, {n: i for i, n in enumerate(self.names)})


def _coder(dataset: Any, ys: list[str], task: str | None, values: list[list[Any]]) -> tuple[Coder, str, list[str]]:
    """The coder of the targets, the reason for the task and the bad rows."""
    labelled = _label_names(dataset, ys)
    if labelled is not None and task in (None, labelled[0]):
        return Coder(labelled[0], labelled[1], True), "a ClassLabel feature", []
    cells = [[c for v in row for c in target_cells(v)] for row in values]
    chosen, reason = (task, "given") if task else infer_task(cells)
    parsed = parse_targets(chosen, cells, list(range(len(cells))), ys)  # type: ignore[arg-type]
    bad = [f"row {i}: target {cells[i]!r} unreadable" for i, v in enumerate(parsed.values) if v is None]
    return Coder(chosen, parsed.names, False), reason, bad


class HFRows:
    """Rows of a map-style dataset by index: ``(input, target)``, images decoded by :func:`image_of`."""

    def __init__(self, dataset: Any, indices: list[int], targets: list[Target], *, x: str, kind: str) -> None:
        if kind == "image" and type(dataset.features[x]).__name__ == "Image":
            dataset = dataset.cast_column(x, _datasets().Image(decode=False))
        self.dataset, self.indices, self.targets, self.x, self.kind = dataset, indices, targets, x, kind

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[Any, Target]:
        row = self.indices[index]
        value = self.dataset[row][self.x]
        return (image_of(value, name=f"row {row}") if self.kind == "image" else value), self.targets[index]


@dataclass
class HFStream:
    """A streamed split in an epoch's order (shuffled from ``(seed, epoch)`` when ``shuffle``): a
    :class:`~torchgraft.data.streams.RecordSource`."""

    dataset: Any
    size: int
    x: str
    ys: list[str]
    kind: str
    coder: Coder
    shuffle: bool = False
    seed: int = 0

    def records(self, epoch: int, wanted: Container[int], last: int) -> Iterator[tuple[int, tuple[Any, Target]]]:
        """``(position, (input, target))`` of the wanted positions of ``epoch``'s order; rows with a bad target
        are not counted."""
        dataset = self.dataset.select_columns([self.x, *self.ys])
        if self.kind == "image" and type(dataset.features[self.x]).__name__ == "Image":
            dataset = dataset.cast_column(self.x, _datasets().Image(decode=False))
        if self.shuffle:
            dataset = dataset.shuffle(seed=self.seed, buffer_size=1000)
            dataset.set_epoch(epoch)
        position = 0
        for row in dataset:
            if position > last:
                return
            target = self.coder([row[y] for y in self.ys])
            if target is None:
                continue
            if position in wanted:
                value = row[self.x]
                yield position, (decoded(value, name=f"row {position}") if self.kind == "image" else value, target)
            position += 1


def _examples(dataset: Any, x: str, kind: str, indices: list[int]) -> list[str]:
    """A few validation inputs an export checks on: texts, or image files that exist."""
    rows = [dataset[i][x] for i in indices[:4]] if hasattr(dataset, "__getitem__") else []
    if kind == "text":
        return [str(r)[:5000] for r in rows]
    paths = [r.get("path") if isinstance(r, dict) else r for r in rows]
    return [p for p in paths if isinstance(p, str) and Path(p).is_file()]


def hf_data(
    source: str | Path,
    *,
    streaming: bool = False,
    task: str | None = None,
    x_col: str | None = None,
    y_col: str | None = None,
    valid_pct: float = 0.2,
    seed: int = 0,
    skip_bad: bool = False,
) -> StreamData:
    """The train and validation splits of the Hugging Face dataset at ``source``.

    Example:
        >>> data = hf_data("beans/")  # saved with save_to_disk
        >>> print(data.summary())
        3 classes, 1034 train / 133 valid images (by index)

    Raises:
        DataError: no target column, bad targets (unless ``skip_bad``), a stream without a validation split.
    """
    where = str(source)
    splits = _open(where, streaming)
    valid_name = next((n for n in VALID_SPLITS if n in splits), None)
    if "train" not in splits:
        raise DataError(f"{where}: no train split (the splits are {', '.join(splits)}).")
    if streaming and valid_name is None:
        raise DataError(f"{where}: a streamed dataset needs a validation split (validation/ files or a DatasetDict).")
    train = splits["train"]
    x, ys = _columns(train, x_col, y_col, where)
    kind = _kind(train, x)
    values = _target_values(train, ys)
    held_values = _target_values(splits[valid_name], ys) if valid_name else []
    coder, reason, bad = _coder(train, ys, task, values + held_values)
    check_bad_rows(Path(where), bad, skip_bad)
    targets = [coder(v) for v in values]
    held = [coder(v) for v in held_values]
    if streaming:
        size = [sum(t is not None for t in ts) for ts in (targets, held)]
        streams = [HFStream(splits["train"], size[0], x, ys, kind, coder, shuffle=True, seed=seed)]
        streams.append(HFStream(splits[valid_name], size[1], x, ys, kind, coder))
        made = [Split(size[0], streams[0], [t for t in targets if t is not None]), Split(size[1], streams[1])]
    else:
        made = _indexed_splits(splits, valid_name, targets, held, x=x, kind=kind, valid_pct=valid_pct, seed=seed)
    split_off = valid_pct if valid_name is None and not streaming else None
    return StreamData(coder.names, *made[:2], kind, coder.task, reason, streaming, where, bad, split_off=split_off)


def _indexed_splits(
    splits: dict[str, Any],
    valid_name: str | None,
    targets: list[Target | None],
    held: list[Target | None],
    *,
    x: str,
    kind: str,
    valid_pct: float,
    seed: int,
) -> list[Split]:
    """The map-style splits: the dataset's own, else the training split divided as a folder is."""
    train = splits["train"]
    pairs = [(i, t) for i, t in enumerate(targets) if t is not None]
    if valid_name is None:
        train_pairs, valid_pairs = split_samples(pairs, valid_pct, seed)  # type: ignore[arg-type]
        sets = [(train, train_pairs), (train, valid_pairs)]
    else:
        sets = [(train, pairs), (splits[valid_name], [(i, t) for i, t in enumerate(held) if t is not None])]
    made = []
    for dataset, chosen in sets:
        indices, kept = [int(i) for i, _ in chosen], [t for _, t in chosen]
        rows = HFRows(dataset, indices, kept, x=x, kind=kind)
        made.append(Split(len(rows), rows, kept, _examples(dataset, x, kind, indices)))
    return made
