"""Training logged to MLflow through its own client, ``mlflow.tracking.MlflowClient`` (:mod:`torchgraft.train.tracking`
says what is logged); needs ``mlflow-skinny`` (``pip install 'torchgraft[mlflow]'``), imported only when an
:class:`MLflowLogger` is made.

Where runs go: ``tracking_uri=``, else ``MLFLOW_TRACKING_URI`` (a server, a database), else torchgraft's own
local store, a file store in ``local_dir`` (``./mlruns``; ``torchgraft train --log mlflow``: ``RUN_DIR/mlruns``):
mlflow-skinny has no database backend of its own. MLflow 3 opens a file store only with
``MLFLOW_ALLOW_FILE_STORE=true`` (the store is in maintenance mode); torchgraft sets it around its own calls to
its own local store (unless the variable is set already: then it is obeyed), and nowhere else, so a store the
user chose follows MLflow's rules. Reading the local store back needs the variable too::

    MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri runs/pets/mlruns

Example:
    >>> learner = Learner(model, train_dl, valid_dl, loggers=[MLflowLogger(experiment="pets")])
    >>> learner.fine_tune(2)
    >>> learner.close()  # the run ends FINISHED (else when the process ends)
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from torchgraft.train.tracking import StepRecord, Tracker, require_extra

__all__ = ["ALLOW_FILE_STORE", "MLflowLogger"]

ALLOW_FILE_STORE = "MLFLOW_ALLOW_FILE_STORE"  # MLflow 3's opt-in to its file store
_METRICS_PER_BATCH, _PARAMS_PER_BATCH = 1000, 100  # MLflow's limits per log_batch call


@contextlib.contextmanager
def _file_store_allowed(own: bool) -> Iterator[None]:
    """``MLFLOW_ALLOW_FILE_STORE=true`` inside the block when the store is torchgraft's own local one and the
    variable is not set (a value the user set is left as it is)."""
    if not own or ALLOW_FILE_STORE in os.environ:
        yield
        return
    os.environ[ALLOW_FILE_STORE] = "true"
    try:
        yield
    finally:
        os.environ.pop(ALLOW_FILE_STORE, None)


class MLflowLogger(Tracker):
    """A run in an MLflow experiment: metrics per step and per epoch, parameters, texts (``fits.txt``,
    ``stages.txt``, ``plan.txt``) and, from ``torchgraft train``, the exported model under the ``model/``
    artifacts. Logged through ``MlflowClient`` alone: MLflow's active run (``mlflow.start_run``) is left alone.

    Args:
        tracking_uri: where runs go (default: ``MLFLOW_TRACKING_URI``, else a file store in ``local_dir``).
        local_dir: torchgraft's own local store, when no tracking URI is given (default ``./mlruns``).
        experiment: the experiment's name (made when missing).
        run_name: the run's name (default: MLflow's own).
        tags: the run's tags.

    Raises:
        ImportError: ``mlflow`` (mlflow-skinny) is not installed (the message gives the install command).
    """

    name = "mlflow"

    def __init__(
        self,
        *,
        tracking_uri: str | None = None,
        local_dir: str | Path = "mlruns",
        experiment: str = "torchgraft",
        run_name: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__()
        tracking = require_extra("mlflow", "mlflow.tracking", logger="mlflow", package="mlflow-skinny", extra="mlflow")
        self.client_class = tracking.MlflowClient
        chosen = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        self.own_store = not chosen
        self.tracking_uri = chosen or Path(local_dir).resolve().as_uri()
        self.experiment, self.run_name, self.tags = experiment, run_name, dict(tags or {})
        self.client: Any = None
        self.run_id: str | None = None

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        with _file_store_allowed(self.own_store):
            return getattr(self.client, method)(*args, **kwargs)

    def _open(self) -> None:
        from mlflow.exceptions import MlflowException

        try:
            with _file_store_allowed(self.own_store):
                self.client = self.client_class(tracking_uri=self.tracking_uri)
        except MlflowException as error:
            if ALLOW_FILE_STORE not in str(error):
                raise
            raise ValueError(
                f"MLflowLogger: MLflow refuses the file store {self.tracking_uri} unless {ALLOW_FILE_STORE}=true "
                f"(its file store is in maintenance mode); set {ALLOW_FILE_STORE}=true, or point MLFLOW_TRACKING_URI "
                f"at a database or server (or leave it unset for torchgraft's own local store)."
            ) from None
        found = self._call("get_experiment_by_name", self.experiment)
        experiment_id = found.experiment_id if found is not None else self._call("create_experiment", self.experiment)
        tags = {"mlflow.source.name": "torchgraft", **self.tags}
        run = self._call("create_run", experiment_id, run_name=self.run_name, tags=tags)
        self.run_id = run.info.run_id

    def _scalars(self, rows: list[StepRecord]) -> None:
        from mlflow.entities import Metric

        metrics = [
            Metric(tag, value, int(wall * 1000), step) for step, wall, values in rows for tag, value in values.items()
        ]
        for start in range(0, len(metrics), _METRICS_PER_BATCH):
            self._call("log_batch", self.run_id, metrics=metrics[start : start + _METRICS_PER_BATCH])

    def _params(self, params: dict[str, str], step: int) -> None:
        from mlflow.entities import Param

        items = [Param(key, value) for key, value in params.items()]
        for start in range(0, len(items), _PARAMS_PER_BATCH):
            self._call("log_batch", self.run_id, params=items[start : start + _PARAMS_PER_BATCH])

    def _text(self, name: str, text: str, step: int) -> None:
        self._call("log_text", self.run_id, text + "\n", f"{name}.txt")

    def _artifacts(self, paths: list[Path], folder: str | None) -> None:
        for path in paths:
            if path.is_dir():
                inside = f"{folder}/{path.name}" if folder else path.name
                self._call("log_artifacts", self.run_id, str(path), inside)
            else:
                self._call("log_artifact", self.run_id, str(path), folder)

    def _close(self, status: str) -> None:
        self._call("set_terminated", self.run_id, status=status, end_time=int(time.time() * 1000))
        self.client, self.run_id = None, None
