"""Tasks: what a batch means, the loss, the metrics, how outputs decode into predictions (one module per task).

``get_task("classify")`` or a :class:`Task` object tells the Learner, ``lr_find``, the feature cache and
export/predict everything that depends on the learning problem.
"""

from __future__ import annotations

from typing import Any

from torchgraft.tasks.base import Task
from torchgraft.tasks.classify import Classification

__all__ = ["TASKS", "Classification", "Task", "get_task"]

TASKS: dict[str, type[Task]] = {"classify": Classification}


def get_task(task: str | Task | None = None, **options: Any) -> Task:
    """A task object from a name (``"classify"``), a task object (returned as is), or ``None`` (classify).

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    if isinstance(task, Task):
        return task
    name = task or "classify"
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}. Choose from {', '.join(TASKS)} or pass a Task object.")
    return TASKS[name](**options)
