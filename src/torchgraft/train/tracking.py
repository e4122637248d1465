"""What a training run tells the tracking tools people already watch runs in (TensorBoard, MLflow): the base of
the loggers, a :class:`~torchgraft.train.callbacks.Callback` that turns the Learner's events into a logger's few
writes, on rank 0 only.

What is logged, on one step axis (optimizer steps over every fit of the Learner, a fine-tune's stages one after
another, from 1):

- ``train/loss`` per step: ``learner.loss_history``, the mean loss of the step's batches (with ``accumulate=N``,
  its N batches), rank 0's own batches under ``torchrun``;
- ``lr/<group>`` per step: the rate each layer group's parameters used in that step, under the plan's names
  (``body0``, ``body1``, ``head``; a frozen group is left out), or ``lr/optimizer group <i>`` for a model the
  layer-group rules cannot split;
- ``epoch/<name>`` per epoch, at the epoch's last step: every number of the history row (``train_loss``,
  ``valid_loss``, the metrics, ``seconds``);
- parameters: the Learner's (``learner.*``: optimizer, weight decay, accumulation, mixed precision, device, world
  size, task, metrics) and each fit's (``fit<n>.*``: kind, epochs, stage, first step, each layer group's peak
  rate); ``torchgraft train`` adds its settings and ``plan.txt``;
- steps are written in batches of :data:`FLUSH_EVERY` and at each epoch's end (one call to the tool, not one per
  step);
- texts: ``fits`` (a line per fit: its stage, the trained groups with their peak rates, the frozen ones),
  ``stages`` (each history row's stage: the row's own ``stage``, else the fit's) and ``plan`` when one is given;
- files (MLflow): ``torchgraft train`` adds the exported model under ``model/``, the history, plan and plots.

Example:
    >>> learner = Learner(model, train_dl, valid_dl, loggers=["tensorboard", "mlflow"])
    >>> learner.fine_tune(2)
    >>> learner.close()  # ends the MLflow run (else it ends when the process does)
"""

from __future__ import annotations

import atexit
import importlib
import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from torchgraft.spelling import option
from torchgraft.train.callbacks import Callback
from torchgraft.train.distributed import is_main, world_size

__all__ = [
    "FLUSH_EVERY",
    "MODEL_FILES",
    "StepRecord",
    "Tracker",
    "log_run_files",
    "log_run_start",
    "require_extra",
    "trackers_of",
]

FLUSH_EVERY = 50  # steps written to the tool at once (MLflow: one log_batch call, not one per step)

StepRecord = tuple[int, float, dict[str, float]]  # (step, wall time, {tag: value})


def require_extra(*modules: str, logger: str, package: str, extra: str) -> Any:
    """The last of ``modules`` imported, each in turn (the library itself first: a module of another package
    imported before proves nothing), or an ``ImportError`` in one line naming the logger and the install command.

    Example:
        >>> require_extra("mlflow", "mlflow.tracking", logger="mlflow", package="mlflow-skinny", extra="mlflow")
    """
    try:
        return [importlib.import_module(module) for module in modules][-1]
    except ImportError as error:
        asked = option(f"loggers=[{logger!r}]", f"--log {logger}")
        raise ImportError(
            f"{asked} needs {package}, which is not installed ({error}); install it with: "
            f"pip install 'torchgraft[{extra}]'"
        ) from None


def _number(value: Any) -> float | None:
    """``value`` as a float when it is a real number (not a bool), else ``None`` (a stage's name, ...)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _rates(learner: Any) -> dict[str, float]:
    """The rates the last step used: per layer group under the plan's names (frozen groups left out), else per
    optimizer group."""
    if learner.layer_lr_history and len(learner.layer_lr_history) == len(learner.lr_history):
        return {f"lr/{name}": rate for name, rate in learner.layer_lr_history[-1].items() if rate is not None}
    return {f"lr/optimizer group {i}": rate for i, rate in enumerate(learner.lr_history[-1])}


def _fit_groups(learner: Any) -> tuple[dict[str, float], list[str]]:
    """The fit's peak rate per trained layer group (the optimizer groups' ``max_lr`` under one-cycle, else their
    ``lr``) and the frozen groups' names; ``({}, [])`` for a model the layer-group rules cannot split."""
    from torchgraft.tune.groups import layer_groups

    try:
        groups = layer_groups(learner.model)
    except Exception:  # the layer-group rules cannot split the model: nothing to name
        return {}, []
    owner = {id(p): group.name for group in groups for p in group.params}
    peaks: dict[str, float] = {}
    for entry in learner.optimizer.param_groups if learner.optimizer is not None else []:
        rate = float(entry.get("max_lr", entry["lr"]))
        for name in {owner[id(p)] for p in entry["params"] if id(p) in owner and p.requires_grad}:
            peaks[name] = max(peaks.get(name, rate), rate)
    trained = {group.name: peaks[group.name] for group in groups if group.name in peaks}
    return trained, [group.name for group in groups if group.name not in trained]


class Tracker(Callback):
    """The events of a Learner as a tracking tool's writes; subclasses give the tool's five calls (``_open``,
    ``_scalars``, ``_params``, ``_text``, ``_close``; ``_artifacts`` where the tool keeps files).

    Only rank 0 writes (every method returns at once on the other ranks); the tool is opened at the first
    event (in the training thread: a store that refuses fails there), then written by one thread of its own, in
    order, off the training loop's path (MLflow's file store takes ~0.4 ms per value); flushed (waited for) at
    the end of every fit and closed by :meth:`close` (``Learner.close()``), else when the process ends: finished
    after a fit ended, failed when it ends inside one. A write that fails is raised in the training thread at
    the next event.
    """

    name = "tracker"

    def __init__(self) -> None:
        self.opened = False
        self.pending: list[StepRecord] = []
        self.in_fit = False
        self.learner_logged = False
        self.params: dict[str, str] = {}  # logged so far (a tool such as MLflow refuses a changed value)
        self.learner_steps = 0  # optimizer steps of every fit so far: the step axis, read at every event
        self.fit_lines: list[str] = []  # one line per fit: the ``fits`` text
        self.stage_lines: list[str] = []  # one line per epoch whose stage is known: the ``stages`` text
        self.queue: queue.Queue[tuple[Callable[..., None], tuple[Any, ...]] | None] = queue.Queue()
        self.worker: threading.Thread | None = None
        self.error: BaseException | None = None  # the first failed write, raised at the next call

    # the tool's own calls ------------------------------------------------------------------------------------
    def _open(self) -> None:
        raise NotImplementedError

    def _scalars(self, rows: list[StepRecord]) -> None:
        """Write ``(step, wall time, {tag: value})`` rows, in step order."""
        raise NotImplementedError

    def _params(self, params: dict[str, str], step: int) -> None:
        raise NotImplementedError

    def _text(self, name: str, text: str, step: int) -> None:
        raise NotImplementedError

    def _artifacts(self, paths: list[Path], folder: str | None) -> None:
        """Keep files (a tool without a file store keeps none)."""

    def _flush_tool(self) -> None:
        """Make everything written so far readable."""

    def _close(self, status: str) -> None:
        raise NotImplementedError

    # the writing thread ----------------------------------------------------------------------------------------
    def _work(self) -> None:
        while (item := self.queue.get()) is not None:
            try:
                if self.error is None:  # after a failure nothing more is written until it is raised
                    item[0](*item[1])
            except BaseException as error:  # raised in the training thread by _later or _drain
                self.error = error
            finally:
                self.queue.task_done()
        self.queue.task_done()

    def _raise_failure(self) -> None:
        if self.error is not None:
            error, self.error = self.error, None
            raise RuntimeError(f"{type(self).__name__}: writing to {self.name} failed: {error}") from error

    def _later(self, write: Callable[..., None], *args: Any) -> None:
        """``write(*args)`` in the writing thread, after every write asked before it."""
        self._raise_failure()
        self.queue.put((write, args))

    def _drain(self) -> None:
        """Wait for every write asked so far."""
        self.queue.join()
        self._raise_failure()

    # what the run pipeline (and a user) calls -----------------------------------------------------------------
    def _ready(self) -> bool:
        if not is_main():
            return False
        if not self.opened:
            self._open()
            self.opened = True
            self.worker = threading.Thread(target=self._work, name=f"torchgraft-{self.name}", daemon=True)
            self.worker.start()
            atexit.register(self._at_exit)
        return True

    def log_params(self, params: Mapping[str, Any], *, prefix: str = "") -> None:
        """Record ``params`` (values as text; ``None`` as ``"None"``), each name after ``prefix``; a name already
        recorded with the same value is left out."""
        if not self._ready():
            return
        named = {f"{prefix}{key}": str(value) for key, value in params.items()}
        new = {key: value for key, value in named.items() if self.params.get(key) != value}
        if new:
            self.params.update(new)
            self._later(self._params, new, self._step_now())

    def log_text(self, name: str, text: str) -> None:
        """Record ``text`` under ``name`` (TensorBoard: a text summary at the current step; MLflow: ``name.txt``)."""
        if self._ready():
            self._later(self._text, name, text, self._step_now())

    def log_artifacts(self, paths: Iterable[str | Path], *, folder: str | None = None) -> None:
        """Keep the files (and folders) ``paths`` in the tool's file store, under ``folder`` (MLflow's
        artifacts; TensorBoard keeps no files)."""
        if self._ready():
            self._later(self._artifacts, [Path(p) for p in paths], folder)

    def flush(self) -> None:
        """Write the buffered steps and make everything readable; returns when it is written."""
        if not self.opened or not is_main():
            return
        self._write_pending()
        self._later(self._flush_tool)
        self._drain()

    def close(self) -> None:
        """Flush and end the run (MLflow: status ``FINISHED``, or ``FAILED`` inside a fit). Logging again opens
        a new one."""
        if not self.opened:
            return
        self.opened = False
        atexit.unregister(self._at_exit)
        try:
            self._write_pending()
            self._later(self._close, "FAILED" if self.in_fit else "FINISHED")
            self._drain()
        finally:
            self.queue.put(None)  # the writing thread ends
            if self.worker is not None:
                self.worker.join()

    def _at_exit(self) -> None:
        self.close()

    # the Learner's events -------------------------------------------------------------------------------------
    def _step_now(self) -> int:
        return self.learner_steps

    def on_fit_begin(self, learner: Any) -> None:
        self.learner_steps = len(learner.lr_history)
        self.in_fit = True
        fit = learner.phase + 1  # the Learner's fits from 1 (a resumed run's too: the phase is restored)
        if not self._ready():
            return
        if not self.learner_logged:
            self.log_params(self._learner_params(learner), prefix="learner.")
            self.learner_logged = True
        self.log_params(self._fit_params(learner), prefix=f"fit{fit}.")
        trained, frozen = _fit_groups(learner)
        stage = f" ({learner.stage})" if learner.stage else ""
        trains = ", ".join(f"{name} {rate:.3g}" for name, rate in trained.items()) or "-"
        kind, epochs = learner.fit_state.kind.get("kind", "fit"), learner.fit_state.kind.get("epochs")
        self.fit_lines.append(
            f"fit {fit}{stage}: {kind}, {epochs} epoch{'s' if epochs != 1 else ''} from step "
            f"{self.learner_steps + 1}; trains: {trains}; frozen: {', '.join(frozen) or 'none'}"
        )
        self._later(self._text, "fits", "\n".join(self.fit_lines), self.learner_steps)

    def _learner_params(self, learner: Any) -> dict[str, Any]:
        loop = learner.loop
        return {
            "optimizer": learner.optimizer_class.__name__,
            "weight_decay": learner.weight_decay,
            "accumulate": loop.accumulate,
            "clip_grad": loop.clip_grad,
            "amp": str(loop.amp_dtype).removeprefix("torch.") if loop.amp_dtype is not None else None,
            "device": str(learner.device),
            "world_size": world_size(),
            "strategy": learner.strategy,
            "task": learner.task.name,
            "metrics": ", ".join(learner.metric_set.names) or "-",
        }

    def _fit_params(self, learner: Any) -> dict[str, Any]:
        trained, _ = _fit_groups(learner)
        params = {
            "kind": learner.fit_state.kind.get("kind"),
            "epochs": learner.fit_state.kind.get("epochs"),
            "stage": learner.stage,
            "first_step": self.learner_steps + 1,
            **{f"lr.{name}": rate for name, rate in trained.items()},
        }
        return {key: value for key, value in params.items() if value is not None}

    def on_step_end(self, learner: Any) -> None:
        if not learner.stepped or not is_main():
            return
        self.learner_steps = len(learner.lr_history)
        values = {"train/loss": learner.loss_history[-1], **_rates(learner)}
        self.pending.append((self.learner_steps, time.time(), values))
        if len(self.pending) >= FLUSH_EVERY:
            self._ready()
            self._write_pending()

    def _write_pending(self) -> None:
        """The buffered steps written, in one call to the tool."""
        if self.pending:
            rows, self.pending = self.pending, []
            self._later(self._scalars, rows)

    def on_epoch_end(self, learner: Any, record: dict[str, Any]) -> None:
        self.learner_steps = len(learner.lr_history)
        if not self._ready():
            return
        self._write_pending()
        values = {f"epoch/{key}": _number(value) for key, value in record.items() if key not in ("phase", "epoch")}
        numbers = {key: value for key, value in values.items() if value is not None}
        self._later(self._scalars, [(self.learner_steps, time.time(), numbers)])
        stage = record.get("stage") or learner.stage  # the history row's own stage name, where it has one
        if stage:
            row = len(learner.history)
            self.stage_lines.append(f"row {row}: {stage}, to step {self.learner_steps}")
            self._later(self._text, "stages", "\n".join(self.stage_lines), self.learner_steps)

    def on_fit_end(self, learner: Any) -> None:
        self.in_fit = False
        self.flush()


def trackers_of(learner: Any) -> list[Tracker]:
    """The :class:`Tracker` callbacks of ``learner``."""
    return [callback for callback in learner.callbacks if isinstance(callback, Tracker)]


def log_run_start(learner: Any, settings: Mapping[str, Any], plan: str) -> None:
    """A run's settings (as parameters named after them) and its plan (text ``plan``), to every tracker of
    ``learner``; before training."""
    for tracker in trackers_of(learner):
        tracker.log_params(settings)
        tracker.log_text("plan", plan)


MODEL_FILES = ("model.json", "model.safetensors", "adapter_model.safetensors", "adapter_config.json", "hf")


def log_run_files(learner: Any, files: Iterable[Path], run_dir: Path) -> None:
    """A finished run's files to every tracker of ``learner`` that keeps files, then its runs ended: the
    exported model (:data:`MODEL_FILES`, a text model's ``hf/`` included) under ``model/``, the history, plan
    and plots at the top; checkpoints stay in the RUN_DIR."""
    for tracker in trackers_of(learner):
        for path in files:
            parts = path.relative_to(run_dir).parts if path.is_relative_to(run_dir) else (path.name,)
            if parts[0] == "checkpoints" or not path.exists():
                continue
            folder = "/".join((["model"] if parts[0] in MODEL_FILES else []) + list(parts[:-1])) or None
            tracker.log_artifacts([path], folder=folder)
        tracker.close()
