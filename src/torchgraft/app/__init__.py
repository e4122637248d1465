"""The run side: a fine-tuning run from files to an exported model — the settings, a recipe per kind of input
(:mod:`~torchgraft.app.images`, :mod:`~torchgraft.app.masks`, :mod:`~torchgraft.app.texts`), the one pipeline
that prepares it (:mod:`~torchgraft.app.prepare`) and runs it (:mod:`~torchgraft.app.run`). What leaves the run
(export, predict, deploy) is :mod:`torchgraft.ship`."""

from typing import TYPE_CHECKING

from torchgraft._lazy import lazy_exports

if TYPE_CHECKING:  # at run time each name is imported when first read (torchgraft._lazy)
    from torchgraft.app.prepare import Prepared, prepare_run
    from torchgraft.app.run import RunResult, train_run
    from torchgraft.app.settings import TrainSettings

_EXPORTS: dict[str, tuple[str, ...]] = {
    "torchgraft.app.prepare": ("Prepared", "prepare_run"),
    "torchgraft.app.run": ("RunResult", "train_run"),
    "torchgraft.app.settings": ("TrainSettings",),
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

__all__ = ["Prepared", "RunResult", "TrainSettings", "prepare_run", "train_run"]
