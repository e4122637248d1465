"""What a run needs besides the data (:class:`TrainSettings`, with defaults per kind of input), what it has
once prepared (:class:`Prepared`), and the pieces every kind of run shares: the task object, the report of
the data, the Learner."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch.utils.data import DataLoader, Dataset

from torchgraft.app.export import ADAPTER_EXPORTS, Preprocessor
from torchgraft.data.preprocess import Augment
from torchgraft.data.sampling import SeededSampler, SeededSamples
from torchgraft.tasks import Classification, Multilabel, Regression, Segmentation, Task
from torchgraft.train.distributed import local_device
from torchgraft.train.learner import BATCHNORM_MODES, STRATEGIES, Learner
from torchgraft.tune.lora import lora
from torchgraft.weights.hf import DEFAULT_TEXT_MODEL

__all__ = [
    "IMAGE_DEFAULTS",
    "TEXT_DEFAULTS",
    "LabelledData",
    "Prepared",
    "TrainSettings",
    "adapt",
    "dataset_loaders",
    "device_of",
    "make_learner",
    "make_task",
    "report",
]

# the recipe of each kind of input, where TrainSettings leaves a field None (measured: docs/benchmarks.md)
IMAGE_DEFAULTS: dict[str, Any] = {"model": "resnet50", "lr": 3e-3, "lr_mult": 1.0, "batch_size": 64}
TEXT_DEFAULTS: dict[str, Any] = {
    "model": DEFAULT_TEXT_MODEL,
    "lr": 1e-3,
    "lr_mult": 10.0,
    "frozen_lr": 3e-2,
    "batch_size": 16,
}


@dataclass(frozen=True)
class TrainSettings:
    """Everything a run needs besides the data; the defaults are ``torchgraft train``'s.

    ``lr``, ``lr_mult``, ``frozen_lr``, ``epochs``, ``freeze_epochs`` and ``gradual`` are those of
    :meth:`torchgraft.Learner.fine_tune`; ``model``, ``lr``, ``lr_mult`` and ``batch_size`` left ``None``
    take the defaults of the kind of input (:data:`IMAGE_DEFAULTS`, :data:`TEXT_DEFAULTS`); ``size``
    overrides the input size of the weights' metadata; ``workers`` defaults to the CPU count (at most 8) for
    images, 0 for texts (tokenized up front). ``task`` (``classify``/``multilabel``/``regression``, or
    ``text`` to force text input) is inferred from the data when ``None``; ``x_col``/``y_col`` pick CSV
    columns by name; ``y_range`` bounds regression outputs (fastai's sigmoid range); ``threshold`` fixes
    the multi-label decision threshold (default: the best F1 on validation); ``max_length`` truncates texts
    (default: the model's maximum). ``lora`` (a rank) trains LoRA adapters (peft) instead of the body's
    weights (:func:`torchgraft.lora`); ``adapters`` says how the run exports them: ``"merge"`` (folded into
    the weights; the export needs no peft) or ``"separate"`` (``adapter_model.safetensors``, peft's format).
    ``decoder`` is the segmentation decoder (``task="segment"``): ``"unet"`` or ``"fpn"``; ``dice_weight`` adds
    that much soft Dice loss to a segmentation's cross-entropy. ``keep_frozen`` layer groups stay frozen after
    the frozen epochs too (:meth:`torchgraft.Learner.fine_tune`; -1: every body group; segmentation: -1 by
    default). ``save_every`` writes a resumable checkpoint every that many optimizer steps inside epochs;
    ``batchnorm`` is the Learner's BatchNorm mode (``train``, ``eval``: statistics fixed, ``sync``: across GPUs);
    ``strategy`` how ``torchrun`` processes share the model (``ddp``: a copy each; ``fsdp``: FSDP2 shards).
    Under ``torchrun``, ``batch_size`` is per process: N processes train on batches of N x ``batch_size``.
    """

    model: str | None = None
    weights: str = "imagenet"
    epochs: int = 2
    freeze_epochs: int = 1
    lr: float | None = None
    lr_mult: float | None = None
    frozen_lr: float | None = None
    gradual: bool = False
    size: int | None = None
    batch_size: int | None = None
    head: str = "linear"
    augment: Augment = "standard"
    valid_pct: float = 0.2
    seed: int = 0
    skip_bad: bool = False
    amp: str | None = None
    resume: bool = False
    workers: int | None = None
    device: str | None = None
    task: str | None = None
    x_col: str | None = None
    y_col: str | None = None
    y_range: tuple[float, float] | None = None
    threshold: float | None = None
    max_length: int | None = None
    lora: int | None = None
    adapters: str = "merge"
    decoder: str = "unet"
    keep_frozen: int | None = None
    dice_weight: float | None = None
    save_every: int | None = None
    batchnorm: str = "train"
    strategy: str = "ddp"

    def check(self) -> None:
        """Raise ``ValueError`` naming the first setting out of range."""
        if self.adapters not in ADAPTER_EXPORTS:
            raise ValueError(f"adapters must be one of {ADAPTER_EXPORTS}, got {self.adapters!r}.")
        if self.dice_weight is not None and self.dice_weight < 0:
            raise ValueError(f"dice must be >= 0, got {self.dice_weight}.")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}.")
        if self.batchnorm not in BATCHNORM_MODES:
            raise ValueError(f"batchnorm must be one of {', '.join(BATCHNORM_MODES)}, got {self.batchnorm!r}.")
        for name in ("epochs", "batch_size", "max_length", "lora", "save_every"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name.replace('_', '-')} must be >= 1, got {value}.")
        if self.freeze_epochs < 0:
            raise ValueError(f"freeze-epochs must be >= 0, got {self.freeze_epochs}.")
        for name in ("lr", "frozen_lr"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name.replace('_', '-')} must be > 0, got {value}.")
        if self.lr_mult is not None and not self.lr_mult >= 1:
            raise ValueError(f"lr-mult must be >= 1 (first group's rate = lr / lr-mult), got {self.lr_mult}.")
        if self.size is not None and self.size < 16:
            raise ValueError(f"size must be >= 16 pixels, got {self.size}.")
        if self.y_range is not None and not self.y_range[1] > self.y_range[0]:
            raise ValueError(f"y-range must be LOW HIGH with HIGH > LOW, got {self.y_range}.")
        if self.threshold is not None and not 0 < self.threshold < 1:
            raise ValueError(f"threshold must lie in (0, 1), got {self.threshold}.")

    def with_defaults(self, defaults: dict[str, Any]) -> TrainSettings:
        """A copy with every ``None`` field named in ``defaults`` filled from it."""
        return dataclasses.replace(self, **{k: v for k, v in defaults.items() if getattr(self, k) is None})


class LabelledData(Protocol):
    """What a run reads from checked data of any kind (:class:`~torchgraft.data.folders.ImageData`,
    :class:`~torchgraft.data.texts.TextData`)."""

    classes: list[str]
    train: list[Any]
    valid: list[Any]
    task: str
    task_reason: str
    bad_rows: list[str]
    warnings: list[str]
    skipped: list[Any]

    @property
    def n_outputs(self) -> int: ...

    def summary(self) -> str: ...


@dataclass
class Prepared:
    """A run ready to train: checked data, preprocessing, the grafted model and its Learner.

    ``architecture`` is what ``model.json`` records to rebuild the network; ``save_assets(run_dir)``
    writes what else the export needs (a text model's tokenizer and config) and returns the files.
    """

    data: LabelledData
    preprocessing: Preprocessor
    model: torch.nn.Module
    origin: str
    learner: Learner
    settings: TrainSettings
    architecture: str
    save_assets: Callable[[Path], list[Path]] = field(default=lambda run_dir: [])


def make_task(data: LabelledData, settings: TrainSettings) -> Task:
    """The task object of a run: regression targets standardised on the training set (unless ``y_range``
    bounds the outputs in units), a given multi-label threshold kept."""
    if data.task == "regression":
        if settings.y_range is not None:
            return Regression()
        return Regression().fit_scale(torch.tensor([target for _, target in data.train], dtype=torch.float32))
    if data.task == "multilabel":
        return Multilabel(threshold=settings.threshold or 0.5)
    if data.task == "segment":
        return Segmentation(dice_weight=settings.dice_weight or 0.0)
    return Classification()


def report(data: LabelledData, settings: TrainSettings, say: Callable[[str], None]) -> None:
    """Print what the data checks found: the inferred task and why, counts, skipped rows, warnings."""
    if settings.task in (None, "text") and data.task_reason:
        say(f"task: {data.task} ({data.task_reason}; --task to choose)")
    say(f"data: {data.summary()}")
    for row in data.bad_rows:
        say(f"  skipped {row}")
    for bad in data.skipped:
        say(f"  skipped {bad}")
    for warning in data.warnings:
        say(f"  warning: {warning}")


def make_learner(
    model: torch.nn.Module,
    loaders: tuple[Any, Any],
    data: LabelledData,
    settings: TrainSettings,
    run_dir: str | Path,
    *,
    quiet: bool,
    cache_features: bool = False,
) -> Learner:
    """The run's Learner: the task of the data, checkpoints in ``run_dir/checkpoints``."""
    return Learner(
        model,
        *loaders,
        task=make_task(data, settings),
        device=device_of(settings),
        amp=settings.amp,
        checkpoint_dir=Path(run_dir) / "checkpoints",
        quiet=quiet,
        cache_features=cache_features,
        save_every=settings.save_every,
        batchnorm=settings.batchnorm,  # type: ignore[arg-type]
        strategy=settings.strategy,  # type: ignore[arg-type]
    )


def adapt(model: torch.nn.Module, settings: TrainSettings, say: Callable[[str], None]) -> torch.nn.Module:
    """``model`` with LoRA adapters of rank ``settings.lora`` on every body group, or ``model`` itself."""
    if settings.lora is None:
        return model
    adapted = lora(model, r=settings.lora)
    trainable = sum(p.numel() for p in adapted.parameters() if p.requires_grad)
    total = sum(p.numel() for p in adapted.parameters())
    layers = adapted._torchgraft_lora["layers"]  # type: ignore[index]
    say(f"LoRA: rank {settings.lora} on {layers} layers; {trainable:,} of {total:,} parameters train")
    return adapted


def dataset_loaders(
    train: Dataset, valid: Dataset, settings: TrainSettings, device: torch.device
) -> tuple[DataLoader, DataLoader]:
    """The training loader (shuffled from ``settings.seed``, ``batch_size``) and the validation loader (twice
    the batch) of an image run: ``workers`` processes (default: the CPU count, at most 8), kept between
    epochs, pinned memory on CUDA. The training samples are drawn by a
    :class:`~torchgraft.data.sampling.SeededSampler`, each augmented from a seed of its own, so a run under
    ``torchrun`` augments exactly as one process does, and a resumed run exactly as the uninterrupted one,
    whatever the number of workers."""
    workers = settings.workers if settings.workers is not None else min(8, os.cpu_count() or 1)
    options: dict[str, Any] = {"num_workers": workers, "pin_memory": device.type == "cuda"}
    if workers > 0:
        options["persistent_workers"] = True
    assert settings.batch_size is not None
    sampler = SeededSampler(len(train), seed=settings.seed)  # type: ignore[arg-type]
    return (
        DataLoader(SeededSamples(train), batch_size=settings.batch_size, sampler=sampler, **options),
        DataLoader(valid, batch_size=settings.batch_size * 2, **options),
    )


def device_of(settings: TrainSettings) -> torch.device:
    """``settings.device``, else under ``torchrun`` this rank's GPU (``cuda:LOCAL_RANK``), else CUDA when
    available, else the CPU."""
    return local_device(settings.device)
