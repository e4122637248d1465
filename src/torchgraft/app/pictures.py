"""The task's pictures of a run and its per-class table, written after training from the validation outputs the
run kept (:mod:`torchgraft.train.kept`): ``RUN_DIR/pictures/*.png`` (:meth:`Task.pictures
<torchgraft.tasks.Task.pictures>`) and ``RUN_DIR/per_class.csv`` (:meth:`Task.per_class
<torchgraft.tasks.Task.per_class>`).

The worst samples are shown from the validation inputs the recipe names (:meth:`InputRecipe.validation_inputs
<torchgraft.app.inputs.InputRecipe.validation_inputs>`), put in the order the validation loader reads them
(:func:`loader_order`), which is the order of the outputs.
"""

from __future__ import annotations

import csv
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from torchgraft.tasks import Task
from torchgraft.tasks.pictures import ValidationInputs

__all__ = ["PER_CLASS", "PICTURES", "loader_order", "write_per_class", "write_pictures"]

PICTURES = "pictures"  # the folder of RUN_DIR the task's pictures go to
PER_CLASS = "per_class.csv"


def loader_order(loader: Any, count: int) -> list[int] | None:
    """The places of ``count`` samples in the order ``loader`` reads them: a length-sorted batch sampler's own
    order (:meth:`LengthGroupedBatches.in_order <torchgraft.data.tokens.LengthGroupedBatches.in_order>`), a
    sequential loader's ``0..count-1``; ``None`` when the order is not known (a shuffled or custom sampler, a
    stream)."""
    batches = getattr(loader, "batch_sampler", None)
    in_order = getattr(batches, "in_order", None)
    if callable(in_order) and not getattr(batches, "shuffle", True):
        order = [i for batch in in_order() for i in batch]
        return order if sorted(order) == list(range(count)) else None
    sampler = getattr(loader, "sampler", None)
    if isinstance(sampler, torch.utils.data.SequentialSampler) and len(sampler) == count:
        return list(range(count))
    return None


def _ordered(inputs: ValidationInputs | None, loader: Any) -> ValidationInputs | None:
    if inputs is None:
        return None
    order = loader_order(loader, len(inputs.items))
    return None if order is None else dataclasses.replace(inputs, items=[inputs.items[i] for i in order])


def write_per_class(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """``rows`` (:meth:`Task.per_class`) as a CSV file: one line per class, numbers at full precision, an empty
    cell for a value that does not exist (a class with no pixel)."""
    keys = list(dict.fromkeys(k for row in rows for k in row))
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)
    return path


def write_pictures(
    task: Task,
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    classes: Sequence[str],
    run_dir: Path,
    *,
    inputs: ValidationInputs | None,
    loader: Any,
) -> list[Path]:
    """``per_class.csv`` and the task's pictures in ``RUN_DIR/pictures`` from the validation ``batches`` (as
    :meth:`Task.kept` made them, in the order of ``loader``, the whole validation loader); ``inputs``: the
    validation samples in the data's order (``None``: the worst samples are not shown). Without matplotlib
    the table is written and the pictures are skipped, said once on stderr."""
    files = []
    rows = task.per_class(batches, classes)
    if rows:
        files.append(write_per_class(rows, run_dir / PER_CLASS))
    try:
        files += task.pictures(batches, classes, run_dir / PICTURES, inputs=_ordered(inputs, loader))
    except ImportError as error:  # matplotlib is optional: the run is complete without pictures
        print(f"pictures skipped: {error}", file=sys.stderr)
    return files
