"""WebDataset tar shards as labelled data: ``train-{000000..000099}.tar`` (brace patterns expanded as
webdataset does), a folder of ``train-*.tar`` + ``valid-*.tar``, or a pattern with a second one for validation.

A sample is the tar members sharing a key (``000042.jpg``, ``000042.cls``: webdataset's naming). The input is
the member named by ``x_col`` (default: the first image extension present — ``jpg``, ``png``, ... — else
``txt``: texts), the target the member(s) named by ``y_col`` (default: ``cls``, ``label``, ..., ``json``, then
``txt`` beside an image). Shards written by ``torchgraft pack`` carry :data:`META_NAME` beside them (classes,
task, samples per shard): nothing is scanned. Other shards get one pass over their target members (the image
data is skipped, not read) that counts the samples and infers the task and classes as a CSV's are
(:func:`~torchgraft.data.tables.infer_task`, :func:`~torchgraft.data.tables.parse_targets`).

Shards are read from local files with :mod:`tarfile` by seeking: a rank reads the headers of every shard and
the data of its own samples only (:mod:`torchgraft.data.streams`).
"""

from __future__ import annotations

import glob
import json
import tarfile
from collections.abc import Container, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from torchgraft.data.samples import DataError, Target, check_bad_rows
from torchgraft.data.streams import Split, StreamData, code_target, decoded, target_cells
from torchgraft.data.tables import Y_NAMES, infer_task, parse_targets

__all__ = [
    "IMAGE_KEYS",
    "META_NAME",
    "Keys",
    "TarRecords",
    "choose_keys",
    "looks_like_shards",
    "shard_files",
    "shard_kind",
    "wds_data",
    "webdataset_module",
]

META_NAME = "torchgraft-shards.json"
IMAGE_KEYS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif", "ppm", "pgm", "image", "img")
TEXT_KEYS = ("txt", "text")
LABEL_KEYS = ("cls", *Y_NAMES, "json")
VALID_PREFIXES = ("valid", "val", "validation")


def webdataset_module() -> Any:
    """The ``webdataset`` module, or an ImportError naming the extra to install."""
    try:
        import webdataset
    except ImportError:
        raise ImportError("WebDataset shards need webdataset: pip install 'torchgraft[webdataset]'.") from None
    return webdataset


def _expand(pattern: str) -> list[str]:
    from braceexpand import braceexpand  # a dependency of webdataset

    webdataset_module()
    return [name for part in braceexpand(pattern) for name in (sorted(glob.glob(part)) or [part])]


def shard_files(pattern: str | Path) -> list[Path]:
    """The tar files of ``pattern``: braces expanded (``{000000..000099}``, ``{a,b}``), then globs.

    Raises:
        FileNotFoundError: a shard of the pattern does not exist (the first missing one is named).
    """
    files = [Path(name) for name in _expand(str(pattern))]
    missing = [f for f in files if not f.is_file()]
    if missing or not files:
        raise FileNotFoundError(f"{pattern}: no shard {missing[0] if missing else pattern} (a .tar file expected).")
    return files


def looks_like_shards(source: str | Path) -> bool:
    """Whether ``source`` names WebDataset shards: a ``.tar`` pattern or file, or a folder of ``train-*.tar``."""
    text = str(source)
    if text.endswith(".tar") and ("{" in text or "*" in text or Path(text).is_file()):
        return True
    return Path(text).is_dir() and any(Path(text).glob("train-*.tar"))


def _split_files(source: str, valid: str | None) -> tuple[list[Path], list[Path]]:
    folder = Path(source)
    if folder.is_dir():
        train = sorted(folder.glob("train-*.tar"))
        found = next((sorted(folder.glob(f"{p}-*.tar")) for p in VALID_PREFIXES if any(folder.glob(f"{p}-*.tar"))), [])
        if valid is None and not found:
            raise DataError(f"{folder}: train-*.tar but no valid-*.tar shards; add some or give --valid PATTERN.")
        return train, shard_files(valid) if valid is not None else found
    if valid is None:
        valid = _guess_valid(Path(source))
    return shard_files(source), shard_files(valid)


def _guess_valid(pattern: Path) -> str:
    """The validation shards beside a training pattern: its name with ``train`` replaced by ``valid``, else
    the files named so (``valid-*.tar``, ``val-*.tar``) in its folder."""
    if "train" in pattern.name:
        same = str(pattern).replace("train", "valid")
        if all(Path(f).is_file() for f in _expand(same)):
            return same
        stem = pattern.name.split("train")[0]
        for prefix in VALID_PREFIXES:
            if any(pattern.parent.glob(f"{stem}{prefix}*.tar")):
                return str(pattern.parent / f"{stem}{prefix}*.tar")
    raise DataError(f"{pattern}: no validation shards beside it; give --valid PATTERN (valid=).")


def _members(tar: tarfile.TarFile) -> Iterator[tuple[str, dict[str, tarfile.TarInfo]]]:
    """``(key, {extension: member})`` for each sample of an open shard, in order; the data is not read."""
    base_plus_ext = webdataset_module().tariterators.base_plus_ext
    key, group = None, {}
    for member in tar:
        if not member.isfile():
            continue
        prefix, suffix = base_plus_ext(member.name)
        if prefix is None or Path(member.name).name.startswith((".", "_")):
            continue
        if prefix != key and group:
            yield key, group  # type: ignore[misc]
            group = {}
        key = prefix
        group[suffix.lower()] = member
    if group:
        yield key, group  # type: ignore[misc]


def _value(tar: tarfile.TarFile, member: tarfile.TarInfo, ext: str) -> Any:
    raw = tar.extractfile(member).read()  # type: ignore[union-attr]
    if ext.endswith("json"):
        value = json.loads(raw)
        if isinstance(value, dict):
            value = next((value[k] for k in Y_NAMES if k in value), next(iter(value.values()), None))
        return value
    return raw.decode("utf-8", errors="replace").strip()


@dataclass
class Keys:
    """Which members of a sample are its input and its target(s)."""

    x: str | None  # None: the first image extension of each sample
    ys: list[str]
    kind: str  # "image" or "text"

    def input_of(self, group: dict[str, tarfile.TarInfo]) -> str | None:
        """The input member of one sample (its first image extension unless ``x`` names one)."""
        if self.x is not None:
            return self.x if self.x in group else None
        return next((k for k in IMAGE_KEYS if k in group), None)


def choose_keys(group: dict[str, Any], *, x_col: str | None, y_col: str | None, where: str) -> Keys:
    """The input and target members of ``group`` (one sample's extensions), as :func:`choose_columns` picks
    a table's columns.

    Raises:
        DataError: a named key that the sample lacks, or no input or target member.
    """
    names = sorted(group)
    for name in [x_col, *(y_col.split(",") if y_col else [])]:
        if name and name.strip().lower() not in group:
            raise DataError(f"{where}: the samples have no member .{name} (they hold {', '.join(names)}).")
    image = x_col.lower() if x_col else next((k for k in IMAGE_KEYS if k in group), None)
    text = x_col.lower() if x_col and x_col.lower() in TEXT_KEYS else None
    x = image if image is not None and text is None else next((k for k in TEXT_KEYS if k in group), None)
    if x is None:
        raise DataError(f"{where}: no input member (an image {'/'.join(IMAGE_KEYS[:4])} or txt) in {', '.join(names)}.")
    kind = "text" if x in TEXT_KEYS else "image"
    candidates = [*LABEL_KEYS, *(TEXT_KEYS if kind == "image" else ())]
    ys = [n.strip().lower() for n in y_col.split(",")] if y_col else [k for k in candidates if k in group][:1]
    if not ys:
        raise DataError(f"{where}: no target member (cls, label, json or txt) in {', '.join(names)}; pass --y-col.")
    return Keys(None if kind == "image" and not x_col else x, ys, kind)


@dataclass
class TarRecords:
    """The samples of some shards in an epoch's order (the shards shuffled from ``(seed, epoch)`` when
    ``shuffle``), decoded: a :class:`~torchgraft.data.streams.RecordSource`.

    Attributes:
        files, counts: the shards and their samples (bad ones left out).
        keys: the input and target members; ``task``, ``index``: how target cells become targets.
        skip: ``(shard number, sample number)`` of samples left out (bad rows).
    """

    files: list[Path]
    counts: list[int]
    keys: Keys
    task: str
    index: dict[str, int]
    shuffle: bool = False
    seed: int = 0
    indexed: bool = False  # the target member holds a class index (pack's .cls)
    skip: set[tuple[int, int]] = field(default_factory=set)

    @property
    def size(self) -> int:
        """Samples in one epoch."""
        return sum(self.counts)

    def order(self, epoch: int) -> list[int]:
        """The shards' order in ``epoch``."""
        if not self.shuffle:
            return list(range(len(self.files)))
        generator = torch.Generator().manual_seed((self.seed * 0x9E3779B97F4A7C15 + epoch) % 2**63)
        return torch.randperm(len(self.files), generator=generator).tolist()

    def target(self, cells: list[str]) -> Target | None:
        """The target of a sample's cells."""
        if self.indexed:
            return int(cells[0]) if cells[0].strip().isdigit() else None
        return code_target(self.task, cells, self.index)

    def records(self, epoch: int, wanted: Container[int], last: int) -> Iterator[tuple[int, tuple[Any, Target]]]:
        """``(position, (input, target))`` of the wanted positions of ``epoch``'s order."""
        start = 0
        for shard in self.order(epoch):
            if start > last:
                return
            if any(p in wanted for p in range(start, start + self.counts[shard])):
                yield from self._read(shard, start, wanted)
            start += self.counts[shard]

    def _read(self, shard: int, start: int, wanted: Container[int]) -> Iterator[tuple[int, tuple[Any, Target]]]:
        path, position = self.files[shard], start
        with tarfile.open(path) as tar:
            for number, (key, group) in enumerate(_members(tar)):
                if (shard, number) in self.skip:
                    continue
                if position in wanted:
                    yield position, self._decode(tar, key, group, path)
                position += 1

    def _decode(self, tar: tarfile.TarFile, key: str, group: dict[str, tarfile.TarInfo], path: Path) -> Any:
        cells = [c for y in self.keys.ys for c in target_cells(_value(tar, group[y], y))]
        target = self.target(cells)
        x = self.keys.input_of(group) if self.keys.kind == "image" else self.keys.x
        raw = tar.extractfile(group[x]).read() if x in group else None  # type: ignore[union-attr,index]
        if self.keys.kind == "text":
            return (raw or b"").decode("utf-8", errors="replace"), target
        return decoded(raw, name=f"{path}:{key}"), target


def _has_input(keys: Keys, group: dict[str, tarfile.TarInfo]) -> bool:
    return (keys.input_of(group) if keys.kind == "image" else keys.x) in group


def _scan(files: list[Path], keys: Keys) -> tuple[list[int], list[tuple[int, int, str, list[str] | None]]]:
    """Samples per shard and ``(shard, number, key, target cells)`` of every sample: target members read
    (``None`` for a sample missing its input or a target member)."""
    counts, rows = [], []
    for shard, path in enumerate(files):
        with tarfile.open(path) as tar:
            count = 0
            for count, (key, group) in enumerate(_members(tar), 1):
                whole = all(y in group for y in keys.ys) and _has_input(keys, group)
                cells = [c for y in keys.ys for c in target_cells(_value(tar, group[y], y))] if whole else None
                rows.append((shard, count - 1, f"{path}:{key}", cells))
            counts.append(count)
    return counts, rows


def _first_group(files: list[Path]) -> dict[str, Any]:
    for path in files:
        with tarfile.open(path) as tar:
            for _, group in _members(tar):
                return group
    raise DataError(f"{files[0]}: the shards hold no samples.")


def shard_kind(source: str | Path, *, x_col: str | None = None, y_col: str | None = None) -> str:
    """``"image"`` or ``"text"``: what the first training sample of the shards at ``source`` holds."""
    train, _ = _split_files(str(source), None) if Path(str(source)).is_dir() else (shard_files(source), [])
    meta = _meta(train)
    if meta is not None and not x_col:
        return str(meta["kind"])
    return choose_keys(_first_group(train), x_col=x_col, y_col=y_col, where=str(source)).kind


def _meta(files: list[Path]) -> dict[str, Any] | None:
    meta = files[0].parent / META_NAME
    return json.loads(meta.read_text()) if meta.is_file() else None


def _from_meta(meta: dict[str, Any], train: list[Path], valid: list[Path], settings: dict[str, Any]) -> StreamData:
    task, classes = meta["task"], list(meta["classes"])
    keys = Keys(None if meta["kind"] == "image" else meta["x"], [meta["y"]], meta["kind"])
    index = {name: i for i, name in enumerate(classes)}
    splits = []
    for files, name, shuffle in ((train, "train", True), (valid, "valid", False)):
        counts = [int(meta["splits"][name]["shards"][f.name]) for f in files]
        options = {"indexed": meta["y"] == "cls", "shuffle": shuffle, "seed": settings["seed"]}
        reader = TarRecords(files, counts, keys, task, index, **options)
        targets = [tuple(t) for t in meta["splits"][name].get("targets", [])]
        splits.append(Split(sum(counts), reader, targets))  # type: ignore[arg-type]
    left = [f"{bad['path']}: {bad['reason']}" for bad in meta.get("skipped", [])]  # by pack, listed when it ran
    data = StreamData(classes, splits[0], splits[1], meta["kind"], task, "recorded by pack", source=str(train[0]))
    data.warnings = [f"{len(left)} unreadable files were left out by pack (listed in {META_NAME})"] if left else []
    return data


def wds_data(
    source: str | Path,
    *,
    valid: str | None = None,
    task: str | None = None,
    x_col: str | None = None,
    y_col: str | None = None,
    seed: int = 0,
    skip_bad: bool = False,
) -> StreamData:
    """The train and validation shards of ``source`` (a pattern or a folder; ``valid``: the validation
    pattern, default ``valid-*.tar`` in the folder or the pattern with ``train`` replaced by ``valid``).

    Example:
        >>> data = wds_data("shards/train-{000000..000009}.tar")
        >>> print(data.summary())
        10 classes, 9000 train / 1000 valid images (streamed)

    Raises:
        DataError: no validation shards, bad target members (unless ``skip_bad``), no input member.
    """
    train, held = _split_files(str(source), valid)
    meta = _meta(train)
    if meta is not None and task in (None, meta["task"]) and not x_col and not y_col:
        names = set(meta["splits"]["train"]["shards"]) | set(meta["splits"]["valid"]["shards"])
        if all(f.name in names for f in train + held):
            return _from_meta(meta, train, held, {"seed": seed})
    keys = choose_keys(_first_group(train), x_col=x_col, y_col=y_col, where=str(source))
    (train_counts, train_rows), (valid_counts, valid_rows) = _scan(train, keys), _scan(held, keys)
    rows = train_rows + valid_rows
    cells = [r[3] if r[3] is not None else [""] * len(keys.ys) for r in rows]
    chosen, reason = (task, "given") if task else infer_task(cells)
    parsed = parse_targets(chosen, cells, list(range(len(rows))), keys.ys)  # type: ignore[arg-type]
    parsed.values = [None if r[3] is None else v for r, v in zip(rows, parsed.values, strict=True)]
    bad = [
        f"{name}: " + ("a member is missing" if c is None else f"target {c!r} unreadable")
        for (_, _, name, c), v in zip(rows, parsed.values, strict=True)
        if v is None
    ]
    check_bad_rows(Path(str(source)), bad, skip_bad)
    index = {name: i for i, name in enumerate(parsed.names)}
    splits = []
    for files, counts, part, values, shuffle in (
        (train, train_counts, train_rows, parsed.values[: len(train_rows)], True),
        (held, valid_counts, valid_rows, parsed.values[len(train_rows) :], False),
    ):
        skip = {(s, n) for (s, n, _, _), v in zip(part, values, strict=True) if v is None}
        kept = [c - sum(1 for s, _ in skip if s == i) for i, c in enumerate(counts)]
        reader = TarRecords(files, kept, keys, chosen, index, shuffle=shuffle, seed=seed, skip=skip)
        splits.append(Split(sum(kept), reader, [v for v in values if v is not None]))
    if not len(splits[0]) or not len(splits[1]):
        raise DataError(f"{source}: no {'training' if not len(splits[0]) else 'validation'} samples in the shards.")
    return StreamData(parsed.names, splits[0], splits[1], keys.kind, chosen, reason, source=str(source), bad_rows=bad)
