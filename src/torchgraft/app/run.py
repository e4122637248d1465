"""One fine-tuning run from images (a folder or a CSV: single-label, multi-label or regression), image + mask
pairs (segmentation) or texts (a CSV or folders of ``.txt`` files, with a Hugging Face encoder) to a RUN_DIR:
the pipeline behind ``torchgraft train`` and ``torchgraft demo``, usable from Python too.

Read top to bottom: an earlier run in the folder refused or removed (:mod:`torchgraft.app.rundir`),
:func:`~torchgraft.app.prepare.prepare_run` (the recipe of the input: data, network, head, Learner), print the
plan (layer groups and the stages as they will run), fine-tune, restore the epoch to export (the best by the
monitored metric, or the last: ``settings.export``), let the task report on the validation set, then write the RUN_DIR:

    RUN_DIR/model.safetensors, model.json   the exported model, the best epoch (see torchgraft.ship.export)
                                            (model.json's final.exported names it)
    RUN_DIR/hf/                             text models: the tokenizer and the encoder's config
    RUN_DIR/history.csv, history.json       one row per epoch: stage, phase, epoch within the run, values
    RUN_DIR/plan.txt                        the graft, the layer groups with what each stage trains, the stages
    RUN_DIR/loss.png, lr.png                plots (with matplotlib installed): each step's loss and each
                                            epoch's validation, each layer group's rate; epochs and stages marked
    RUN_DIR/pictures/*.png                  the task's pictures (Task.pictures): confusion matrix, worst samples,
                                            per-class bars, threshold curve, scatter, worst masks
    RUN_DIR/per_class.csv                   the task's per-class metrics on the exported epoch (Task.per_class)
    RUN_DIR/masks.png                       segmentation: a few validation images with true and predicted masks
    RUN_DIR/checkpoints/last.pt, best.pt    resumable training state
    RUN_DIR/report.html                     one page of it all (torchgraft.app.report); model.json's timings and
                                            environment say where the time went and what the run ran on
"""

from __future__ import annotations

import csv
import dataclasses
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from torchgraft.app.pictures import write_pictures
from torchgraft.app.prepare import Prepared, prepare_run
from torchgraft.app.report import write_report
from torchgraft.app.rundir import claim_run_dir
from torchgraft.app.runrecord import RunClock, environment, record_run, stage_timings
from torchgraft.app.settings import TrainSettings
from torchgraft.app.unreadable import UnreadableFiles
from torchgraft.ship.export import Preprocessor, export_model
from torchgraft.tasks import Classification, Task
from torchgraft.tasks.batch import move
from torchgraft.train import tracking
from torchgraft.train.callbacks import Checkpointer
from torchgraft.train.distributed import barrier, is_main, on_main, world_size
from torchgraft.train.learner import Learner
from torchgraft.train.stages import plan_text, stage_rates
from torchgraft.tune.describe import describe

__all__ = [
    "RunResult",
    "exported_epoch_line",
    "restore_exported_epoch",
    "train_run",
    "validation_batches",
    "validation_outputs",
]


@dataclass
class RunResult:
    """What a run produced."""

    run_dir: Path
    classes: list[str]
    history: list[dict[str, Any]]
    learner: Learner
    preprocessing: Preprocessor
    files: list[Path] = field(default_factory=list)
    final: dict[str, Any] = field(default_factory=dict)  # the exported epoch's metrics and the task's report


@torch.no_grad()
def validation_batches(
    model: torch.nn.Module, loader: Iterable[Any], *, device: Any, task: Task | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(outputs, targets)`` of each batch of ``loader`` on the CPU (batches split by ``task``, default
    classification: tuples or dicts with ``labels``; outputs of the task's evaluation forward), the model in
    eval mode; streamed, nothing kept. Outputs that are not a tensor (detections) and their targets come as
    the task gave them (its :meth:`~torchgraft.tasks.Task.kept` moves them)."""
    task = task or Classification()
    model.eval()
    for batch in loader:
        inputs, targets = task.split(batch)
        outputs = task.forward(model, move(inputs, torch.device(device)), targets, training=False)
        if isinstance(outputs, torch.Tensor):
            yield outputs.float().cpu(), torch.as_tensor(targets)
        else:
            yield outputs, targets


def validation_outputs(
    model: torch.nn.Module, loader: Iterable[Any], *, device: Any, task: Task | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """All outputs and targets of ``loader`` (see :func:`validation_batches`), concatenated."""
    outputs, targets = zip(*validation_batches(model, loader, device=device, task=task), strict=True)
    return torch.cat(outputs), torch.cat(targets)


def _write_history(history: list[dict[str, Any]], run_dir: Path) -> list[Path]:
    (run_dir / "history.json").write_text(json.dumps(history, indent=1) + "\n")
    keys = list(dict.fromkeys(k for row in history for k in row))
    with (run_dir / "history.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)
    return [run_dir / "history.json", run_dir / "history.csv"]


def _plots(learner: Learner, run_dir: Path) -> list[Path]:
    try:
        return learner.plot(run_dir)
    except ImportError as error:  # matplotlib is optional: the run itself is complete without plots
        print(f"plots skipped: {error}", file=sys.stderr)
        return []


_NAMING = ("choice", "row", "stage", "epoch", "monitor", "mode")  # restore_exported_epoch's keys that are no metric


def restore_exported_epoch(
    learner: Learner, history: list[dict[str, Any]], stages: list[str], *, export: str = "best"
) -> dict[str, Any]:
    """Put the weights of the epoch to export into ``learner.model`` (every rank must call it) and return what
    names it: ``export="best"`` loads ``checkpoints/best.pt`` (the best epoch by the monitored metric, in the
    direction the metric declares: losses down, accuracy up), ``"last"`` keeps the weights the training ended
    with. The record: ``row`` (its line in history.csv, from 1), ``stage`` (the fine-tune's stage: ``frozen``,
    ``unfrozen``, ...), ``epoch`` (within the whole run, as the console's table and history.csv number it: the
    row), ``choice`` and the epoch's recorded values; best also ``monitor``/``mode`` (what decided)."""
    if export == "best":
        record = learner.load_best()  # best.pt: the Checkpointer kept it by the monitor's declared direction
        watcher = next(c for c in learner.callbacks if isinstance(c, Checkpointer))
        monitor, mode = watcher.watch.resolved or (None, None)
    else:
        record, monitor, mode = history[-1], None, None
    row = next(i for i, r in enumerate(history) if (r["phase"], r["epoch"]) == (record["phase"], record["epoch"]))
    phase = history[row]["phase"]
    stage = history[row].get("stage") or (stages[phase] if 0 <= phase < len(stages) else f"phase {phase}")
    named: dict[str, Any] = {
        "choice": export,
        "row": row + 1,
        "stage": stage,
        "epoch": history[row]["epoch"],
        **({"monitor": monitor, "mode": mode} if monitor else {}),
    }
    named.update({k: v for k, v in history[row].items() if k not in ("phase", "epoch", "stage")})
    return named


def exported_epoch_line(exported: dict[str, Any], epochs: int) -> str:
    """``"the best epoch (accuracy, max): epoch 1 of 3, frozen (valid_loss 0.41, accuracy 0.94)"``: the epoch as
    the console's table and history.csv number it."""
    values = ", ".join(
        f"{k} {v:.4g}" for k, v in exported.items() if isinstance(v, float) and k not in ("seconds", "epoch", "row")
    )
    why = f" ({exported['monitor']}, {exported['mode']})" if exported.get("monitor") else ""
    return f"the {exported['choice']} epoch{why}: epoch {exported['epoch']} of {epochs}, {exported['stage']} ({values})"


def train_run(
    data: str | Path | Any,
    run_dir: str | Path,
    settings: TrainSettings | None = None,
    *,
    say: Callable[[str], None] = print,
    quiet: bool = False,
    clock: RunClock | None = None,
) -> RunResult:
    """Fine-tune ``settings.model`` on ``data`` (a folder, a CSV, or checked :class:`ImageData` /
    :class:`~torchgraft.data.texts.TextData`) and write ``run_dir``. ``clock`` times the run's parts for
    model.json's ``timings`` (default: one started now; the command line's also counts the process's start-up).

    Example:
        >>> result = train_run("pets/", "runs/pets", TrainSettings(model="resnet18", epochs=3))
        >>> result.history[-1]["accuracy"]
        0.91
        >>> train_run("news.csv", "runs/news")  # texts: all-MiniLM-L6-v2 by default
    """
    clock = clock or RunClock()  # each part of the run, for model.json's timings and the report
    settings = settings or TrainSettings()
    run_dir = Path(run_dir)
    resume = run_dir / "checkpoints" / "last.pt" if settings.resume else None
    if resume is not None and not on_main(resume.is_file):
        raise FileNotFoundError(f"--resume: {resume} does not exist (nothing to resume in {run_dir}).")
    say = say if is_main() else (lambda _: None)  # under torchrun only rank 0 prints and writes
    removed = on_main(claim_run_dir, run_dir, overwrite=settings.overwrite, resume=settings.resume)
    if removed:
        what = "the earlier run's" if settings.overwrite else "the exports made before the resume:"
        say(f"{'overwrite' if settings.overwrite else 'resume'}: removed {what} {', '.join(removed)} from {run_dir}")
    run = prepare_run(data, run_dir, settings, say=say, quiet=quiet or not is_main(), clock=clock)
    settings, learner, model, classes = run.settings, run.learner, run.model, run.data.classes
    recipe = {  # what is left None comes from the Learner's measured recipe of the model's kind
        "freeze_epochs": settings.freeze_epochs,
        "lr_mult": settings.lr_mult,
        "frozen_lr": settings.frozen_lr,
        "gradual": settings.gradual,
        "keep_frozen": settings.keep_frozen,
    }
    stages = learner.stages(settings.epochs, settings.lr, **recipe)
    plan = f"{describe(model, stages=stage_rates(stages))}\n\n{plan_text(stages)}\n\n"  # what each stage trains
    plan += f"preprocessing: {run.preprocessing}\n"
    if learner.task.loss_description():
        plan += f"loss: {learner.task.loss_description()}\n"
    if world_size() > 1:
        per_step = world_size() * settings.batch_size  # type: ignore[operator]
        plan += f"processes: {world_size()} (batch {settings.batch_size} each, {per_step} per step)\n"
    if is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "plan.txt").write_text(plan)
    say(plan)
    clock.lap("plan")
    watch = UnreadableFiles.watching(learner, max_bad=settings.max_bad, say=say)
    tracking.log_run_start(learner, dataclasses.asdict(settings), plan)  # --log: the settings and the plan (rank 0)
    history = learner.fine_tune(settings.epochs, settings.lr, **recipe, resume=resume)
    clock.lap("fine_tune")
    exported = restore_exported_epoch(learner, history, [s.name for s in stages], export=settings.export)
    say(f"exported {exported_epoch_line(exported, len(history))}")
    final = {k: v for k, v in exported.items() if k not in _NAMING}  # the exported epoch's values, at the top
    final["exported_epoch"], final["exported"] = exported["row"], exported  # which epoch: row, stage, epoch
    if watch is not None:  # files that passed the check but failed to decode: replaced, listed
        final["unreadable_files"] = watch.summary()
        if watch.found:
            say(f"{len(watch.found)} unreadable files were replaced by other samples: see final.unreadable_files")
    whole = learner.gathered_model()  # under FSDP the shards gathered on rank 0 (every rank takes part)
    if not is_main():  # rank 0 reports and exports; the others wait for it, then end
        barrier()
        return RunResult(run_dir, classes, history, learner, run.preprocessing, [], final)
    built = dataclasses.replace(run.built, model=whole)
    result = _finish(dataclasses.replace(run, built=built), run_dir, history, final, say=say, clock=clock)
    result.files += _record_and_report(run_dir, clock, history, [s.name for s in stages], device=learner.device)
    tracking.log_run_files(learner, result.files, run_dir)  # --log mlflow: the exported model, plots, report
    barrier()
    return result


def _written_beside(run_dir: Path) -> list[Path]:
    """The export's other files (the weights; separate adapters) and the plan written before training."""
    names = ("model.safetensors", "adapter_model.safetensors", "adapter_config.json", "plan.txt")
    return [run_dir / name for name in names if (run_dir / name).is_file()]


def _record_and_report(
    run_dir: Path, clock: RunClock, history: list[dict[str, Any]], stages: list[str], *, device: torch.device
) -> list[Path]:
    """Record the timings and the environment in model.json, then build report.html from the run folder."""
    device = torch.device(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    ran_on = environment(device=str(device), world_size=world_size(), device_name=name)
    record_run(run_dir, timings=clock.timings(stages=stage_timings(history, stages)), environment=ran_on)
    return [write_report(run_dir)]


def _finish(
    run: Prepared,
    run_dir: Path,
    history: list[dict[str, Any]],
    final: dict[str, Any],
    *,
    say: Callable[[str], None],
    clock: RunClock,
) -> RunResult:
    """What rank 0 does after training: the task's validation report (which may set what the task decides
    on validation, the multi-label threshold, before the export records it), the export, the history and the
    plots."""
    settings, learner, model, classes = run.settings, run.learner, run.model, run.data.classes
    batches, why = learner.kept.outputs_of(final["exported_epoch"] - 1)  # as the exported epoch validated
    if batches is None:
        say(f"report: a second pass over the validation set ({why})")
        fresh = validation_batches(model, learner.full_valid_dl, device=learner.device, task=learner.task)
        batches = [learner.task.kept(outputs, targets) for outputs, targets in fresh]  # as kept: for the pictures too
    summary = learner.task.report(batches, classes)
    final.update(summary.final)
    for line in summary.lines:
        say(line)
    clock.lap("validation_report")
    files = [
        export_model(
            run_dir,
            model,
            architecture=run.built.architecture,
            classes=classes,
            preprocessing=run.preprocessing,
            task=learner.task,
            extra={
                "weights": run.built.origin,
                "final": final,
                "examples": run.recipe.examples(run.data),
                **({"colours": run.data.colours} if getattr(run.data, "colours", None) else {}),
            },
            adapters=settings.adapters,
        ),
        *_written_beside(run_dir),
        *run.built.save_assets(run_dir),
        *_write_history(history, run_dir),
    ]
    clock.lap("export")
    files += _plots(learner, run_dir)
    inputs = run.recipe.validation_inputs(run.data)
    files += write_pictures(learner.task, batches, classes, run_dir, inputs=inputs, loader=learner.full_valid_dl)
    files += run.recipe.figures(run.data, run.built, learner.device, run_dir)
    clock.lap("plots")
    files += sorted((run_dir / "checkpoints").glob("*.pt"))  # written during training (last.pt, best.pt)
    return RunResult(run_dir, classes, history, learner, run.preprocessing, files, final)
