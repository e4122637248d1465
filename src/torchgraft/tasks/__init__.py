"""Tasks: what a batch means, the loss, the metrics, the report after training, how outputs decode into
predictions (one module per task), and the registry that names them.

``get_task("classify")`` or a :class:`Task` object tells the Learner, ``lr_find``, the feature cache and
run/export/predict/deploy everything that depends on the learning problem. :func:`register_task` adds a task
defined outside the package under a name, so that ``torchgraft train --task NAME``, ``load_exported`` and
``predict`` know it.
"""

from __future__ import annotations

from typing import Any

from torchgraft.tasks.base import TARGET_LAYOUTS, Task, TaskReport
from torchgraft.tasks.classify import Classification
from torchgraft.tasks.detect import Detect
from torchgraft.tasks.multilabel import Multilabel, best_threshold
from torchgraft.tasks.regression import Regression
from torchgraft.tasks.segment import Segmentation

__all__ = [
    "TARGET_LAYOUTS",
    "TASKS",
    "Classification",
    "Detect",
    "Multilabel",
    "Regression",
    "Segmentation",
    "Task",
    "TaskReport",
    "best_threshold",
    "get_task",
    "register_task",
    "task_from_record",
]

TASKS: dict[str, type[Task]] = {
    "classify": Classification,
    "detect": Detect,
    "multilabel": Multilabel,
    "regression": Regression,
    "segment": Segmentation,
}


def register_task(task: type[Task], *, name: str | None = None) -> type[Task]:
    """Make ``task`` (a :class:`Task` subclass) known under ``name`` (default: its ``name`` attribute) to
    :func:`get_task`, ``torchgraft train --task``, :func:`torchgraft.load_exported` and ``predict``; returns
    it, so it also works as a class decorator. A process that loads an export of a custom task registers the
    task first (exports store its name and options, never code).

    Raises:
        TypeError: ``task`` is not a Task subclass.
        ValueError: the name is taken by another task, or ``task.targets`` is not a known layout.

    Example:
        >>> @register_task
        ... class Focal(Task):
        ...     name = "focal"
        ...     ...
    """
    if not (isinstance(task, type) and issubclass(task, Task)):
        raise TypeError(f"register_task: expects a Task subclass, got {task!r}.")
    key = name or task.name
    if key in TASKS and TASKS[key] is not task:
        raise ValueError(f"register_task: the name {key!r} is taken by {TASKS[key].__name__}; pass name=...")
    if key == "text":
        raise ValueError("register_task: 'text' names the kind of input (--task text), not a task; pick another name.")
    if task.targets not in TARGET_LAYOUTS:
        raise ValueError(
            f"register_task: {task.__name__}.targets is {task.targets!r}; the data readers produce one of "
            f"{', '.join(TARGET_LAYOUTS)}."
        )
    TASKS[key] = task
    return task


def get_task(task: str | Task | None = None, **options: Any) -> Task:
    """A task object from a name (``"classify"``, ``"multilabel"``, ``"regression"``, ``"segment"``, ``"detect"``,
    or one given to :func:`register_task`), a task object (returned as is), or ``None`` (classify).

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    if isinstance(task, Task):
        return task
    name = task or "classify"
    if name not in TASKS:
        raise ValueError(
            f"unknown task {name!r}. Choose from {', '.join(TASKS)}, pass a Task object, or register yours "
            f"with torchgraft.register_task."
        )
    return TASKS[name](**options)


def task_from_record(record: dict[str, Any]) -> Task:
    """The task an export recorded with :meth:`Task.record`.

    Raises:
        ValueError: a task this process does not know (the message says to register it).
    """
    options = {k: v for k, v in record.items() if k != "name"}
    return get_task(record["name"], **options)
