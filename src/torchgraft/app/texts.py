"""Texts (a CSV / JSON-lines table or class folders of ``.txt`` files): checked and tokenized, a Hugging Face
encoder grafted with a pooling head, length-grouped padded batches, the feature cache for the frozen phase,
and the tokenizer and config saved beside the export so that prediction needs no download."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch.utils.data import DataLoader

from torchgraft.app.defaults import TEXT_DEFAULTS
from torchgraft.app.inputs import Built, InputRecipe, LabelledData, read_options
from torchgraft.app.settings import TrainSettings
from torchgraft.data.texts import TextData, looks_like_text, text_data
from torchgraft.data.tokens import LengthGroupedBatches, PadCollate, TextPreprocessing, TokenDataset
from torchgraft.grafting.surgery import graft
from torchgraft.tasks.pictures import ValidationInputs
from torchgraft.weights.hf import DEFAULT_TEXT_MODEL, hf_max_length, hf_text_model

__all__ = ["HF_FOLDER", "TextInput", "text_loaders"]

HF_FOLDER = "hf"  # inside RUN_DIR: the tokenizer and the encoder's config.json
_PRETRAINED = ("imagenet", "default", "pretrained")


def text_loaders(
    data: TextData, tokenizer: Any, prep: TextPreprocessing, *, batch_size: int, seed: int, workers: int = 0
) -> tuple[DataLoader, DataLoader]:
    """Training batches grouped by length and shuffled with ``seed``; validation batches sorted by length;
    each padded to its longest text."""
    loaders = []
    for samples, train in ((data.train, True), (data.valid, False)):
        encoded = prep.encode(tokenizer, [text for text, _ in samples])
        dataset = TokenDataset(encoded, [t for _, t in samples], task=data.task, n_labels=len(data.classes))
        size = batch_size if train else batch_size * 2
        batches = LengthGroupedBatches(
            dataset.lengths, size, shuffle=train, generator=torch.Generator().manual_seed(seed)
        )
        collate = PadCollate(tokenizer.pad_token_id or 0)
        loaders.append(DataLoader(dataset, batch_sampler=batches, collate_fn=collate, num_workers=workers))
    return loaders[0], loaders[1]


def _architecture(settings: TrainSettings) -> str:
    assert settings.model is not None
    return settings.model if settings.model.startswith(("hf/", "hf:")) else f"hf/{settings.model}"


def _pretrained(settings: TrainSettings) -> bool:
    """Whether to load pretrained weights (``none``: random initialisation); files are for image models."""
    if settings.weights.lower() == "none":
        return False
    if settings.weights.lower() not in _PRETRAINED:
        raise ValueError(
            f"--weights {settings.weights}: {_architecture(settings)} loads its own weights; give --weights "
            f"pretrained (default) or none, or point --model hf/<folder> at a folder saved with save_pretrained."
        )
    return True


class TextInput(InputRecipe):
    """Texts: ``task="text"``, an ``hf/`` model, :class:`TextData`, or data that looks like texts."""

    name: ClassVar[str] = "texts"
    defaults: ClassVar[dict[str, Any]] = TEXT_DEFAULTS
    cache_features: ClassVar[bool] = True

    def claims(self, data: Any, settings: TrainSettings) -> bool:
        """``task="text"``, :class:`TextData`, an ``hf/`` model, or (no model given, or an image model: refused
        by :meth:`check`) data that :func:`~torchgraft.data.texts.looks_like_text`."""
        if isinstance(data, TextData) or settings.task == "text":
            return True
        if settings.model is not None and settings.model.startswith(("hf/", "hf:")):
            return True
        return isinstance(data, str | Path) and looks_like_text(data, x_col=settings.x_col)

    def check(self, settings: TrainSettings) -> None:
        """An image model on texts is refused; so are weights files (an encoder loads its own)."""
        if settings.model is not None and not settings.model.startswith(("hf/", "hf:")) and settings.task != "text":
            raise ValueError(
                f"the data holds texts but --model {settings.model} is an image model; give a text model hf/NAME "
                f"or hf/FOLDER (or leave --model out for {DEFAULT_TEXT_MODEL})."
            )
        _pretrained(settings)

    def is_read(self, data: Any) -> bool:
        """Checked :class:`TextData`."""
        return isinstance(data, TextData)

    def read(self, data: str | Path, settings: TrainSettings, *, progress: bool) -> TextData:
        """:func:`~torchgraft.data.texts.text_data`."""
        return text_data(data, **read_options(settings))

    def build(self, data: LabelledData, settings: TrainSettings, say: Callable[[str], None]) -> Built:
        """The encoder and its tokenizer (offline), grafted with a mean-pooling head of ``data.n_outputs``."""
        architecture = _architecture(settings)
        encoder, tokenizer, origin = hf_text_model(architecture, pretrained=_pretrained(settings))
        say(f"weights: {origin}")
        prep = TextPreprocessing(HF_FOLDER, settings.max_length or hf_max_length(encoder, tokenizer))
        model = graft(encoder, data.n_outputs, head=settings.head, pool="mean", y_range=settings.y_range)
        config = encoder.config

        def save_assets(run_dir: Path) -> list[Path]:
            folder = run_dir / HF_FOLDER
            files = tokenizer.save_pretrained(str(folder))
            config.save_pretrained(str(folder))
            return sorted({Path(f) for f in files} | {folder / "config.json"})

        return Built(model, origin, architecture, prep, save_assets, tokenizer=tokenizer)

    def loaders(
        self, data: LabelledData, built: Built, settings: TrainSettings, device: torch.device
    ) -> tuple[Any, Any]:
        """Length-grouped padded batches, tokenized up front (``workers`` default 0)."""
        assert isinstance(data, TextData) and isinstance(built.preprocessing, TextPreprocessing)
        assert settings.batch_size is not None
        return text_loaders(
            data,
            built.tokenizer,
            built.preprocessing,
            batch_size=settings.batch_size,
            seed=settings.seed,
            workers=settings.workers or 0,
        )

    def examples(self, data: LabelledData, count: int = 4) -> list[str]:
        """A few validation texts (each cut to 5,000 characters)."""
        return [text[:5000] for text, _ in data.valid[:count]]

    def validation_inputs(self, data: LabelledData) -> ValidationInputs:
        """The validation texts."""
        return ValidationInputs("text", [text for text, _ in data.valid])
