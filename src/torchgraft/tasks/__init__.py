"""Tasks: what a batch means, the loss, the metrics, how outputs decode into predictions (one module per task).

``get_task("classify")`` or a :class:`Task` object tells the Learner, ``lr_find``, the feature cache and
export/predict everything that depends on the learning problem.
"""

from __future__ import annotations

from typing import Any

from torchgraft.tasks.base import Task
from torchgraft.tasks.classify import Classification
from torchgraft.tasks.multilabel import Multilabel, best_threshold
from torchgraft.tasks.regression import Regression
from torchgraft.tasks.segment import Segmentation

__all__ = [
    "TASKS",
    "Classification",
    "Multilabel",
    "Regression",
    "Segmentation",
    "Task",
    "best_threshold",
    "get_task",
    "task_from_record",
]

TASKS: dict[str, type[Task]] = {
    "classify": Classification,
    "multilabel": Multilabel,
    "regression": Regression,
    "segment": Segmentation,
}


def get_task(task: str | Task | None = None, **options: Any) -> Task:
    """A task object from a name (``"classify"``, ``"multilabel"``, ``"regression"``, ``"segment"``), a task object
    (returned as is), or ``None`` (classify).

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    if isinstance(task, Task):
        return task
    name = task or "classify"
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}. Choose from {', '.join(TASKS)} or pass a Task object.")
    return TASKS[name](**options)


def task_from_record(record: dict[str, Any] | None) -> Task:
    """The task an export recorded with :meth:`Task.record` (``None``, from exports older than tasks:
    classification).

    Raises:
        ValueError: a task this version does not know.
    """
    if record is None:
        return Classification()
    options = {k: v for k, v in record.items() if k != "name"}
    if record.get("name") == "regression":
        options["loss"] = options.pop("loss", "mse")
    return get_task(record["name"], **options)
