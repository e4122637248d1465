"""Streamed training data with a declared length (WebDataset shards, a Hugging Face ``IterableDataset``), read
the same way by any number of processes and loader workers.

A source lays an epoch's samples out in one order (its shards shuffled from ``(seed, epoch)``) and reads only
the positions asked of it. :class:`SampleStream` deals position ``g`` of that order out as
:class:`~torchgraft.data.sampling.SeededSampler` deals index ``g``: rank ``r`` of ``w`` takes ``r, r + w, ...``
(padded with the first positions so that every rank steps as often), and within a rank its loader workers take
whole batches in turn. Every sample is augmented from a seed of its own, drawn from ``(seed, epoch,
position)``. So ``N`` processes at batch ``B`` train exactly as one process at batch ``N·B``, a resumed epoch
skips the batches already trained without decoding them (:meth:`SampleStream.skip_batches`), and the number of
workers changes nothing. Each rank reads the headers of every shard but the data of its own samples only.

An image that fails to decode never stops the run: the source hands over the :class:`BadImage` instead of the
pixels (:func:`decoded`), the stream records it (:class:`~torchgraft.data.badfiles.BadFiles`, shared by every
worker; :meth:`SampleStream.bad_samples`) and fills its place with the next good sample of the same batch, so
the batch keeps its size and a resumed epoch, which starts at a batch, replaces exactly as an uninterrupted one.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Container, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info
from torchvision.transforms.v2.functional import pil_to_tensor

from torchgraft.data.badfiles import BadFiles
from torchgraft.data.decode import decode_bytes, decode_rgb
from torchgraft.data.images import BadImage, to_rgb
from torchgraft.data.samples import DataError, Target
from torchgraft.data.sampling import seeded
from torchgraft.data.tables import parse_targets

__all__ = [
    "RecordSource",
    "SampleStream",
    "Split",
    "StreamData",
    "as_target",
    "code_target",
    "decoded",
    "image_of",
    "target_cells",
]

_MIX = 0x9E3779B97F4A7C15
Prepare = Callable[[Any, Any], Any]  # (decoded input, target) -> the item a batch collates


class RecordSource(Protocol):
    """Samples of a sharded or streamed split in the order of an epoch."""

    size: int  # samples in one epoch

    def records(self, epoch: int, wanted: Container[int], last: int) -> Iterator[tuple[int, tuple[Any, Target]]]:
        """``(position, (input, target))`` for the positions of epoch ``epoch``'s order in ``wanted``, in
        order, reading nothing after position ``last``; the input is decoded (an RGB image, a text)."""
        ...


def image_of(value: Any, *, name: str = "image") -> torch.Tensor:
    """An RGB image as a uint8 ``(3, H, W)`` tensor (what the v2 pipelines take) from what a dataset holds: a
    PIL image, encoded bytes, ``{"bytes": ..., "path": ...}`` (Hugging Face's undecoded ``Image`` feature) or a
    file path; decoded by torchvision where it can, else by PIL, as image files are
    (:func:`~torchgraft.data.decode.decode_rgb`, :func:`~torchgraft.data.decode.decode_bytes`).

    Raises:
        BadImage: the bytes or file cannot be decoded (``name`` says which sample).
    """
    if isinstance(value, Image.Image):
        return pil_to_tensor(to_rgb(value))
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if isinstance(value, bytes | bytearray):
        return decode_bytes(bytes(value), name=name)
    if isinstance(value, str):
        return decode_rgb(value)
    raise BadImage(name, f"holds a {type(value).__name__}, not an image (bytes, a path or a PIL image)")


def decoded(value: Any, *, name: str = "image") -> torch.Tensor | BadImage:
    """:func:`image_of` ``value``, or the :class:`BadImage` saying why it cannot be decoded (returned, not
    raised: a source's record generator hands it to :class:`SampleStream`, which replaces the sample)."""
    try:
        return image_of(value, name=name)
    except BadImage as error:
        return error


def target_cells(value: Any) -> list[str]:
    """A target value as table cells (what :func:`~torchgraft.data.tables.parse_targets` reads): a list of
    numbers is one cell per value (regression columns), any other list one cell of labels joined with ``;``."""
    if isinstance(value, list | tuple):
        if value and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
            return [str(v) for v in value]
        return [";".join(str(v) for v in value)]
    return ["" if value is None else str(value)]


def code_target(task: str, cells: list[str], index: dict[str, int]) -> Target | None:
    """The target of one sample's ``cells`` for ``task``, with label names numbered by ``index`` (parsed as a
    table row is); ``None`` for a bad or unknown label."""
    parsed = parse_targets(task, [cells], [0], [str(i) for i in range(len(cells))])  # type: ignore[arg-type]
    value = parsed.values[0]
    if value is None or task == "regression":
        return value
    if isinstance(value, int):
        return index.get(parsed.names[value])
    names = [parsed.names[i] for i in value]
    return tuple(sorted(index[n] for n in names)) if all(n in index for n in names) else None


def as_target(value: Any, task: str, n_labels: int) -> Any:
    """A target as the task trains on it: a class index, a multi-hot float vector over ``n_labels`` (from a
    tuple of label indices), or a float vector (regression)."""
    if task == "multilabel":
        hot = torch.zeros(n_labels)
        hot[list(value)] = 1.0
        return hot
    if task == "regression":
        return torch.tensor(value, dtype=torch.float32)
    return value


@dataclass
class Split:
    """One split of a sharded or streamed dataset: its length, the targets when they are known without reading
    the inputs (iterating gives ``(None, target)``: what fits a regression's scale), and its reader (a
    :class:`RecordSource`, or a map-style sequence of ``(input, target)``)."""

    length: int
    reader: Any
    targets: list[Target] = field(default_factory=list)
    examples: list[str] = field(default_factory=list)  # a few input files or texts an export checks on

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[tuple[None, Target]]:
        return ((None, target) for target in self.targets)


@dataclass
class StreamData:
    """Train and validation splits of a dataset read from shards or a Hugging Face dataset.

    Attributes:
        classes: class names (single- and multi-label) or target names (regression).
        train, valid: the :class:`Split` of each.
        kind: ``"image"`` or ``"text"`` inputs.
        streamed: whether the splits are read as streams (:class:`SampleStream`) rather than by index.
        split_off: the share of the training split split off at random for validation (``None``: the dataset
            brought its validation split).
    """

    classes: list[str]
    train: Split
    valid: Split
    kind: str = "image"
    task: str = "classify"
    task_reason: str = ""
    streamed: bool = True
    source: str = ""
    bad_rows: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    skipped: list[Any] = field(default_factory=list)
    split_off: float | None = None

    @property
    def n_outputs(self) -> int:
        """Outputs the model needs: one per class, label or target."""
        return len(self.classes)

    def summary(self) -> str:
        """One line: the task, counts of classes (or targets) and samples, how they are read."""
        what = f"{len(self.classes)} {'targets' if self.task == 'regression' else 'classes'}"
        task = "" if self.task == "classify" else f"{self.task}: "
        how = "streamed" if self.streamed else "by index"
        bad = f", {len(self.bad_rows)} bad rows skipped" if self.bad_rows else ""
        return f"{task}{what}, {len(self.train)} train / {len(self.valid)} valid {self.kind}s ({how}){bad}"


def _sample_seed(seed: int, epoch: int, position: int) -> int:
    return ((seed * _MIX + epoch) * _MIX + position) % 2**62


class SampleStream(IterableDataset):
    """Batches of one rank of a :class:`RecordSource` (see the module's docstring); use it in a ``DataLoader``
    with ``batch_size=None``. ``len()`` is this rank's number of batches.

    Args:
        source: the samples.
        prepare: ``prepare(input, target)``, run under the sample's seed: the item a batch collates.
        collate: items to a batch.
        batch_size: samples per batch (the last batch of an epoch may be smaller).
        seed: the run's seed (sample seeds are drawn from it).
        pad: pad this rank's share with the first positions so that every rank has as many (training); else
            every sample is read once over all ranks (validation).
        rank, world: this process's share (set by :meth:`shard`).
        bad_files: where images that fail to decode are recorded (default: a new temporary log).
    """

    def __init__(
        self,
        source: RecordSource,
        prepare: Prepare,
        collate: Callable[[list[Any]], Any],
        *,
        batch_size: int,
        seed: int = 0,
        pad: bool = True,
        rank: int = 0,
        world: int = 1,
        bad_files: BadFiles | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"SampleStream: batch_size must be >= 1, got {batch_size}.")
        self.source, self.prepare, self.collate, self.batch_size = source, prepare, collate, batch_size
        self.seed, self.pad, self.rank, self.world = seed, pad, rank, world
        self.epoch, self.start = 0, 0
        self.bad_files = bad_files if bad_files is not None else BadFiles()

    @property
    def sample_count(self) -> int:
        """Samples in one epoch of the whole set (every rank's)."""
        return self.source.size

    def bad_samples(self) -> list[BadImage]:
        """The images that failed to decode so far (in any worker of this process), each once, in the order met."""
        return self.bad_files.read()

    def set_epoch(self, epoch: int) -> None:
        """Read epoch ``epoch``'s order (and sample seeds) next time."""
        self.epoch = epoch

    def shard(self, rank: int, world: int) -> SampleStream:
        """The same stream for rank ``rank`` of ``world`` processes."""
        if self.source.size < world:
            raise ValueError(
                f"distributed: the set has {self.source.size} samples for {world} processes; run fewer processes."
            )
        shard = copy.copy(self)
        shard.rank, shard.world, shard.start = rank, world, 0
        return shard

    def skip_batches(self, batches: int) -> None:
        """Start the next iteration after this rank's first ``batches`` (a resumed epoch); 0 to reset."""
        self.start = batches

    def positions(self) -> list[int]:
        """This rank's positions of the epoch's order, in the order it trains on them."""
        size = self.source.size
        count = -(-size // self.world) if self.pad else len(range(self.rank, size, self.world))
        return [(self.rank + j * self.world) % size for j in range(count)]

    def __len__(self) -> int:
        return -(-len(self.positions()) // self.batch_size)

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        workers, me = (info.num_workers, info.id) if info is not None else (1, 0)
        positions, size = self.positions(), self.batch_size
        # worker k takes the k-th, (k + workers)-th, ... batch from the start: the loader, which takes from its
        # workers in turn beginning with worker 0, yields them in order (a resumed epoch too)
        mine = [b for b in range(self.start, -(-len(positions) // size)) if (b - self.start) % workers == me]
        return self._batches(positions, mine, restore=info is None)

    def _batches(self, positions: list[int], batches: Sequence[int], *, restore: bool) -> Iterator[Any]:
        size, slots = self.batch_size, {}  # slots: position -> the places j it fills (twice when padded)
        for b in batches:
            for j in range(b * size, min((b + 1) * size, len(positions))):
                slots.setdefault(positions[j], []).append(j)
        if not slots:
            return
        filled: dict[int, Any] = {}
        pending = list(batches)
        for position, (value, target) in self.source.records(self.epoch, slots, max(slots)):
            if isinstance(value, BadImage):
                self.bad_files.record(value)
                item: Any = value
            else:
                with seeded(_sample_seed(self.seed, self.epoch, position), restore=restore):
                    item = self.prepare(value, target)
            for j in slots[position]:
                filled[j] = item
            while pending and all(j in filled for j in range(pending[0] * size, self._end(pending[0], positions))):
                b = pending.pop(0)
                yield self.collate(self._replaced([filled.pop(j) for j in range(b * size, self._end(b, positions))]))
        if pending:
            raise RuntimeError(f"SampleStream: the source ended before batch {pending[0]} was read (is it shorter?).")

    def _replaced(self, items: list[Any]) -> list[Any]:
        """The batch's items with each undecodable one replaced by the next good item of the batch (wrapping)."""
        good = [k for k, item in enumerate(items) if not isinstance(item, BadImage)]
        kept = set(good)
        if len(good) == len(items):
            return items
        if not good:
            raise DataError(
                f"a batch of {len(items)} samples holds not one image that decodes ({self.bad_files.summary()}); "
                "check the shards (torchgraft pack checks every image it writes)."
            )
        return [items[k] if k in kept else items[next((g for g in good if g > k), good[0])] for k in range(len(items))]

    def _end(self, batch: int, positions: list[int]) -> int:
        return min((batch + 1) * self.batch_size, len(positions))
