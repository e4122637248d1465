"""What a run needs besides the data: :class:`TrainSettings`, one frozen record passed once from the CLI (or
Python) to the recipe of the input (:mod:`torchgraft.app.inputs`), which fills the fields left ``None`` with
its own defaults."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torchgraft.choices import ADAPTER_EXPORTS, BATCHNORM_MODES, CHECKS, LOGGERS, STRATEGIES

if TYPE_CHECKING:  # the command line builds its parsers from these settings without importing torch
    from torchgraft.data.preprocess import Augment

__all__ = ["EXPORTED_EPOCHS", "TrainSettings"]

EXPORTED_EPOCHS = ("best", "last")  # which epoch a run exports: the best by the monitored metric, or the last


@dataclass(frozen=True)
class TrainSettings:
    """Everything a run needs besides the data; the defaults are ``torchgraft train``'s.

    ``lr``, ``lr_mult``, ``frozen_lr``, ``epochs``, ``freeze_epochs`` and ``gradual`` are those of
    :meth:`torchgraft.Learner.fine_tune`; ``model``, ``lr``, ``lr_mult`` and ``batch_size`` left ``None``
    take the defaults of the kind of input (each recipe's ``defaults``: :mod:`torchgraft.app.inputs`); ``size``
    overrides the input size of the weights' metadata; ``workers`` defaults to one per core, less one, for
    images, 0 for texts (tokenized up front). ``task`` (``classify``/``multilabel``/``regression``, or
    ``text`` to force text input) is inferred from the data when ``None``; ``x_col``/``y_col`` pick CSV
    columns by name; ``y_range`` bounds regression outputs (fastai's sigmoid range); ``threshold`` fixes
    the multi-label decision threshold (default: the best F1 on validation); ``max_length`` truncates texts
    (default: the model's maximum). ``lora`` (a rank) trains LoRA adapters (peft) instead of the body's
    weights (:func:`torchgraft.lora`); ``adapters`` says how the run exports them: ``"merge"`` (folded into
    the weights; the export needs no peft) or ``"separate"`` (``adapter_model.safetensors``, peft's format).
    ``decoder`` is the segmentation decoder (``task="segment"``): ``"unet"`` or ``"fpn"``; ``dice_weight`` adds
    that much soft Dice loss to a segmentation's cross-entropy. ``detector`` is the detection head grafted on
    a backbone (``task="detect"``; :func:`torchgraft.graft_detector`): ``"fcos"`` (when ``None``), ``"retinanet"``
    or ``"fasterrcnn"`` (a torchvision detector given as ``model`` is re-headed instead, and refuses it);
    ``threshold`` is then the score a detection needs to be predicted (default 0.5; never used by the mAP, which
    ranks every detection).
    ``keep_frozen`` layer groups stay frozen after the frozen epochs too (:meth:`torchgraft.Learner.fine_tune`;
    -1: every body group; segmentation: -1 by default). ``save_every`` writes a resumable checkpoint every that
    many optimizer steps inside epochs;
    ``batchnorm`` is the Learner's BatchNorm mode (``train``, ``eval``: statistics fixed, ``sync``: across GPUs);
    ``strategy`` how ``torchrun`` processes share the model (``ddp``: a copy each; ``fsdp``: FSDP2 shards).
    ``streaming`` reads a Hugging Face dataset as an ``IterableDataset``; ``valid_data`` is the validation
    shards' pattern of WebDataset training shards (:mod:`torchgraft.app.shards`).
    Under ``torchrun``, ``batch_size`` is per process: N processes train on batches of N x ``batch_size``.
    ``check_mode`` is how images are checked before training (``header``: opened and the header verified, fast;
    ``full``: decoded; ``none``); a file that fails to decode in training is replaced by another sample and
    reported, and more than ``max_bad`` of them (default: 0.1% of the files, at least 5) stop the run.
    ``manifest_dir`` is where the data's manifest (the files' check verdicts, reused by the next run) is kept
    (default ``$TORCHGRAFT_CACHE/manifests``, else ``~/.cache/torchgraft/manifests``; ``"none"``: no manifest).
    ``overwrite`` lets a run go into a RUN_DIR holding an earlier run, whose files are removed first
    (:mod:`torchgraft.app.rundir`; without it, or ``resume``, such a folder is refused). ``export`` is the epoch
    exported: ``"best"`` (default; by the monitored metric in the task's direction, ``checkpoints/best.pt``) or
    ``"last"``.
    ``balance`` weighs single-label classes in the loss by ``N / (classes x class count)`` (the samples drawn
    stay the same; :func:`torchgraft.tasks.balance.balanced_weights`); a run warns, with the counts, when a
    class has under a third of the median class's training samples. ``cache_dir`` is where the feature cache
    stores a frozen body's features (default
    ``$TORCHGRAFT_CACHE/features``, else ``~/.cache/torchgraft/features``). ``trust_pickle`` reads a
    ``weights`` checkpoint that needs code to unpickle (pickles can run any code: only files you trust).
    ``log`` names the tracking tools the run logs to (``tensorboard``: ``RUN_DIR/tensorboard``; ``mlflow``:
    ``MLFLOW_TRACKING_URI``, else a local store in ``RUN_DIR/mlruns``; :mod:`torchgraft.train.loggers`).
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
    check_mode: str = "header"
    max_bad: int | None = None
    manifest_dir: str | None = None
    amp: str | None = None
    resume: bool = False
    overwrite: bool = False
    export: str = "best"
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
    detector: str | None = None
    keep_frozen: int | None = None
    dice_weight: float | None = None
    save_every: int | None = None
    batchnorm: str = "train"
    strategy: str = "ddp"
    streaming: bool = False
    valid_data: str | None = None
    cache_dir: str | None = None
    trust_pickle: bool = False
    balance: bool = False
    log: tuple[str, ...] = ()

    def check(self) -> None:
        """Raise ``ValueError`` naming the first setting out of range."""
        if self.export not in EXPORTED_EPOCHS:
            raise ValueError(f"export must be one of {', '.join(EXPORTED_EPOCHS)}, got {self.export!r}.")
        if self.adapters not in ADAPTER_EXPORTS:
            raise ValueError(f"adapters must be one of {ADAPTER_EXPORTS}, got {self.adapters!r}.")
        if self.dice_weight is not None and self.dice_weight < 0:
            raise ValueError(f"dice must be >= 0, got {self.dice_weight}.")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}.")
        if self.check_mode not in CHECKS:
            raise ValueError(f"check must be one of {', '.join(CHECKS)}, got {self.check_mode!r}.")
        if self.max_bad is not None and self.max_bad < 0:
            raise ValueError(f"max-bad must be >= 0, got {self.max_bad}.")
        unknown = [name for name in self.log if name not in LOGGERS]
        if unknown or len(set(self.log)) != len(self.log):
            raise ValueError(f"log must name each of {', '.join(LOGGERS)} once at most, got {', '.join(self.log)}.")
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
