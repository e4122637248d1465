"""One fine-tuning run from a folder (or CSV) of images — single-label, multi-label or regression — to a
RUN_DIR: the pipeline behind ``torchgraft train`` and ``torchgraft demo``, usable from Python too.

Read top to bottom: check the data, build the pretrained network and its preprocessing, graft a head, print
the plan, fine-tune, then write the RUN_DIR:

    RUN_DIR/model.safetensors, model.json   the exported model (see torchgraft.export)
    RUN_DIR/history.csv, history.json       one row per epoch
    RUN_DIR/plan.txt                        the graft and layer-group plan
    RUN_DIR/loss.png, lr.png, confusion.png plots (with matplotlib installed; the confusion matrix for
                                            single-label classification)
    RUN_DIR/checkpoints/last.pt, best.pt    resumable training state
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from torchgraft.app.export import export_model
from torchgraft.data.folders import ImageData, image_data
from torchgraft.data.preprocess import Augment, Preprocessing, preprocessing_for
from torchgraft.grafting.surgery import graft
from torchgraft.tasks import Classification, Multilabel, Regression, Task, best_threshold
from torchgraft.train.learner import Learner
from torchgraft.tune.describe import describe
from torchgraft.weights.pretrained import pretrained_model, weights_file

__all__ = ["Prepared", "RunResult", "TrainSettings", "prepare_run", "train_run", "validation_outputs"]


@dataclass(frozen=True)
class TrainSettings:
    """Everything a run needs besides the data; the defaults are ``torchgraft train``'s.

    ``lr``, ``epochs`` and ``freeze_epochs`` are those of :meth:`torchgraft.Learner.fine_tune`; ``size``
    overrides the input size of the weights' metadata; ``workers`` defaults to the CPU count (at most 8).
    ``task`` (``classify``/``multilabel``/``regression``) is inferred from the data when ``None``;
    ``x_col``/``y_col`` pick CSV columns by name; ``y_range`` bounds regression outputs (fastai's sigmoid
    range); ``threshold`` fixes the multi-label decision threshold (default: the best F1 on validation).
    """

    model: str = "resnet50"
    weights: str = "imagenet"
    epochs: int = 2
    freeze_epochs: int = 1
    lr: float = 3e-3
    size: int | None = None
    batch_size: int = 64
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

    def check(self) -> None:
        """Raise ``ValueError`` naming the first setting out of range."""
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}.")
        if self.freeze_epochs < 0:
            raise ValueError(f"freeze-epochs must be >= 0, got {self.freeze_epochs}.")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}.")
        if self.size is not None and self.size < 16:
            raise ValueError(f"size must be >= 16 pixels, got {self.size}.")
        if self.y_range is not None and not self.y_range[1] > self.y_range[0]:
            raise ValueError(f"y-range must be LOW HIGH with HIGH > LOW, got {self.y_range}.")
        if self.threshold is not None and not 0 < self.threshold < 1:
            raise ValueError(f"threshold must lie in (0, 1), got {self.threshold}.")


@dataclass
class RunResult:
    """What a run produced."""

    run_dir: Path
    classes: list[str]
    history: list[dict[str, Any]]
    learner: Learner
    preprocessing: Preprocessing
    files: list[Path] = field(default_factory=list)
    final: dict[str, Any] = field(default_factory=dict)  # the last epoch's metrics, and the chosen threshold


def _loaders(data: ImageData, prep: Preprocessing, settings: TrainSettings, device: torch.device) -> tuple[Any, Any]:
    train, valid = data.datasets(prep.train_transform(augment=settings.augment), prep.eval_transform())
    workers = settings.workers if settings.workers is not None else min(8, os.cpu_count() or 1)
    options: dict[str, Any] = {"num_workers": workers, "pin_memory": device.type == "cuda"}
    if workers > 0:
        options["persistent_workers"] = True
    generator = torch.Generator().manual_seed(settings.seed)
    return (
        DataLoader(train, batch_size=settings.batch_size, shuffle=True, generator=generator, **options),
        DataLoader(valid, batch_size=settings.batch_size * 2, **options),
    )


def _task_for(data: ImageData, settings: TrainSettings) -> Task:
    """The task object of a run: regression targets standardised on the training set (unless ``y_range``
    bounds the outputs in units), a given multi-label threshold kept."""
    if data.task == "regression":
        if settings.y_range is not None:
            return Regression()
        return Regression().fit_scale(torch.tensor([target for _, target in data.train], dtype=torch.float32))
    if data.task == "multilabel":
        return Multilabel(threshold=settings.threshold or 0.5)
    return Classification()


@torch.no_grad()
def validation_outputs(model: torch.nn.Module, loader: DataLoader, *, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """All outputs and targets of ``loader``, the model in eval mode."""
    model.eval()
    outputs, targets = [], []
    for inputs, batch_targets in loader:
        outputs.append(model(inputs.to(device)).float().cpu())
        targets.append(torch.as_tensor(batch_targets))
    return torch.cat(outputs), torch.cat(targets)


def _graft_record(model: torch.nn.Module) -> dict[str, Any]:
    """What the graft did, for model.json (the rebuild itself needs only the architecture and options)."""
    info = model.info  # type: ignore[attr-defined]
    keys = ("source", "method", "cut_at", "classifier", "removed", "input_size", "body_output", "pool")
    return {key: getattr(info, key) for key in keys}


def _write_history(history: list[dict[str, Any]], run_dir: Path) -> list[Path]:
    (run_dir / "history.json").write_text(json.dumps(history, indent=1) + "\n")
    keys = list(dict.fromkeys(k for row in history for k in row))
    with (run_dir / "history.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)
    return [run_dir / "history.json", run_dir / "history.csv"]


def _plots(learner: Learner, matrix: list[list[int]] | None, classes: list[str], run_dir: Path) -> list[Path]:
    try:
        from torchgraft.train.plots import plot_confusion

        files = learner.plot(run_dir)
        return files if matrix is None else [*files, plot_confusion(matrix, classes, run_dir / "confusion.png")]
    except ImportError as error:  # matplotlib is optional: the run itself is complete without plots
        print(f"plots skipped: {error}", file=sys.stderr)
        return []


@dataclass
class Prepared:
    """A run ready to train: checked data, preprocessing, the grafted model and its Learner."""

    data: ImageData
    preprocessing: Preprocessing
    model: torch.nn.Module
    origin: str
    graft_options: dict[str, Any]
    learner: Learner


def prepare_run(
    data: str | Path | ImageData,
    run_dir: str | Path,
    settings: TrainSettings,
    *,
    say: Callable[[str], None] = print,
    quiet: bool = False,
) -> Prepared:
    """Check the data, build the pretrained network, graft a head and make the Learner (checkpoints in
    ``run_dir/checkpoints``); prints what it found and decided through ``say``."""
    settings.check()
    prep = preprocessing_for(settings.model, size=settings.size)  # an unknown model fails before the data scan
    weights_file(settings.weights)  # a missing checkpoint file fails before the data scan too
    torch.manual_seed(settings.seed)
    if not isinstance(data, ImageData):
        bar = not quiet and sys.stderr.isatty()  # a progress bar over the scan of every image, on a terminal
        data = image_data(
            data,
            task=settings.task,
            x_col=settings.x_col,
            y_col=settings.y_col,
            valid_pct=settings.valid_pct,
            seed=settings.seed,
            skip_bad=settings.skip_bad,
            progress=bar,
        )
    if settings.task is None and data.task_reason:
        say(f"task: {data.task} ({data.task_reason}; --task to choose)")
    say(f"data: {data.summary()}")
    for row in data.bad_rows:
        say(f"  skipped {row}")
    for bad in data.skipped:
        say(f"  skipped {bad}")
    for warning in data.warnings:
        say(f"  warning: {warning}")
    source, origin = pretrained_model(settings.model, settings.weights)
    say(f"weights: {origin}")
    graft_options: dict[str, Any] = {"head": settings.head}
    if settings.y_range is not None:
        graft_options["y_range"] = list(settings.y_range)
    options = {**graft_options, "y_range": settings.y_range}
    model = graft(source, data.n_outputs, input_size=(3, prep.size, prep.size), **options)
    device = torch.device(settings.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    train_dl, valid_dl = _loaders(data, prep, settings, device)
    checkpoints = Path(run_dir) / "checkpoints"
    task = _task_for(data, settings)
    learner = Learner(
        model, train_dl, valid_dl, task=task, device=device, amp=settings.amp, checkpoint_dir=checkpoints, quiet=quiet
    )
    return Prepared(data, prep, model, origin, graft_options, learner)


def train_run(
    data: str | Path | ImageData,
    run_dir: str | Path,
    settings: TrainSettings | None = None,
    *,
    say: Callable[[str], None] = print,
    quiet: bool = False,
) -> RunResult:
    """Fine-tune ``settings.model`` on ``data`` (a folder, a CSV, or checked :class:`ImageData`) and write
    ``run_dir``.

    Example:
        >>> result = train_run("pets/", "runs/pets", TrainSettings(model="resnet18", epochs=3))
        >>> result.history[-1]["accuracy"]
        0.91
    """
    settings = settings or TrainSettings()
    run_dir = Path(run_dir)
    resume = run_dir / "checkpoints" / "last.pt" if settings.resume else None
    if resume is not None and not resume.is_file():
        raise FileNotFoundError(f"--resume: {resume} does not exist (nothing to resume in {run_dir}).")
    run = prepare_run(data, run_dir, settings, say=say, quiet=quiet)
    learner, model, classes = run.learner, run.model, run.data.classes
    plan = f"{describe(model, lr=settings.lr)}\n\npreprocessing: {run.preprocessing}\n"
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "plan.txt").write_text(plan)
    say(plan)
    history = learner.fine_tune(settings.epochs, settings.lr, freeze_epochs=settings.freeze_epochs, resume=resume)
    final = {k: v for k, v in history[-1].items() if k not in ("phase", "epoch")}
    outputs, targets = validation_outputs(model, learner.valid_dl, device=learner.device)  # type: ignore[arg-type]
    if isinstance(learner.task, Multilabel) and settings.threshold is None:
        learner.task.threshold, final["f1_at_threshold"] = best_threshold(outputs.sigmoid(), targets)
        final["threshold"] = learner.task.threshold
        say(f"threshold: {learner.task.threshold} (best micro-F1 on validation: {final['f1_at_threshold']:.4f})")
    files = [
        export_model(
            run_dir,
            model,
            architecture=settings.model,
            classes=classes,
            preprocessing=run.preprocessing,
            graft_options=run.graft_options,
            task=learner.task,
            extra={"weights": run.origin, "grafted": _graft_record(model), "final": final},
        ),
        *_write_history(history, run_dir),
    ]
    matrix = None
    if isinstance(learner.task, Classification):
        matrix = torch.bincount(targets * len(classes) + outputs.argmax(dim=1), minlength=len(classes) ** 2)
        matrix = matrix.view(len(classes), len(classes)).tolist()
    files += _plots(learner, matrix, classes, run_dir)
    return RunResult(run_dir, classes, history, learner, run.preprocessing, files, final)
