"""One fit of a Learner, epoch by epoch: the fit's optimizer (rebuilt from the model's parameters, moments
carried over, watched), its feature cache, its DDP wrapper and schedule, then each epoch's training pass and
validation, recorded in the :class:`~torchgraft.train.state.FitState` and told to the callbacks.

What a fit reads and sets on its Learner is :class:`Fitted`; the training step itself is
:class:`~torchgraft.train.loop.Loop`'s.
"""

from __future__ import annotations

import functools
import math
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader

from torchgraft.spelling import option
from torchgraft.tasks import Task
from torchgraft.tasks.metrics import MetricSet
from torchgraft.train.cache import feature_loaders
from torchgraft.train.callbacks import notify
from torchgraft.train.distributed import is_main, reduce_max
from torchgraft.train.fsdp import is_sharded
from torchgraft.train.kept import KeptOutputs
from torchgraft.train.loop import EpochProgress, Loop, StepEvents, TrainingDivergedError
from torchgraft.train.lr_finder import LRFind, lr_find
from torchgraft.train.placement import Placement
from torchgraft.train.progress import epoch_progress
from torchgraft.train.resume import Trained, epoch_batches, restore, set_sampler_epoch
from torchgraft.train.state import FitState
from torchgraft.tune.groups import layer_groups
from torchgraft.tune.optim import LRSpec, param_groups
from torchgraft.tune.stale import watch_optimizer

__all__ = ["Fitted", "Schedule", "run_fit", "sweep_rates", "trained_objects"]

Schedule = Callable[[torch.optim.Optimizer, int], Any]


class Fitted(Protocol):
    """What a fit reads and sets on the :class:`torchgraft.Learner` it runs for."""

    placement: Placement
    loop: Loop
    fit_state: FitState
    callbacks: list[Any]
    kept: KeptOutputs
    metric_set: MetricSet
    train_dl: Any
    valid_dl: Any
    optimizer: torch.optim.Optimizer | None
    optimizer_class: type[torch.optim.Optimizer]
    weight_decay: float
    watch: Any
    cache: tuple[Any, Any, nn.Module] | None
    cache_features: bool
    cache_dir: str | Path | None
    cache_dtype: torch.dtype | None
    checkpoint_dir: Path | None
    progress: bool
    quiet: bool

    @property
    def task(self) -> Task:
        """The task, inferred from the first batch when none was given."""


def trained_objects(learner: Fitted) -> Trained:
    """The objects whose states a checkpoint holds: model, optimizer, scheduler, gradient scaler, loaders."""
    loop, loaders = learner.loop, [learner.train_dl, learner.valid_dl]
    return Trained(learner.placement.model, learner.optimizer, loop.scheduler, loop.scaler, loaders)


def _prepare_optimizer(learner: Fitted, lr: LRSpec) -> torch.optim.Optimizer:
    """An optimizer with ``lr`` per layer group; moments of a previous optimizer carry over."""
    model = learner.placement.model
    optimizer = learner.optimizer_class(param_groups(model, lr=lr, weight_decay=learner.weight_decay))
    if learner.optimizer is not None:  # carry the moments of parameters still in the model over
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        for param, state in learner.optimizer.state.items():
            if id(param) in held:
                optimizer.state[param] = state
    if learner.watch is not None:
        learner.watch.remove()
    learner.watch = watch_optimizer(optimizer, model)
    learner.optimizer = optimizer
    return optimizer


def _cached(learner: Fitted, valid: Any, *, quiet: bool) -> tuple[Any, Any, nn.Module] | None:
    """The cached loaders and head (:func:`~torchgraft.train.cache.feature_loaders`) if asked and the body
    cannot change, else ``None``."""
    model = learner.placement.model
    if not learner.cache_features or is_sharded(model):
        return None
    store = {"quiet": quiet, "cache_dir": learner.cache_dir, "cache_dtype": learner.cache_dtype}
    return feature_loaders(model, learner.train_dl, valid, learner.loop.prepare, **store)


def _set_cache(learner: Fitted) -> None:
    """Cache body features for this fit if asked and the body cannot change; else run normally."""
    learner.placement.unwrap()
    learner.cache = None
    learner.cache = _cached(learner, learner.valid_dl, quiet=learner.quiet)


def sweep_rates(
    learner: Fitted,
    *,
    start: float,
    end: float,
    steps: int,
    on_step: Callable[[int, float, float], None] | None = None,
) -> LRFind:
    """:func:`~torchgraft.train.lr_finder.lr_find` with the Learner's task, loss, autocast and optimizer. With
    the feature cache on and the body frozen, the head trains on cached features when the store is worth
    it (a dataset with a ``fingerprint()``, whose store the next fit reads, or no more batches than
    ``steps``), so the sweep does not run the body; else the model trains on the training loader."""
    _ = learner.task  # the task's loss, unless the user's
    loader = learner.train_dl
    keeps = callable(getattr(getattr(loader, "dataset", None), "fingerprint", None)) or len(loader) <= steps
    cache = _cached(learner, None, quiet=True) if keeps and isinstance(loader, DataLoader) else None
    trained, batches = (cache[2], cache[0]) if cache is not None else (learner.placement.model, learner.train_dl)
    options = {"start": start, "end": end, "steps": steps, "weight_decay": learner.weight_decay, "on_step": on_step}
    loss_of = functools.partial(learner.loop.batch_loss, trained)
    return lr_find(learner.placement.model, batches, loss_of, optimizer=learner.optimizer_class, **options)


def _bar(learner: Fitted, iterable: Iterable[Any], desc: str, *, total: int | None = None, initial: int = 0) -> Any:
    """``iterable`` with its progress shown (:func:`~torchgraft.train.progress.epoch_progress`: a bar with the
    time left when ``learner.progress``, else timed plain lines), or as it is when quiet or not rank 0."""
    if learner.quiet or not is_main():
        return iterable
    return epoch_progress(iterable, desc, bar=learner.progress, total=total, initial=initial)


def _length_or_none(loader: Any) -> int | None:
    try:
        return len(loader)
    except TypeError:  # a validation stream without a length: the progress counts batches alone
        return None


def _layer_names(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> tuple[list[str], list[list[str]]]:
    """The model's layer groups in the plan's order, and for each optimizer group the layer groups whose
    trained parameters it holds (the freezing is fixed for an epoch: a fine-tune changes it between fits)."""
    groups = layer_groups(model)
    owner = {id(p): group.name for group in groups for p in group.params if p.requires_grad}
    held = [
        list(dict.fromkeys(owner[id(p)] for p in entry["params"] if id(p) in owner))
        for entry in (optimizer.param_groups if optimizer is not None else [])
    ]
    return [group.name for group in groups], held


def _layer_rates(names: list[str], held: list[list[str]], rates: list[float]) -> dict[str, Any]:
    """``{layer group: the rate its trained parameters used}``, ``None`` for a group with nothing trained."""
    used: dict[str, Any] = dict.fromkeys(names)
    for owners, rate in zip(held, rates, strict=True):
        for name in owners:
            used[name] = rate if used[name] is None else max(used[name], rate)
    return used


def _events(learner: Fitted) -> StepEvents:
    """The callbacks' step events, with the step counted and the rate each step used recorded, per optimizer
    group and per layer group, and the step's training loss."""
    state = learner.fit_state
    try:
        names, held = _layer_names(learner.placement.model, learner.optimizer)
    except Exception:  # a model the layer-group rules cannot split: the optimizer groups alone are recorded
        names, held = [], []

    def begin() -> None:
        state.stepped = False
        notify(learner.callbacks, "on_step_begin", learner)

    def stepped(optimizer: torch.optim.Optimizer) -> None:
        state.step += 1
        state.stepped = True
        rates = learner.loop.step_rates or [group["lr"] for group in optimizer.param_groups]
        state.lr_history.append(list(rates))
        state.loss_history.append(learner.loop.step_loss)
        if names and len(held) == len(rates):
            state.layer_lr_history.append(_layer_rates(names, held, rates))

    return StepEvents(begin, stepped, lambda: notify(learner.callbacks, "on_step_end", learner))


def _one_epoch(learner: Fitted) -> None:
    notify(learner.callbacks, "on_epoch_begin", learner)
    start = time.perf_counter()
    state, placement = learner.fit_state, learner.placement
    train, valid = learner.cache[:2] if learner.cache else (learner.train_dl, learner.valid_dl)
    set_sampler_epoch(train, len(state.history))
    epoch, distributed = len(state.history) + 1, placement.distributed  # the epoch within the whole run
    stage = state.stage or "fit"  # a fine-tune's stage ("frozen", "top2", "unfrozen"); a plain fit's: "fit"
    desc = f"epoch {epoch}" + (f" ({state.stage})" if state.stage else "")
    batches = epoch_batches(train, [learner.train_dl, learner.valid_dl], state, distributed=distributed)
    train_loss = learner.loop.train_epoch(
        placement.network,
        _bar(learner, batches, desc, total=len(train), initial=state.progress.batch),
        learner.optimizer,  # type: ignore[arg-type]
        n_batches=len(train),
        events=_events(learner),
        where=lambda i: f"epoch {epoch}, batch {i + 1}",
        progress=state.progress,
        network=placement.current if distributed else None,
    )
    state.progress = EpochProgress()
    record: dict[str, Any] = {"stage": stage, "phase": state.phase, "epoch": epoch, "train_loss": train_loss}
    if valid is not None:  # the plain module: its parameters are the same on every rank
        plain = placement.trained
        # sharded layers gather their parameters at every forward: every rank runs as many
        forwards = int(reduce_max(torch.tensor(len(valid), device=placement.device))) if is_sharded(plain) else 0
        bar = _bar(learner, valid, f"epoch {epoch} valid", total=_length_or_none(valid))
        keep = learner.kept.collector(learner)  # the report after training reads the exported epoch's outputs
        record.update(learner.loop.evaluate(plain, bar, learner.metric_set, forwards=forwards, keep=keep))
    record["seconds"] = time.perf_counter() - start
    state.history.append(record)
    state.epoch_steps.append(len(state.loss_history))  # where the epoch ends in the per-step records
    state.epoch += 1
    notify(learner.callbacks, "on_epoch_end", learner, record)


def _length(loader: Any) -> int:
    """Batches per epoch (for the schedule and the progress), or an error naming how to declare them."""
    try:
        return len(loader)
    except TypeError:
        raise TypeError(
            "Learner: the training loader has no length (an IterableDataset without __len__); declare one: "
            "give the dataset a __len__ (webdataset: .with_length(samples)), or use torchgraft.data.SampleStream."
        ) from None


def _start(learner: Fitted, kind: str, epochs: int, lr: LRSpec, schedule: Schedule, resume: str | Path | None) -> None:
    """The fit's model placement, optimizer, cache, wrapper, schedule and counters (a resumed fit's restored)."""
    _ = learner.task  # inferred from the first batch when none was given (before any sharding or wrapping)
    learner.placement.shard()
    optimizer = _prepare_optimizer(learner, lr)
    _set_cache(learner)
    learner.placement.wrap(learner.cache[2] if learner.cache is not None else None)
    steps = math.ceil(_length(learner.train_dl) / learner.loop.accumulate) * epochs
    learner.loop.scheduler = schedule(optimizer, steps)
    learner.fit_state.start_fit({"kind": kind, "epochs": epochs})
    learner.loop.checked = False  # check the first batch's targets against the task again
    if resume is not None:
        learner.fit_state = restore(resume, learner.fit_state, trained_objects(learner))


def run_fit(
    learner: Fitted, kind: str, epochs: int, lr: LRSpec, schedule: Schedule, resume: str | Path | None
) -> list[dict[str, Any]]:
    """Run one fit (``kind`` names the call: ``"fit"``, ``"fit_one_cycle"``) of ``epochs`` at ``lr`` on
    ``schedule(optimizer, steps)``, resumed from ``resume`` when given; returns the history of every fit.

    Raises:
        ValueError: ``epochs < 1``.
        TrainingDivergedError: the loss became NaN or infinite (the message names the last good checkpoint).
    """
    if epochs < 1:
        raise ValueError(f"{kind}: epochs must be >= 1, got {epochs}.")
    _start(learner, kind, epochs, lr, schedule, resume)
    notify(learner.callbacks, "on_fit_begin", learner)
    where = learner.checkpoint_dir
    try:
        while learner.fit_state.epoch < epochs and not learner.fit_state.stop:
            _one_epoch(learner)
    except KeyboardInterrupt:
        if not learner.quiet:
            last = str(where / "last.pt") if where else ""
            hint = f"; resume with {option(f'resume={last}', f'--resume (from {last})')}" if where else ""
            print(f"interrupted after {learner.fit_state.epoch} of {epochs} epochs{hint}", file=sys.stderr)
        raise
    except TrainingDivergedError as error:
        last = where / "last.pt" if where is not None else None
        good = f" The last good checkpoint is {last}." if last is not None and last.is_file() else ""
        raise TrainingDivergedError(f"{error}{good}") from None
    learner.fit_state.phase += 1
    learner.cache = None
    notify(learner.callbacks, "on_fit_end", learner)
    return learner.fit_state.history
