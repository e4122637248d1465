"""The Learner: fine-tuning recipes over plain DataLoaders and torch optimizers, for any task.

``fit`` (constant rates) and ``fit_one_cycle`` (``OneCycleLR`` with each layer group's own maximum) run
epochs of :meth:`Loop.train_epoch <torchgraft.train.loop.Loop.train_epoch>` and
:meth:`Loop.evaluate <torchgraft.train.loop.Loop.evaluate>`; ``fine_tune`` trains the head with the body
frozen, then everything. What depends on the learning problem — how a batch splits, the loss, the metrics —
comes from the :class:`~torchgraft.tasks.Task`; printing, checkpoints and user code are callbacks
(:mod:`torchgraft.train.callbacks`).

The optimizer is rebuilt from :func:`torchgraft.param_groups` at the start of every ``fit`` from the model's
current parameters (moments of the parameters still there carry over), and checked before every step
(:func:`torchgraft.watch_optimizer`), so freezing, unfreezing and surgery between calls never leave a
parameter untrained — and surgery in the middle of a fit is caught before the next step.
"""

from __future__ import annotations

import functools
import gc
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from torchgraft.tasks import Task, get_task
from torchgraft.tasks.metrics import MetricSet, MetricSpec
from torchgraft.train.cache import check_cache_dtype
from torchgraft.train.callbacks import Callback, Mode, builtin_callbacks
from torchgraft.train.distributed import is_main, local_device
from torchgraft.train.finetune import FineTuning
from torchgraft.train.first_batch import check_metric_names, inferred_task
from torchgraft.train.fitting import run_fit, sweep_rates, trained_objects
from torchgraft.train.frozen_state import fingerprints
from torchgraft.train.fsdp import is_sharded
from torchgraft.train.kept import KeptOutputs
from torchgraft.train.loggers import make_loggers
from torchgraft.train.loop import Loop, TrainingDivergedError, amp_dtype
from torchgraft.train.lr_finder import LRFind
from torchgraft.train.placement import BatchNormMode, Placement, Strategy
from torchgraft.train.plots import plot_training
from torchgraft.train.resume import capture, load_best_weights, save_state
from torchgraft.train.schedule import one_cycle
from torchgraft.train.state import FitState, Held
from torchgraft.train.tracking import Tracker, trackers_of
from torchgraft.tune.optim import LRSpec

__all__ = ["Learner", "TrainingDivergedError"]


def _check_options(
    accumulate: int, save_every: int | None, checkpoint_dir: Any, task: Any, target_key: str, cache_dtype: Any
) -> None:
    """Refuse options out of range or contradicting each other, naming the fix."""
    check_cache_dtype(cache_dtype)
    if accumulate < 1:
        raise ValueError(f"Learner: accumulate must be >= 1, got {accumulate}.")
    if save_every is not None and (save_every < 1 or checkpoint_dir is None):
        raise ValueError(
            f"Learner: save_every={save_every} needs checkpoint_dir= and a number of steps >= 1 (the "
            f"mid-epoch checkpoints are written to checkpoint_dir/last.pt)."
        )
    if isinstance(task, Task) and target_key not in ("labels", task.target_key):
        raise ValueError(
            f"Learner: target_key={target_key!r} but the task reads {task.target_key!r}; set the task's own "
            f"target_key ({type(task).__name__}(target_key={target_key!r}))."
        )


class Learner(FineTuning):
    """Train ``model`` on ``train_dl``, evaluate on ``valid_dl``.

    Args:
        model: any module (a :func:`torchgraft.graft` result gets discriminative rates by layer group).
        train_dl: a DataLoader (or any iterable with ``len``) of ``(inputs, targets)`` tuples or of dicts
            (a Hugging Face collator's output: the target under ``labels``, the rest passed to the model as
            keyword arguments).
        valid_dl: batches to evaluate after each epoch (optional).
        task: a :class:`~torchgraft.tasks.Task` or its name: how batches split, the default loss, which
            metrics fit. Default: inferred from the first training batch's outputs and targets
            (:func:`torchgraft.tasks.infer.infer_task`: class ids, 0/1 rows, float values, masks), said in one
            line; what cannot be told apart is refused, naming ``task=``. With your own ``loss=`` and
            ``metrics=None`` any outputs train (no task checks).
        target_key: the key of the targets in dict batches (when ``task`` is a name).
        loss: ``loss(outputs, targets)`` instead of the task's.
        metrics: names the task knows (``"accuracy"``, ``"f1"``, ...), torchmetrics ``Metric`` objects, or
            callables ``(outputs, targets)``; each accumulated over the whole validation set. Default: the
            task's (accuracy for classification).
        monitor: what ``best.pt`` (and :class:`~torchgraft.train.callbacks.EarlyStopping`) watches
            (default: the first metric, else ``valid_loss``); ``mode``: ``"min"``/``"max"`` (default: the
            metric's own ``higher_is_better``).
        optimizer: a ``torch.optim`` optimizer class, built from :func:`torchgraft.param_groups`.
        weight_decay: weight decay of decayed parameters (none on biases, norms, embeddings).
        device: where to train (default: under ``torchrun`` each rank's own GPU, ``cuda:{LOCAL_RANK}``; else CUDA
            if available, else CPU).
        amp: ``None``, ``"bf16"`` (CPU or CUDA) or ``"fp16"`` (CUDA, with a gradient scaler).
        channels_last: channels-last memory format for the model and 4-D inputs. ``"auto"`` (default): on
            for convolutional networks with 2-D BatchNorm, where training steps measured 1.05-1.66x faster
            on CPU (bench/channels_last.py), off for the rest.
        accumulate: number of batches whose gradients are summed before a step.
        clip_grad: clip the gradient norm to this value.
        checkpoint_dir: write ``last.pt`` after every epoch and ``best.pt`` for the best monitored value,
            atomically; ``resume=`` continues from one.
        save_every: also write ``last.pt`` every this many optimizer steps, inside epochs; a fit resumed from
            it continues at the next batch, exactly (the data order and every random generator included).
        batchnorm: how BatchNorm layers that train behave: ``"train"`` (default: batch statistics of each
            process), ``"eval"`` (statistics fixed, affine parameters train; Keras' advice for fine-tuning,
            and the same at any number of processes), ``"sync"`` (``SyncBatchNorm`` across processes on CUDA).
        strategy: under ``torchrun``: ``"ddp"`` (default: a whole copy of the model per process) or ``"fsdp"``
            (FSDP2 ``fully_shard`` per layer-group block, then the root: each process holds a shard of every
            parameter, gradient and optimizer state, for models larger than one device; ``amp`` becomes FSDP2's
            mixed-precision policy; checkpoints hold whole tensors, so they equal an unsharded run's; the
            feature cache and channels-last are off). On one process both train the model as it is.
        progress: a tqdm bar per epoch with the time left (default: only when stderr is a terminal); ``False``:
            plain progress lines inside a long epoch (every ``TORCHGRAFT_PROGRESS_SECONDS``, default 20 s) and
            the epoch's row of the table (:mod:`torchgraft.train.table`).
        quiet: print nothing.
        callbacks: :class:`~torchgraft.train.callbacks.Callback` objects (events at fit/epoch/step; plain
            functions as :class:`~torchgraft.train.callbacks.LambdaCallback`).
        loggers: the tracking tools to log to (rank 0 only), by name (``"tensorboard"``, ``"mlflow"``, or
            ``"tensorboard,mlflow"``) or as :class:`~torchgraft.train.track_tensorboard.TensorBoardLogger` /
            :class:`~torchgraft.train.track_mlflow.MLflowLogger` objects: per-step loss and rates per layer
            group, per-epoch metrics, hyperparameters (:mod:`torchgraft.train.tracking`). Each needs its extra
            (``pip install 'torchgraft[tensorboard]'``, ``[mlflow]``); :meth:`close` ends their runs.
        cache_features: while a grafted body is fully frozen, store its features on disk in ``cache_dir`` once
            (``cache_dtype`` None: fp16, bf16 on overflow) and train the head on them; reused by later runs and lr_find.

    Under ``torchrun`` with several processes each rank trains on its own device and its shard of the data,
    with DDP (rebuilt per fit for what trains in it) or FSDP2; rank 0 alone prints and writes
    (:mod:`torchgraft.train.placement`).

    Example:
        >>> learner = Learner(graft(resnet18(weights="DEFAULT"), 10), train_dl, valid_dl)
        >>> learner.fine_tune(3)
    """

    epoch = Held()  # epochs completed in the current fit
    step = Held()  # optimizer steps in the current fit
    phase = Held()  # fits completed so far (a fine-tune's stages)
    stage = Held()  # the part of a fine-tune running ("frozen", "top2", "unfrozen"), else None
    history = Held()  # one record per epoch, every fit (stage, phase, epoch within the run, values; FitState)
    lr_history = Held()  # each optimizer group's rate in every step
    layer_lr_history = Held()  # per step, {layer group: rate} (None: frozen)
    loss_history = Held()  # per step, the step's training loss (every fit)
    epoch_steps = Held()  # per history row, the steps done when its epoch ended
    best_epoch = Held()  # the best epoch so far (BestEpoch): its place in the history, phase, value
    stop = Held()  # a callback sets it to end the fit after this epoch
    stepped = Held()  # whether the last batch ended with an optimizer step
    resumed = Held()  # the checkpoint the current fit resumed from
    model = Held("placement")  # the model trained (sharded in place under FSDP)
    network = Held("placement")  # what runs the training forward: DDP around the model under torchrun
    plain = Held("placement")  # under FSDP: the unsharded structure (meta), for gathered_model()
    device = Held("placement")  # where it trains
    channels_last = Held("placement")  # whether the model and 4-D inputs are channels-last
    distributed = Held("placement")  # whether it trains under torchrun with several processes
    strategy = Held("placement")  # "ddp" or "fsdp"

    def __init__(
        self,
        model: nn.Module,
        train_dl: Iterable[Any],
        valid_dl: Iterable[Any] | None = None,
        *,
        task: str | Task | None = None,
        target_key: str = "labels",
        loss: Callable[[torch.Tensor, Any], torch.Tensor] | None = None,
        metrics: Sequence[MetricSpec] | MetricSpec | Literal["default"] | None = "default",
        monitor: str | None = None,
        mode: Mode | None = None,
        optimizer: type[torch.optim.Optimizer] = torch.optim.AdamW,
        weight_decay: float = 0.01,
        device: str | torch.device | None = None,
        amp: str | None = None,
        channels_last: bool | Literal["auto"] = "auto",
        accumulate: int = 1,
        clip_grad: float | None = None,
        checkpoint_dir: str | Path | None = None,
        progress: bool | None = None,
        quiet: bool = False,
        callbacks: Sequence[Callback] = (),
        loggers: Sequence[str | Tracker] | str = (),
        cache_features: bool = False,
        save_every: int | None = None,
        batchnorm: BatchNormMode = "train",
        strategy: Strategy = "ddp",
        cache_dir: str | Path | None = None,
        cache_dtype: torch.dtype | None = None,
    ) -> None:
        _check_options(accumulate, save_every, checkpoint_dir, task, target_key, cache_dtype)
        trackers = make_loggers(loggers)  # an unknown name or a missing library fails here, before anything runs
        self._task = task if isinstance(task, Task) or task is None else get_task(task, target_key=target_key)
        self.target_key, self.metrics_spec = target_key, metrics
        where = local_device(device)
        dtype = amp_dtype(amp, where)
        placing = {"strategy": strategy, "batchnorm": batchnorm, "channels_last": channels_last}
        self.placement = Placement(model, device=where, amp_dtype=dtype, accumulate=accumulate, **placing)
        self.train_dl, self.valid_dl = self.placement.shard_loaders(train_dl, valid_dl)
        self.full_valid_dl = valid_dl  # every validation sample, unsharded: what rank 0 reports on after a fit
        self.loop = Loop(
            task=self._task or Task(target_key=target_key),  # until inferred: splits batches, nothing else
            device=where,
            loss=loss,
            amp_dtype=dtype,
            channels_last=self.channels_last,
            accumulate=accumulate,
            clip_grad=clip_grad,
            distributed=self.distributed,
            batchnorm_eval=batchnorm == "eval",
            check_targets=loss is None or metrics is not None,  # the user's loss alone: any targets it takes
        )
        self._use_task(self._task)
        self.optimizer_class, self.weight_decay = optimizer, weight_decay
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        # the parameters' first fingerprints: a checkpoint leaves out frozen ones still equal to them (frozen.pt)
        model_now = self.placement.model
        keep_all = self.checkpoint_dir is None or is_sharded(model_now) or not is_main()
        self.first_fingerprints = None if keep_all else fingerprints(model_now)
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.quiet, self.cache_features = quiet, cache_features
        self.cache_dir, self.cache_dtype = cache_dir, cache_dtype
        builtin = builtin_callbacks(self.checkpoint_dir, monitor=monitor, mode=mode, every=save_every)
        self.kept = KeptOutputs()  # the exported epoch's validation outputs, for the task's report (after BestEpoch)
        self.callbacks: list[Any] = [*builtin, self.kept, *trackers, *callbacks]
        self.optimizer: torch.optim.Optimizer | None = None
        self.fit_state = FitState()  # counters, history, best epoch, the running epoch's position
        self.cache: tuple[Any, Any, nn.Module] | None = None  # (train, valid loaders, head) of cached features
        self.watch: Any = None  # the optimizer's staleness check (torchgraft.watch_optimizer)

    @property
    def task(self) -> Task:
        """The task: the one given, else inferred from the first training batch (at the first fit, or here)."""
        if self._task is None:
            own_loss = self.loop.loss is not None and self.metrics_spec is None
            options = {"target_key": self.target_key, "own_loss": own_loss, "quiet": self.quiet}
            self._use_task(inferred_task(self.model, self.train_dl, self.loop, **options))
        return self._task  # type: ignore[return-value]  # set by _use_task

    def _use_task(self, task: Task | None) -> None:
        if task is None:
            self.metric_set = MetricSet(self.loop.task, None)
            return check_metric_names(self.metrics_spec if self.metrics_spec != "default" else None)
        self._task = self.loop.task = task
        self.metric_set = MetricSet(task, task.default_metrics if self.metrics_spec == "default" else self.metrics_spec)

    def close(self) -> None:
        """Release what ties the Learner to the process: the DistributedDataParallel wrapper (which must go
        before its process group, see :func:`torchgraft.distributed.cleanup`), the optimizer watch hook and the
        loggers' runs (ended).
        The model, history and optimizer stay usable; the Learner can train again only on one process.

        Example:
            >>> learner.fit(3, 1e-3)
            >>> learner.close()
            >>> torchgraft.distributed.cleanup()
        """
        if self.watch is not None:
            self.watch.remove()
            self.watch = None
        for tracker in trackers_of(self):  # the loggers' runs end (MLflow: FINISHED)
            tracker.close()
        self.placement.unwrap()
        self.cache = None
        gc.collect()  # the wrapper's reducer holds the process group until it is collected

    def __enter__(self) -> Learner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add_callback(self, callback: Callback) -> None:
        """Add a :class:`~torchgraft.train.callbacks.Callback`; it runs after the ones already there."""
        self.callbacks.append(callback)

    def gathered_model(self) -> nn.Module | None:
        """The trained model whole: itself, or under FSDP an unsharded copy filled with the gathered tensors on
        rank 0 (``None`` on the other ranks; every rank must call it). What a run reports on and exports."""
        return self.placement.gathered()

    def load_best(self) -> dict[str, Any]:
        """Put the weights of ``checkpoint_dir/best.pt`` (the best epoch by the monitored value, over every fit)
        into the model; returns that epoch's record. Every rank must call it.

        Raises:
            FileNotFoundError: no ``checkpoint_dir`` was given, or no epoch has ended yet.

        Example:
            >>> learner.fine_tune(3)
            >>> learner.load_best()["epoch"]
        """
        return load_best_weights(self.checkpoint_dir, self.model)

    def state(self) -> dict[str, Any]:
        """Everything a resumed fit needs (:func:`torchgraft.train.resume.capture`)."""
        return capture(self.fit_state, trained_objects(self))

    @property
    def scheduler(self) -> Any:
        """The running fit's learning-rate schedule (stepped by the loop with the optimizer), or ``None``."""
        return self.loop.scheduler

    def save(self, path: str | Path) -> None:
        """Write :meth:`state` to ``path`` atomically (on rank 0 only). Under DDP every rank must call it (the
        built-in :class:`~torchgraft.train.callbacks.Checkpointer` does): inside an epoch the ranks' partial
        training losses are summed first."""
        state, model = self.state(), self.placement.model
        first = None if is_sharded(model) else self.first_fingerprints  # FSDP shards (sharded at the fit): whole
        save_state(path, state, distributed=self.distributed, device=self.device, model=model, first=first)

    def fit(self, epochs: int, lr: LRSpec = 1e-3, *, resume: str | Path | None = None) -> list[dict[str, Any]]:
        """Train for ``epochs`` at constant learning rate(s) ``lr`` (a float, ``slice(lo, hi)`` over the layer
        groups, or one per group). Returns the history (one dict per epoch)."""
        return run_fit(self, "fit", epochs, lr, lambda optimizer, steps: None, resume)

    def fit_one_cycle(
        self,
        epochs: int,
        lr_max: LRSpec = 1e-3,
        *,
        pct_start: float = 0.25,
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
        resume: str | Path | None = None,
    ) -> list[dict[str, Any]]:
        """Train for ``epochs`` on a one-cycle schedule (:func:`torchgraft.train.schedule.one_cycle`): each
        parameter group warms up to its own maximum rate, then anneals; works from one step per fit."""
        shape = {"pct_start": pct_start, "div_factor": div_factor, "final_div_factor": final_div_factor}
        schedule = functools.partial(one_cycle, **shape)
        return run_fit(self, "fit_one_cycle", epochs, lr_max, schedule, resume)

    def plot(self, directory: str | Path) -> list[Path]:
        """Write ``loss.png`` (each step's loss, smoothed, with each epoch's validation loss, and the metrics)
        and ``lr.png`` (each layer group's rate per step) into ``directory``, over the steps of every fit, epochs
        ticked and stages marked (:mod:`torchgraft.train.plots`); needs matplotlib."""
        rates = self.layer_lr_history or [  # a model the layer-group rules cannot split: optimizer groups
            {f"optimizer group {i}": rate for i, rate in enumerate(row)} for row in self.lr_history
        ]
        records = {"step_losses": self.loss_history, "epoch_steps": self.epoch_steps}
        return plot_training(self.history, rates, directory, **records)

    def lr_find(
        self,
        *,
        start: float = 1e-7,
        end: float = 10.0,
        steps: int = 100,
        on_step: Callable[[int, float, float], None] | None = None,
    ) -> LRFind:
        """Sweep the learning rate and suggest one (:func:`torchgraft.train.lr_finder.lr_find` with this
        Learner's task, loss and autocast); the model, the optimizer and every random generator are left
        exactly as they were; with ``cache_features`` a frozen body's stored features (seconds, not minutes).
        ``on_step(step, lr, smoothed_loss)`` is called after each step (progress)."""
        return sweep_rates(self, start=start, end=end, steps=steps, on_step=on_step)
