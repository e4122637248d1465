"""The run side: a fine-tuning run from files to an exported model — the settings, a recipe per kind of input
(:mod:`~torchgraft.app.images`, :mod:`~torchgraft.app.masks`, :mod:`~torchgraft.app.texts`), the one pipeline
that prepares it (:mod:`~torchgraft.app.prepare`) and runs it (:mod:`~torchgraft.app.run`). What leaves the run
(export, predict, deploy) is :mod:`torchgraft.ship`."""

from torchgraft.app.prepare import Prepared, prepare_run
from torchgraft.app.run import RunResult, train_run
from torchgraft.app.settings import TrainSettings

__all__ = ["Prepared", "RunResult", "TrainSettings", "prepare_run", "train_run"]
