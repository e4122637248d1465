"""One run made ready to train, whatever the input: the recipe of the data picked by one probe, its defaults,
the checks, the read (once, on rank 0 under ``torchrun``), the report of what was found, the grafted
network, LoRA adapters when asked, the loaders and the Learner with the task of the data."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchgraft.app.boxes import BoxInput
from torchgraft.app.images import ImageInput
from torchgraft.app.inputs import Built, InputRecipe, LabelledData
from torchgraft.app.masks import MaskInput
from torchgraft.app.runrecord import RunClock
from torchgraft.app.settings import TrainSettings
from torchgraft.app.shards import ShardInput
from torchgraft.app.texts import TextInput
from torchgraft.data.texts import TextData
from torchgraft.tasks import TASKS, Classification, Task
from torchgraft.tasks.balance import class_counts, imbalance_warning
from torchgraft.train.distributed import local_device, on_main
from torchgraft.train.learner import Learner
from torchgraft.train.loggers import make_loggers
from torchgraft.tune.lora import lora

__all__ = [
    "RECIPES",
    "Prepared",
    "adapt",
    "balanced_task",
    "input_recipe",
    "make_task",
    "prepare_run",
    "report",
    "split_line",
]

# probed in this order; the first that claims the data is the run's recipe (images claim what is left)
RECIPES: tuple[InputRecipe, ...] = (ShardInput(), BoxInput(), MaskInput(), TextInput(), ImageInput())


@dataclass
class Prepared:
    """A run ready to train: its recipe, checked data, the grafted network (:class:`Built`), its Learner
    and the settings with the recipe's defaults filled in."""

    data: LabelledData
    built: Built
    learner: Learner
    settings: TrainSettings
    recipe: InputRecipe

    @property
    def model(self) -> nn.Module:
        """The grafted network."""
        return self.built.model

    @property
    def preprocessing(self) -> Any:
        """What validation (and so prediction) does to an input."""
        return self.built.preprocessing


def input_recipe(data: Any, settings: TrainSettings) -> InputRecipe:
    """The recipe of ``data``: the first of :data:`RECIPES` that claims it."""
    return next(recipe for recipe in RECIPES if recipe.claims(data, settings))


def make_task(data: LabelledData, settings: TrainSettings) -> Task:
    """The task of a run: ``settings.task`` when it names one, else the one the data was read as; made from
    the run's options (:meth:`Task.for_run`) and fitted to the training targets (regression: standardised)."""
    name = settings.task if settings.task in TASKS else data.task
    task = TASKS[name].for_run(threshold=settings.threshold, dice_weight=settings.dice_weight, y_range=settings.y_range)
    if settings.balance:
        task = balanced_task(task, data)
    return task.fit_targets([_target(sample) for sample in data.train])


def _target(sample: Any) -> Any:
    """The target of a training sample as its reader holds it: ``(input, target)`` pairs, or a detection
    sample's labels (:class:`~torchgraft.data.annotations.BoxSample`)."""
    return sample.labels if hasattr(sample, "labels") else sample[1]


def balanced_task(task: Task, data: LabelledData) -> Task:
    """``--balance``: the single-label task of ``data`` with class weights fitted on its training targets (a
    weighted loss, not a weighted sampler: the samples drawn, their order and a resumed or distributed run's
    exactness stay as they are)."""
    if not isinstance(task, Classification):
        raise ValueError(
            f"--balance weighs the classes of single-label classification; this run's task is {task.name}. "
            f"Leave --balance out."
        )
    task.balance, task.n_classes = True, len(data.classes)
    return task


def report(data: LabelledData, settings: TrainSettings, say: Callable[[str], None]) -> None:
    """Print what the data checks found: the inferred task and why, counts, skipped inputs, warnings."""
    if settings.task in (None, "text") and data.task_reason:
        say(f"task: {data.task} ({data.task_reason}; --task to choose)")
    say(f"data: {data.summary()}")
    for row in data.bad_rows:
        say(f"  skipped {row}")
    for bad in data.skipped:
        say(f"  skipped {bad}")
    for warning in data.warnings:
        say(f"  warning: {warning}")
    if data.task == "classify" and data.classes:
        counts = class_counts((int(target) for _, target in data.train), len(data.classes))
        imbalance = imbalance_warning(counts, data.classes, what=_what(data))
        if imbalance and not settings.balance:
            say(f"  warning: {imbalance}")
        elif imbalance:
            say(f"  class counts: {imbalance.split('Counts: ')[-1]}; --balance weighs the loss by class")
    split = split_line(data, settings)
    if split:
        say(split)


def _what(data: LabelledData) -> str:
    """What one sample of ``data`` is, in messages."""
    return "texts" if isinstance(data, TextData) else f"{getattr(data, 'kind', 'image')}s"


def split_line(data: LabelledData, settings: TrainSettings) -> str:
    """The line that announces a validation split made at random (empty when the data brought its own):
    how many train / valid, the share, the seed, and the flags that change it."""
    fraction = getattr(data, "split_off", None)
    if fraction is None:
        return ""
    each = " of each class" if data.task == "classify" else ""
    return (
        f"validation: {fraction:.0%}{each} split off at random with seed {settings.seed} ({len(data.train):,} "
        f"train / {len(data.valid):,} valid); --valid-pct and --seed change it, a valid/ folder (or a train/valid "
        f"column) fixes it"
    )


def adapt(model: nn.Module, settings: TrainSettings, say: Callable[[str], None]) -> nn.Module:
    """``model`` with LoRA adapters of rank ``settings.lora`` on every body group, or ``model`` itself."""
    if settings.lora is None:
        return model
    adapted = lora(model, r=settings.lora)
    trainable = sum(p.numel() for p in adapted.parameters() if p.requires_grad)
    total = sum(p.numel() for p in adapted.parameters())
    layers = adapted._torchgraft_lora["layers"]  # type: ignore[index]
    say(f"LoRA: rank {settings.lora} on {layers} layers; {trainable:,} of {total:,} parameters train")
    return adapted


def prepare_run(
    data: str | Path | Any,
    run_dir: str | Path,
    settings: TrainSettings,
    *,
    say: Callable[[str], None] = print,
    quiet: bool = False,
    clock: RunClock | None = None,
) -> Prepared:
    """Pick the recipe of ``data`` (a folder, a CSV, or checked data of any kind), check the settings, read
    the data, build the pretrained network with its head and make the Learner (checkpoints in
    ``run_dir/checkpoints``); prints what it found and decided through ``say``. The returned ``settings``
    have the recipe's defaults filled in. ``clock`` times the parts: ``data`` (checked and read), ``network``
    (built, the loaders and the Learner made).

    Example:
        >>> run = prepare_run("pets/", "runs/pets", TrainSettings(model="resnet18"))
        >>> run.recipe.name, run.data.classes[:2]
        ('images', ['cat', 'dog'])
    """
    recipe = input_recipe(data, settings)
    settings = settings.with_defaults(recipe.defaults)
    settings.check()
    recipe.check(settings)  # fails before the data is read
    device = local_device(settings.device)  # a device this machine lacks too
    loggers = make_loggers(settings.log, run_dir=run_dir)  # a logger's missing library too
    torch.manual_seed(settings.seed)
    if not recipe.is_read(data):  # under torchrun: listed and checked once, by rank 0
        data = on_main(recipe.read, data, settings, progress=not quiet)
    report(data, settings, say)
    if clock is not None:
        clock.lap("data")
    built = recipe.build(data, settings, say)
    built.model = adapt(built.model, settings, say)
    loaders = recipe.loaders(data, built, settings, device)
    learner = Learner(
        built.model,
        *loaders,
        task=make_task(data, settings),
        device=device,
        amp=settings.amp,
        checkpoint_dir=Path(run_dir) / "checkpoints",
        quiet=quiet,
        cache_features=recipe.cache_features,
        cache_dir=settings.cache_dir,
        save_every=settings.save_every,
        batchnorm=settings.batchnorm,  # type: ignore[arg-type]
        strategy=settings.strategy,  # type: ignore[arg-type]
        loggers=loggers,
    )
    if clock is not None:
        clock.lap("network")
    return Prepared(data, built, learner, settings, recipe)
