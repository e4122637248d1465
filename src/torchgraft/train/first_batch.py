"""The task of a Learner given none, inferred from its first training batch.

The first batch is read and run through the model once (evaluation mode, no gradients), with every random
generator — Python's, torch's, the loaders' own — put back afterwards and every module's train/eval mode
kept, so that a fit with an inferred task draws exactly the data and the dropout a fit with ``task=``
draws (resumed fits included). Under ``torchrun`` rank 0 decides, for every rank.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from torchgraft.tasks import TASKS, Classification, Task
from torchgraft.tasks.batch import call_model
from torchgraft.tasks.infer import TaskInferenceError, infer_task
from torchgraft.train.distributed import is_main, on_main
from torchgraft.train.loop import Loop
from torchgraft.train.runstate import get_loader_rng_state, get_rng_state, set_loader_rng_state, set_rng_state

__all__ = ["check_metric_names", "first_outputs", "inferred_task"]


def check_metric_names(specs: Any) -> None:
    """Before the task is known: refuse metric names that no task knows (each task checks its own later).

    Raises:
        ValueError: a name no task knows; the message lists each task's.
    """
    names = [specs] if isinstance(specs, str) else [s for s in specs or () if isinstance(s, str)]
    known = {name for task in TASKS.values() for name in task.metric_names}
    for name in names:
        if name not in known:
            choices = "; ".join(f"{key}: {', '.join(task.metric_names)}" for key, task in TASKS.items())
            raise ValueError(
                f"Learner: unknown metric {name!r} for any task ({choices}); or pass a torchmetrics Metric or a "
                f"callable(outputs, targets)."
            )


def first_outputs(model: nn.Module, loader: Iterable[Any], loop: Loop) -> tuple[torch.Tensor, Any] | None:
    """The model's outputs and the targets of ``loader``'s first batch (``None`` for an empty loader), every
    random generator and every module's mode left as they were."""
    rng, loader_rng = get_rng_state(), get_loader_rng_state([loader])
    modes = [(module, module.training) for module in model.modules()]
    try:
        batch = next(iter(loader), None)
        if batch is None:
            return None
        inputs, targets = loop.prepare(batch)
        model.eval()
        with torch.no_grad(), loop.autocast():
            outputs = loop.task.outputs(call_model(model, inputs))
        return outputs.float(), targets
    finally:
        for module, training in modes:
            module.training = training
        set_rng_state(rng)
        set_loader_rng_state([loader], loader_rng)


def _decide(
    model: nn.Module, loader: Iterable[Any], loop: Loop, *, target_key: str, own_loss: bool
) -> tuple[Task, str]:
    seen = first_outputs(model, loader, loop)
    if seen is None:
        return Classification(target_key=target_key), ""  # nothing to train on: the fit says so itself
    outputs, targets = seen
    try:
        task, reason = infer_task(outputs, targets, target_key=target_key)
        old_default = isinstance(task, Classification) and not targets.is_floating_point()
        return task, "" if old_default else reason  # class ids: what a Learner always assumed, not announced
    except TaskInferenceError:
        if not own_loss:
            raise
        shape = tuple(outputs.shape)
        return Task(target_key=target_key), f"outputs {shape} fit no task: your loss=, no metrics"


def inferred_task(
    model: nn.Module,
    loader: Iterable[Any],
    loop: Loop,
    *,
    target_key: str,
    own_loss: bool,
    quiet: bool,
) -> Task:
    """The task of ``loader``'s first batch (:func:`torchgraft.tasks.infer.infer_task`), said in one line on
    rank 0 (except classification from class ids, which a Learner given no task always did). With
    ``own_loss`` (the user's ``loss=`` and ``metrics=None``) outputs that fit no task train as they are,
    under a plain :class:`~torchgraft.tasks.Task`.

    Raises:
        TaskInferenceError: the batch fits no task, or several; the message names ``task=``.
    """
    task, reason = on_main(_decide, model, loader, loop, target_key=target_key, own_loss=own_loss)
    if reason and not quiet and is_main():
        name = task.name if type(task) is not Task else "none"
        print(f"task: {name}, inferred from the first batch ({reason}); pass task= to choose", file=sys.stderr)
    return task
