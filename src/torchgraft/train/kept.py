"""The validation outputs of the epoch a run exports, kept as the epoch validated, so that the task's report after
training (:meth:`Task.report <torchgraft.tasks.Task.report>`: the confusion matrix, the multi-label threshold, the
per-class IoU), its pictures and its per-class table (:meth:`Task.pictures <torchgraft.tasks.Task.pictures>`,
:meth:`Task.per_class <torchgraft.tasks.Task.per_class>`) read them instead of running a second full pass over
the validation set.

Kept: the outputs of the epoch that is best so far by the monitored value (the one ``best.pt`` holds and a run
exports), else of the last epoch; never more than that epoch's and the running one's. Each batch is compacted by
:meth:`Task.kept <torchgraft.tasks.Task.kept>` (segmentation keeps the predicted classes, not the logits), on the
CPU. Under ``torchrun`` each rank validates its shard (:class:`~torchgraft.train.distributed.EvalShard`); a kept
epoch's shards are gathered on rank 0 and put back in the validation set's order. An epoch whose validation is not
the exported model's own forward is not kept, and :meth:`KeptOutputs.outputs_of` says why: validated on cached
features stored at reduced precision (the default fp16; ``cache_dtype=torch.float32`` stores them exactly), under
mixed precision, or on a stream that shards itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from torchgraft.tasks import Task
from torchgraft.train.callbacks import Callback, Learner
from torchgraft.train.distributed import EvalShard, is_main, rank, world_size

__all__ = ["Batches", "KeptOutputs"]

Batches = list[tuple[Any, Any]]  # (outputs, targets) of each validation batch, on the CPU (tensors, or lists)
_READERS = ("report", "pictures", "per_class")  # the Task hooks that read the kept outputs after training


class KeptOutputs(Callback):
    """The kept validation outputs of a Learner (``learner.kept``): :meth:`outputs_of` gives an epoch's.

    Example:
        >>> learner.fine_tune(3)
        >>> best = learner.load_best()
        >>> batches, why = learner.kept.outputs_of(learner.best_epoch["index"])
        >>> report = learner.task.report(batches, classes) if batches is not None else ...
    """

    def __init__(self) -> None:
        self.epochs: dict[int, Batches] = {}  # place in the history -> its batches
        self.missing: dict[int, str] = {}  # place in the history -> why its outputs are not kept
        self._running: Batches | None = None
        self._why: str = "its validation did not run"

    def collector(self, learner: Any) -> Callable[[torch.Tensor, Any], None] | None:
        """What the validation of the epoch about to run calls with each batch's ``(outputs, targets)``, or
        ``None`` when that validation cannot stand for the exported model's (see the module)."""
        self._running, self._why = None, _not_reusable(learner)
        if self._why:
            return None
        task: Task = learner.task
        if all(getattr(type(task), hook) is getattr(Task, hook) for hook in _READERS):  # nothing reads them
            self._running = []
            return lambda outputs, targets: None
        running: Batches = []
        self._running = running
        return lambda outputs, targets: running.append(task.kept(outputs, targets))

    def on_epoch_end(self, learner: Learner, record: dict[str, Any]) -> None:
        index = len(learner.history) - 1
        best = getattr(learner, "best_epoch", None)
        wanted = best["index"] if best is not None else index  # the epoch best.pt holds, else the last
        running, why = self._running, self._why
        self._running, self._why = None, "its validation did not run"
        if wanted != index:
            return
        self.epochs.clear()
        self.missing.clear()
        if running is None:
            self.missing[index] = why
            return
        if world_size() > 1:  # every rank takes part: the decision above is the same on all (reduced metrics)
            running = _gathered(running, learner)
            if running is None:
                return
        self.epochs[index] = running

    def outputs_of(self, index: int) -> tuple[Batches | None, str]:
        """``(batches, "")`` of the epoch at ``index`` in the history (on rank 0 under ``torchrun``: the whole
        validation set), or ``(None, why)`` when they were not kept."""
        if index in self.epochs:
            return self.epochs[index], ""
        if index in self.missing:
            return None, self.missing[index]
        if self.epochs or self.missing:
            kept = next(iter({**self.epochs, **self.missing}))
            return None, f"the outputs kept are those of the best epoch (history row {kept + 1}), not row {index + 1}"
        return None, f"history row {index + 1} was not validated by this process (a resumed run's earlier epoch)"


def _not_reusable(learner: Any) -> str:
    """Why the coming epoch's validation outputs are not those of a plain forward of the model (empty: they are)."""
    if learner.cache is not None and learner.cache_dtype is not torch.float32:  # float32: the features exactly
        return "validated on cached features stored at reduced precision (cache_dtype=torch.float32 keeps them)"
    if learner.loop.amp_dtype is not None:
        return "validated under mixed precision"
    if world_size() > 1 and not isinstance(getattr(learner.valid_dl, "sampler", None), EvalShard):
        return "validated on a stream that shards itself (its order across processes is unknown)"
    return ""


def _gathered(running: Batches, learner: Any) -> Batches | None:
    """Rank 0: every rank's shard put back in the validation set's order (sample ``i`` was read by rank
    ``i % world``), in batches of the unsharded loader's size; other ranks: ``None``."""
    outputs = _joined([o for o, _ in running]) if running else None
    targets = _joined([t for _, t in running]) if running else None
    shards: list[Any] = [None] * world_size() if is_main() else []
    dist.gather_object((rank(), outputs, targets), shards if is_main() else None, dst=0)
    if not is_main():
        return None
    parts = sorted(shards, key=lambda shard: shard[0])
    world = len(parts)
    sizes = [0 if shard[1] is None else len(shard[1]) for shard in parts]
    total = sum(sizes)
    order = [(i % world, i // world) for i in range(total)]
    whole_outputs = _stacked([parts[r][1][j] for r, j in order], parts)
    whole_targets = _stacked([parts[r][2][j] for r, j in order], parts)
    size = getattr(learner.full_valid_dl, "batch_size", None) or max(1, total)
    return [(whole_outputs[s : s + size], whole_targets[s : s + size]) for s in range(0, total, size)]


def _joined(pieces: list[Any]) -> Any:
    """One shard's kept batches joined: tensors concatenated, lists (detections, per-image target dicts) chained."""
    if isinstance(pieces[0], list):
        return [item for piece in pieces for item in piece]
    return torch.cat(pieces)


def _stacked(samples: list[Any], parts: list[Any]) -> Any:
    """Samples of every shard in order, as the shards held them: a tensor, or a list (detections)."""
    if any(isinstance(shard[1], list) for shard in parts):
        return samples
    return torch.stack(samples) if samples else torch.empty(0)
