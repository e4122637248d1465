"""Files that passed the check before training but failed to decode during it: reported at the end of every
epoch, gathered from every rank of a ``torchrun`` job, and counted against ``max_bad``, beyond which the run
stops with a :class:`~torchgraft.data.samples.DataError` listing them.

The datasets replace such a file by another sample and record it
(:class:`~torchgraft.data.folders.ImageDataset`, :class:`~torchgraft.data.badfiles.BadFiles`);
:class:`UnreadableFiles` is the Learner callback that reads those records.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch.distributed as dist

from torchgraft.data.images import BadImage
from torchgraft.data.samples import DataError
from torchgraft.spelling import option
from torchgraft.train.callbacks import Callback
from torchgraft.train.distributed import world_size

__all__ = ["UnreadableFiles", "default_max_bad", "listed"]


def default_max_bad(files: int) -> int:
    """The bad files a run of ``files`` files tolerates by default: 0.1% of them, at least 5."""
    return max(5, files // 1000)


def _recording(loader: Any) -> Any:
    """The dataset of ``loader`` (looking through wrappers' ``.dataset``) that has ``bad_samples()``, or None."""
    dataset = getattr(loader, "dataset", None)
    while dataset is not None and not callable(getattr(dataset, "bad_samples", None)):
        dataset = getattr(dataset, "dataset", None)
    return dataset


def listed(bad: Sequence[BadImage], count: int = 3) -> str:
    """``"a.jpg (OSError: ...); b.jpg (...) and 4 more"``: the first ``count`` files and their errors."""
    more = f" and {len(bad) - count} more" if len(bad) > count else ""
    return "; ".join(f"{b.path} ({b.reason})" for b in bad[:count]) + more


class UnreadableFiles(Callback):
    """After each epoch: the files the datasets replaced so far (every worker's and every rank's), one line
    through ``say`` when there are any, and a :class:`DataError` naming them when there are more than
    ``max_bad``; the count is also checked every :attr:`every` optimizer steps, so a run on damaged data stops
    within minutes, not after an epoch of hours. Every rank takes part (the records are gathered), so every rank
    stops at the same step.

    Example:
        >>> watch = UnreadableFiles.watching(learner, max_bad=10, say=print)
        >>> learner.fit(1); watch.found
        []
    """

    every = 50  # optimizer steps between two counts within an epoch

    def __init__(self, datasets: Sequence[Any], *, max_bad: int, say: Callable[[str], None] = print) -> None:
        self.datasets, self.max_bad, self.say = list(datasets), max_bad, say
        self.found: list[BadImage] = []

    @classmethod
    def watching(
        cls, learner: Any, *, max_bad: int | None, say: Callable[[str], None] = print
    ) -> UnreadableFiles | None:
        """The callback for the datasets of ``learner``'s loaders that record bad files, added to the Learner
        (``None`` when none does); ``max_bad`` ``None``: :func:`default_max_bad` of their sizes."""
        datasets = [d for d in (_recording(learner.train_dl), _recording(learner.valid_dl)) if d is not None]
        if not datasets:
            return None
        samples = sum(getattr(d, "sample_count", None) or len(d) for d in datasets)  # a stream's len: batches
        limit = max_bad if max_bad is not None else default_max_bad(samples)
        watch = cls(datasets, max_bad=limit, say=say)
        learner.add_callback(watch)
        return watch

    def collect(self) -> list[BadImage]:
        """Every file recorded so far, on any rank, each once (every rank must call it)."""
        local = [bad for dataset in self.datasets for bad in dataset.bad_samples()]
        if world_size() > 1:
            gathered: list[Any] = [None] * world_size()
            dist.all_gather_object(gathered, [(b.path, b.reason) for b in local])
            local = [BadImage(path, reason) for part in gathered for path, reason in part]
        first: dict[str, BadImage] = {}
        for bad in local:
            first.setdefault(bad.path, bad)
        return list(first.values())

    def on_step_end(self, learner: Any) -> None:
        """Every :attr:`every` optimizer steps: stop the run beyond ``max_bad`` (no line: the epoch's end reports)."""
        if learner.stepped and learner.step % self.every == 0:
            self._stop_beyond_max(self.collect())

    def on_epoch_end(self, learner: Any, record: dict[str, Any]) -> None:
        """Report the files met so far; stop the run beyond ``max_bad``."""
        found = self.collect()
        if found:
            self.say(f"  {len(found)} unreadable files replaced by other samples so far: {listed(found)}")
        self._stop_beyond_max(found)

    def _stop_beyond_max(self, found: list[BadImage]) -> None:
        self.found = found
        if len(found) > self.max_bad:
            limit = option(f"max_bad={self.max_bad}", f"--max-bad {self.max_bad}")
            full, more = option("check_mode='full'", "--check full"), option("max_bad=N", "--max-bad N")
            raise DataError(
                f"{len(found)} image files failed to decode during training, more than {limit}: "
                f"{listed(found, 10)}. Fix or remove them (or check every file before training: {full}), "
                f"or allow more ({more})."
            )

    def summary(self) -> list[dict[str, str]]:
        """The files replaced in the run, as ``{"path", "error"}`` records (for the run's JSON summary)."""
        return [{"path": bad.path, "error": bad.reason} for bad in self.found]
