"""Sharded and streamed inputs: WebDataset tar shards and Hugging Face ``datasets`` (a ``save_to_disk`` folder,
Parquet / Arrow files; map-style or ``--streaming``), of images or texts, with any target kind.

The network, its preprocessing and the export are those of the image or text recipe of the same kind of
input (:class:`~torchgraft.app.images.ImageInput`, :class:`~torchgraft.app.texts.TextInput`); only reading
differs. A map-style dataset trains as a folder does (seeded sampling: exact under ``torchrun`` and on
resume); a map-style text dataset becomes :class:`~torchgraft.data.texts.TextData` (length-grouped batches,
the feature cache). Streams (shards, ``--streaming``) are read by :class:`~torchgraft.data.streams.SampleStream`
— every rank reads its own samples, exact against one process on the combined batch, resumed mid-epoch
without decoding the batches already trained; a Hugging Face stream is read in the training process (its
``IterableDataset`` splits itself between loader workers otherwise).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch.utils.data import DataLoader, Dataset

from torchgraft.app.images import ImageInput
from torchgraft.app.inputs import Built, InputRecipe, LabelledData, dataset_loaders, default_workers, target_layout
from torchgraft.app.settings import TrainSettings
from torchgraft.app.texts import TextInput
from torchgraft.data.badfiles import BadFiles
from torchgraft.data.hfdata import HFStream, hf_data, looks_like_hf, probe_kind
from torchgraft.data.images import BadImage
from torchgraft.data.preprocess import PixelCollate, Preprocessing
from torchgraft.data.samples import DataError
from torchgraft.data.streams import SampleStream, StreamData, as_target
from torchgraft.data.texts import TextData
from torchgraft.data.tokens import PadCollate
from torchgraft.data.wds import looks_like_shards, shard_kind, wds_data
from torchgraft.tasks.pictures import ValidationInputs

__all__ = ["PreparedRows", "ShardInput"]

_IMAGES, _TEXTS = ImageInput(), TextInput()


class PreparedRows(Dataset):
    """``prepare(input, target)`` of each ``(input, target)`` of ``rows`` (a map-style split). A row whose image
    fails to decode is recorded in ``bad_files`` and replaced by the next row that decodes (wrapping around),
    as :class:`~torchgraft.data.folders.ImageDataset` replaces a file."""

    def __init__(self, rows: Any, prepare: Callable[[Any, Any], Any], *, bad_files: BadFiles | None = None) -> None:
        self.rows, self.prepare = rows, prepare
        self.bad_files = bad_files if bad_files is not None else BadFiles()

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> Any:
        size = len(self.rows)
        for step in range(size):
            try:
                row = self.rows[(index + step) % size]
            except BadImage as error:
                self.bad_files.record(error)
                continue
            return self.prepare(*row)
        raise DataError(f"{size} rows: not one image decodes ({self.bad_files.summary()}).")

    def bad_samples(self) -> list[BadImage]:
        """The rows whose image failed to decode so far (in every worker process), each once, in the order met."""
        return self.bad_files.read()


def _kind_of(data: Any, settings: TrainSettings) -> str:
    """``"image"`` or ``"text"``: what ``data`` holds (the first sample's input, or the column's type)."""
    if isinstance(data, TextData) or settings.task == "text":
        return "text"
    if isinstance(data, StreamData):
        return data.kind
    if looks_like_shards(data):
        return shard_kind(data, x_col=settings.x_col, y_col=settings.y_col)
    return probe_kind(data, x_col=settings.x_col)


def _as_text_data(data: StreamData) -> TextData:
    """A map-style text dataset's texts in memory, read as a table's are."""
    train, valid = ([(text, target) for text, target in split.reader] for split in (data.train, data.valid))
    return TextData(
        data.classes, train, valid, data.task, data.task_reason, data.bad_rows, data.warnings, split_off=data.split_off
    )


class ShardInput(InputRecipe):
    """WebDataset shards (a ``.tar`` pattern or a folder of ``train-*.tar`` + ``valid-*.tar``) and Hugging Face
    datasets; images or texts, the defaults of the image or text recipe."""

    name: ClassVar[str] = "shards"

    def __init__(self) -> None:
        self.kind = "image"  # of the data last claimed (the defaults are read right after the probe)
        self.streamed = False

    @property
    def defaults(self) -> dict[str, Any]:  # type: ignore[override]
        """The image or the text recipe's defaults, as the data claimed last holds."""
        return dict((_TEXTS if self.kind == "text" else _IMAGES).defaults)

    @property
    def cache_features(self) -> bool:  # type: ignore[override]
        """A map-style text dataset caches its frozen body's features as the text recipe does."""
        return self.kind == "text" and not self.streamed

    def claims(self, data: Any, settings: TrainSettings) -> bool:
        """Read :class:`StreamData`, shards, or a Hugging Face dataset folder / Parquet or Arrow files."""
        claimed = isinstance(data, StreamData) or (
            isinstance(data, str | Path) and (looks_like_shards(data) or looks_like_hf(data))
        )
        if claimed:
            self.kind = _kind_of(data, settings)
            from_path = looks_like_shards(data) or settings.streaming if not isinstance(data, StreamData) else False
            self.streamed = data.streamed if isinstance(data, StreamData) else from_path
        return claimed

    def check(self, settings: TrainSettings) -> None:
        """The checks of the image or the text recipe."""
        (_TEXTS if self.kind == "text" else _IMAGES).check(settings)

    def is_read(self, data: Any) -> bool:
        """Read :class:`StreamData`, or the :class:`TextData` a map-style text dataset became."""
        return isinstance(data, StreamData | TextData)

    def read(self, data: str | Path, settings: TrainSettings, *, progress: bool) -> LabelledData:
        """:func:`~torchgraft.data.wds.wds_data` or :func:`~torchgraft.data.hfdata.hf_data`; map-style texts
        as :class:`TextData`."""
        options = {"task": target_layout(settings), "x_col": settings.x_col, "y_col": settings.y_col}
        options.update(seed=settings.seed, skip_bad=settings.skip_bad)
        if looks_like_shards(data):
            read = wds_data(data, valid=settings.valid_data, **options)
        else:
            read = hf_data(data, streaming=settings.streaming, valid_pct=settings.valid_pct, **options)
        if settings.task == "text" and read.kind != "text":
            raise ValueError(f"--task text: {data} holds images; leave --task text out.")
        return _as_text_data(read) if read.kind == "text" and not read.streamed else read

    def build(self, data: LabelledData, settings: TrainSettings, say: Callable[[str], None]) -> Built:
        """The image or the text recipe's network, for ``data.n_outputs``."""
        return (_TEXTS if self.kind == "text" else _IMAGES).build(data, settings, say)

    def loaders(
        self, data: LabelledData, built: Built, settings: TrainSettings, device: torch.device
    ) -> tuple[Any, Any]:
        """Map-style: as the image (or text) recipe's; streams: :class:`SampleStream` loaders."""
        if isinstance(data, TextData):
            return _TEXTS.loaders(data, built, settings, device)
        assert isinstance(data, StreamData) and settings.batch_size is not None
        prepares, collate = self._prepares(data, built, settings)
        if not data.streamed:
            train, valid = (PreparedRows(s.reader, p) for s, p in zip((data.train, data.valid), prepares, strict=True))
            return dataset_loaders(train, valid, settings, device, collate_fn=collate)
        workers = settings.workers if settings.workers is not None else default_workers()
        if isinstance(data.train.reader, HFStream) or data.kind == "text":
            workers = 0  # a Hugging Face stream splits itself between workers; texts tokenize fast
        loaders = []
        for split, prepare, pad, size in ((data.train, prepares[0], True, 1), (data.valid, prepares[1], False, 2)):
            stream = SampleStream(
                split.reader, prepare, collate, batch_size=settings.batch_size * size, seed=settings.seed, pad=pad
            )
            loaders.append(DataLoader(stream, batch_size=None, num_workers=workers, pin_memory=device.type == "cuda"))
        return loaders[0], loaders[1]

    def _prepares(self, data: StreamData, built: Built, settings: TrainSettings) -> tuple[list[Any], Any]:
        """What each split does to a sample (augment or not; tokenize), and the collate function."""
        task, count = data.task, len(data.classes)
        if data.kind == "text":
            tokenizer, prep = built.tokenizer, built.preprocessing

            def tokenize(text: str, target: Any) -> dict[str, Any]:
                encoded = prep.encode(tokenizer, [text])  # type: ignore[union-attr]
                return {**{k: v[0] for k, v in encoded.items()}, "labels": as_target(target, task, count)}

            return [tokenize, tokenize], PadCollate(tokenizer.pad_token_id or 0)
        prep = built.preprocessing
        assert isinstance(prep, Preprocessing)
        train = prep.train_transform(augment=settings.augment, normalize=False)
        transforms = [train, prep.eval_transform(normalize=False)]
        prepares = [_ImageItem(t, task, count) for t in transforms]
        return prepares, PixelCollate(prep)  # uint8 crops, normalised where they train (as the image recipe's)

    def validation_inputs(self, data: LabelledData) -> ValidationInputs | None:
        """A map-style text dataset's texts (as the text recipe); shards and image datasets: none kept at hand."""
        return _TEXTS.validation_inputs(data) if isinstance(data, TextData) else None

    def examples(self, data: LabelledData, count: int = 4) -> list[str]:
        """A few validation image files (when the dataset names them) or texts."""
        if isinstance(data, TextData):
            return _TEXTS.examples(data, count)
        return list(data.valid.examples[:count])  # type: ignore[attr-defined]


class _ImageItem:
    """``(transform(image), target tensor)``: picklable for loader workers."""

    def __init__(self, transform: Callable[[Any], Any], task: str, count: int) -> None:
        self.transform, self.task, self.count = transform, task, count

    def __call__(self, image: Any, target: Any) -> tuple[Any, Any]:
        return self.transform(image), as_target(target, self.task, self.count)
