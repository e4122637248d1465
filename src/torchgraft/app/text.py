"""The text side of a run: texts checked and tokenized, a Hugging Face encoder grafted with a pooling head,
length-grouped padded batches, the feature cache for the frozen phase, and the tokenizer and config saved
beside the export so that prediction needs no download."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from torchgraft.app.settings import TEXT_DEFAULTS, Prepared, TrainSettings, adapt, make_learner, report
from torchgraft.data.texts import TextData, looks_like_text, text_data
from torchgraft.data.tokens import LengthGroupedBatches, PadCollate, TextPreprocessing, TokenDataset
from torchgraft.grafting.surgery import graft
from torchgraft.train.distributed import on_main
from torchgraft.weights.hf import hf_max_length, hf_text_model

__all__ = ["HF_FOLDER", "is_text_run", "prepare_text_run", "text_loaders"]

HF_FOLDER = "hf"  # inside RUN_DIR: the tokenizer and the encoder's config.json
_PRETRAINED = ("imagenet", "default", "pretrained")


def is_text_run(data: Any, settings: TrainSettings) -> bool:
    """Whether a run is on texts: ``task="text"``, a ``hf/`` model, :class:`TextData`, or data that looks
    like texts (:func:`~torchgraft.data.texts.looks_like_text`)."""
    if isinstance(data, TextData) or settings.task == "text":
        return True
    if settings.model is not None:
        return settings.model.startswith(("hf/", "hf:"))
    return isinstance(data, str | Path) and looks_like_text(data, x_col=settings.x_col)


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


def _check_weights(weights: str, model: str) -> bool:
    """Whether to load pretrained weights (``none``: random initialisation); files are for image models."""
    if weights.lower() == "none":
        return False
    if weights.lower() not in _PRETRAINED:
        raise ValueError(
            f"--weights {weights}: {model} loads its own weights; give --weights pretrained (default) or none, or "
            f"point --model hf/<folder> at a folder saved with save_pretrained."
        )
    return True


def prepare_text_run(
    data: str | Path | TextData,
    run_dir: str | Path,
    settings: TrainSettings,
    *,
    say: Callable[[str], None] = print,
    quiet: bool = False,
) -> Prepared:
    """Check the texts, load the encoder and its tokenizer, graft a pooling head and make the Learner
    (feature cache on for the frozen phase)."""
    settings = settings.with_defaults(TEXT_DEFAULTS)
    settings.check()
    assert settings.model is not None and settings.batch_size is not None
    architecture = settings.model if settings.model.startswith(("hf/", "hf:")) else f"hf/{settings.model}"
    pretrained = _check_weights(settings.weights, architecture)
    torch.manual_seed(settings.seed)
    if not isinstance(data, TextData):
        task = None if settings.task == "text" else settings.task
        data = on_main(  # under torchrun: read and checked once, by rank 0
            text_data,
            data,
            task=task,
            x_col=settings.x_col,
            y_col=settings.y_col,
            valid_pct=settings.valid_pct,
            seed=settings.seed,
            skip_bad=settings.skip_bad,
        )
    report(data, settings, say)
    encoder, tokenizer, origin = hf_text_model(architecture, pretrained=pretrained)
    say(f"weights: {origin}")
    prep = TextPreprocessing(HF_FOLDER, settings.max_length or hf_max_length(encoder, tokenizer))
    config = encoder.config
    model = graft(encoder, data.n_outputs, head=settings.head, pool="mean", y_range=settings.y_range)
    model = adapt(model, settings, say)
    loaders = text_loaders(
        data, tokenizer, prep, batch_size=settings.batch_size, seed=settings.seed, workers=settings.workers or 0
    )
    learner = make_learner(model, loaders, data, settings, run_dir, quiet=quiet, cache_features=True)

    def save_assets(run_dir: Path) -> list[Path]:
        folder = run_dir / HF_FOLDER
        files = tokenizer.save_pretrained(str(folder))
        config.save_pretrained(str(folder))
        return sorted({Path(f) for f in files} | {folder / "config.json"})

    return Prepared(data, prep, model, origin, learner, settings, architecture, save_assets)
