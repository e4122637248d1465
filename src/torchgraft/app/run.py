"""One fine-tuning run from images (a folder or a CSV: single-label, multi-label or regression), image + mask
pairs (segmentation) or texts (a CSV or folders of ``.txt`` files, with a Hugging Face encoder) to a RUN_DIR:
the pipeline behind ``torchgraft train`` and ``torchgraft demo``, usable from Python too.

Read top to bottom: check the data, build the pretrained network and its preprocessing, graft a head, print
the plan, fine-tune, then write the RUN_DIR:

    RUN_DIR/model.safetensors, model.json   the exported model (see torchgraft.export)
    RUN_DIR/hf/                             text models: the tokenizer and the encoder's config
    RUN_DIR/history.csv, history.json       one row per epoch
    RUN_DIR/plan.txt                        the graft and layer-group plan
    RUN_DIR/loss.png, lr.png, confusion.png plots (with matplotlib installed; the confusion matrix for
                                            single-label classification; segmentation: masks.png, a few
                                            validation images with true and predicted masks)
    RUN_DIR/checkpoints/last.pt, best.pt    resumable training state
"""

from __future__ import annotations

import csv
import dataclasses
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from torchgraft.app.export import Preprocessor, export_model
from torchgraft.app.segment import is_segment_run, prepare_segment_run, segment_report
from torchgraft.app.settings import (
    IMAGE_DEFAULTS,
    TEXT_DEFAULTS,
    Prepared,
    TrainSettings,
    adapt,
    dataset_loaders,
    device_of,
    make_learner,
    report,
)
from torchgraft.app.text import is_text_run, prepare_text_run
from torchgraft.data.folders import ImageData, image_data
from torchgraft.data.masks import MaskData
from torchgraft.data.preprocess import Preprocessing, preprocessing_for
from torchgraft.data.texts import looks_like_text
from torchgraft.grafting.surgery import graft
from torchgraft.tasks import Classification, Multilabel, Segmentation, Task, best_threshold
from torchgraft.tasks.batch import call_model, move, output_tensor
from torchgraft.train.distributed import barrier, is_main, on_main, world_size
from torchgraft.train.learner import Learner
from torchgraft.tune.describe import describe
from torchgraft.weights.pretrained import pretrained_model, weights_file

__all__ = ["Prepared", "RunResult", "TrainSettings", "prepare_run", "train_run", "validation_outputs"]


@dataclass
class RunResult:
    """What a run produced."""

    run_dir: Path
    classes: list[str]
    history: list[dict[str, Any]]
    learner: Learner
    preprocessing: Preprocessor
    files: list[Path] = field(default_factory=list)
    final: dict[str, Any] = field(default_factory=dict)  # the last epoch's metrics, and the chosen threshold


def _image_loaders(
    data: ImageData, prep: Preprocessing, settings: TrainSettings, device: torch.device
) -> tuple[Any, Any]:
    train, valid = data.datasets(prep.train_transform(augment=settings.augment), prep.eval_transform())
    return dataset_loaders(train, valid, settings, device)


@torch.no_grad()
def validation_outputs(
    model: torch.nn.Module, loader: DataLoader, *, device: Any, task: Task | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """All outputs and targets of ``loader`` (batches split by ``task``, default classification: tuples or
    dicts with ``labels``), the model in eval mode."""
    task = task or Classification()
    model.eval()
    outputs, targets = [], []
    for batch in loader:
        inputs, batch_targets = task.split(batch)
        outputs.append(output_tensor(call_model(model, move(inputs, torch.device(device)))).float().cpu())
        targets.append(torch.as_tensor(batch_targets))
    return torch.cat(outputs), torch.cat(targets)


def _examples(data: Any, count: int = 4) -> list[str]:
    """A few validation inputs (image paths, absolute; or texts) that ``deploy`` checks exported files on."""
    chosen = [x for x, _ in data.valid[:count]]
    return [str(Path(x).resolve()) if isinstance(data, ImageData | MaskData) else x[:5000] for x in chosen]


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


def _prepare_images(
    data: str | Path | ImageData,
    run_dir: str | Path,
    settings: TrainSettings,
    *,
    say: Callable[[str], None],
    quiet: bool,
) -> Prepared:
    settings = settings.with_defaults(IMAGE_DEFAULTS)
    settings.check()
    assert settings.model is not None
    prep = preprocessing_for(settings.model, size=settings.size)  # an unknown model fails before the data scan
    weights_file(settings.weights)  # a missing checkpoint file fails before the data scan too
    torch.manual_seed(settings.seed)
    if not isinstance(data, ImageData):
        bar = not quiet and sys.stderr.isatty()  # a progress bar over the scan of every image, on a terminal
        data = on_main(  # under torchrun: listed and checked once, by rank 0
            image_data,
            data,
            task=settings.task,
            x_col=settings.x_col,
            y_col=settings.y_col,
            valid_pct=settings.valid_pct,
            seed=settings.seed,
            skip_bad=settings.skip_bad,
            progress=bar,
        )
    report(data, settings, say)
    source, origin = pretrained_model(settings.model, settings.weights)
    say(f"weights: {origin}")
    size = (3, prep.size, prep.size)
    model = graft(source, data.n_outputs, input_size=size, head=settings.head, y_range=settings.y_range)
    model = adapt(model, settings, say)
    loaders = _image_loaders(data, prep, settings, device_of(settings))
    learner = make_learner(model, loaders, data, settings, run_dir, quiet=quiet)
    return Prepared(data, prep, model, origin, learner, settings, settings.model)


def prepare_run(
    data: str | Path | Any,
    run_dir: str | Path,
    settings: TrainSettings,
    *,
    say: Callable[[str], None] = print,
    quiet: bool = False,
) -> Prepared:
    """Check the data, build the pretrained network, graft a head and make the Learner (checkpoints in
    ``run_dir/checkpoints``); prints what it found and decided through ``say``. Texts (a ``hf/`` model,
    ``task="text"``, :class:`~torchgraft.data.texts.TextData` or data that looks like texts) go through
    :func:`torchgraft.app.text.prepare_text_run`, image + mask pairs (``task="segment"``, ``MaskData`` or a folder
    with ``masks/``) through :func:`torchgraft.app.segment.prepare_segment_run`; the returned ``settings`` have
    the defaults filled in."""
    if is_segment_run(data, settings):
        return prepare_segment_run(data, run_dir, settings, say=say, quiet=quiet)
    if is_text_run(data, settings):
        return prepare_text_run(data, run_dir, settings, say=say, quiet=quiet)
    if settings.model is not None and settings.model.startswith(("hf/", "hf:")):
        raise ValueError(
            f"--model {settings.model}: hf/ models train on texts; for images give a torchvision or timm name."
        )
    if isinstance(data, str | Path) and looks_like_text(data, x_col=settings.x_col):
        raise ValueError(
            f"{data} holds texts but --model {settings.model} is an image model; give a text model hf/NAME or "
            f"hf/FOLDER (or leave --model out for {TEXT_DEFAULTS['model']})."
        )
    return _prepare_images(data, run_dir, settings, say=say, quiet=quiet)


def _choose_threshold(learner: Learner, outputs: torch.Tensor, targets: torch.Tensor, final: dict[str, Any]) -> str:
    """Set the multi-label threshold to the best micro-F1 on validation; returns the line to print."""
    task: Multilabel = learner.task  # type: ignore[assignment]
    task.threshold, final["f1_at_threshold"] = best_threshold(outputs.sigmoid(), targets)
    final["threshold"] = task.threshold
    return f"threshold: {task.threshold} (best micro-F1 on validation: {final['f1_at_threshold']:.4f})"


def train_run(
    data: str | Path | Any,
    run_dir: str | Path,
    settings: TrainSettings | None = None,
    *,
    say: Callable[[str], None] = print,
    quiet: bool = False,
) -> RunResult:
    """Fine-tune ``settings.model`` on ``data`` (a folder, a CSV, or checked :class:`ImageData` /
    :class:`~torchgraft.data.texts.TextData`) and write ``run_dir``.

    Example:
        >>> result = train_run("pets/", "runs/pets", TrainSettings(model="resnet18", epochs=3))
        >>> result.history[-1]["accuracy"]
        0.91
        >>> train_run("news.csv", "runs/news")  # texts: all-MiniLM-L6-v2 by default
    """
    settings = settings or TrainSettings()
    run_dir = Path(run_dir)
    resume = run_dir / "checkpoints" / "last.pt" if settings.resume else None
    if resume is not None and not on_main(resume.is_file):
        raise FileNotFoundError(f"--resume: {resume} does not exist (nothing to resume in {run_dir}).")
    say = say if is_main() else (lambda _: None)  # under torchrun only rank 0 prints and writes
    run = prepare_run(data, run_dir, settings, say=say, quiet=quiet or not is_main())
    settings, learner, model, classes = run.settings, run.learner, run.model, run.data.classes
    assert settings.lr is not None and settings.lr_mult is not None
    lr = slice(settings.lr / settings.lr_mult, settings.lr) if settings.lr_mult > 1 else settings.lr
    plan = f"{describe(model, lr=lr)}\n\npreprocessing: {run.preprocessing}\n"
    if world_size() > 1:
        per_step = world_size() * settings.batch_size  # type: ignore[operator]
        plan += f"processes: {world_size()} (batch {settings.batch_size} each, {per_step} per step)\n"
    if is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "plan.txt").write_text(plan)
    say(plan)
    history = learner.fine_tune(
        settings.epochs,
        settings.lr,
        freeze_epochs=settings.freeze_epochs,
        lr_mult=settings.lr_mult,
        frozen_lr=settings.frozen_lr,
        gradual=settings.gradual,
        keep_frozen=settings.keep_frozen or 0,
        resume=resume,
    )
    final = {k: v for k, v in history[-1].items() if k not in ("phase", "epoch")}
    whole = learner.gathered_model()  # under FSDP the shards gathered on rank 0 (every rank takes part)
    if not is_main():  # rank 0 reports and exports; the others wait for it, then end
        barrier()
        return RunResult(run_dir, classes, history, learner, run.preprocessing, [], final)
    result = _finish(dataclasses.replace(run, model=whole), run_dir, history, final, say=say)
    barrier()
    return result


def _finish(
    run: Prepared, run_dir: Path, history: list[dict[str, Any]], final: dict[str, Any], *, say: Callable[[str], None]
) -> RunResult:
    """What rank 0 does after training: the validation report, the multi-label threshold, the export, the
    history and the plots."""
    settings, learner, model, classes = run.settings, run.learner, run.model, run.data.classes
    segment_files: list[Path] = []
    if isinstance(learner.task, Segmentation):  # per-class IoU and masks.png, streamed (no stored logits)
        per_class, segment_files = segment_report(run, run_dir)
        final.update(per_class)
    else:
        outputs, targets = validation_outputs(model, learner.full_valid_dl, device=learner.device, task=learner.task)
    if isinstance(learner.task, Multilabel) and settings.threshold is None:
        say(_choose_threshold(learner, outputs, targets, final))
    files = [
        export_model(
            run_dir,
            model,
            architecture=run.architecture,
            classes=classes,
            preprocessing=run.preprocessing,
            task=learner.task,
            extra={
                "weights": run.origin,
                "final": final,
                "examples": _examples(run.data),
                **({"colours": run.data.colours} if getattr(run.data, "colours", None) else {}),
            },
            adapters=settings.adapters,
        ),
        *run.save_assets(run_dir),
        *_write_history(history, run_dir),
    ]
    matrix = None
    if isinstance(learner.task, Classification):
        matrix = torch.bincount(targets * len(classes) + outputs.argmax(dim=1), minlength=len(classes) ** 2)
        matrix = matrix.view(len(classes), len(classes)).tolist()
    files += _plots(learner, matrix, classes, run_dir) + segment_files
    return RunResult(run_dir, classes, history, learner, run.preprocessing, files, final)
