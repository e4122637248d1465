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

import copy
import gc
import math
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from torchgraft.tasks import Task, get_task
from torchgraft.tasks.metrics import MetricSet, MetricSpec
from torchgraft.train.cache import feature_loaders
from torchgraft.train.callbacks import BestEpoch, Callback, Checkpointer, Mode, ProgressPrinter, notify
from torchgraft.train.distributed import (
    is_main,
    launched,
    local_device,
    on_main,
    reduce_max,
    reduce_sum,
    setup,
    shard_loader,
    wrap,
)
from torchgraft.train.first_batch import check_metric_names, inferred_task
from torchgraft.train.fsdp import full_model_state, is_sharded, load_full_state, plain_copy, shard_model
from torchgraft.train.loop import EpochProgress, Loop, StepEvents, TrainingDivergedError
from torchgraft.train.lr_finder import LRFind, lr_find
from torchgraft.train.recipes import Recipe, recipe_for
from torchgraft.train.resume import Trained, capture, epoch_batches, restore, set_sampler_epoch
from torchgraft.train.runstate import (
    read_state,
    write_state,
)
from torchgraft.train.schedule import one_cycle
from torchgraft.train.stages import Stage, plan_stages
from torchgraft.train.state import FitState, InState
from torchgraft.tune.freeze import BNPolicy, freeze_to
from torchgraft.tune.groups import layer_groups
from torchgraft.tune.optim import LRSpec, param_groups
from torchgraft.tune.stale import watch_optimizer

__all__ = ["Learner", "TrainingDivergedError"]

BatchNormMode = Literal["train", "eval", "sync"]
BATCHNORM_MODES: tuple[str, ...] = ("train", "eval", "sync")
Strategy = Literal["ddp", "fsdp"]
STRATEGIES: tuple[str, ...] = ("ddp", "fsdp")
Schedule = Callable[[torch.optim.Optimizer, int], Any]


def _amp_dtype(amp: str | None) -> torch.dtype | None:
    if amp in (None, False, "no"):
        return None
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    if amp not in dtypes:
        raise ValueError(f"Learner: amp={amp!r} is not a mode. Choose None, 'bf16' or 'fp16'.")
    return dtypes[amp]


def _batchnorm(model: nn.Module, mode: str, device: torch.device, distributed: bool) -> nn.Module:
    """``model`` with BatchNorm as ``mode`` asks: ``"sync"`` converts it to ``SyncBatchNorm`` under DDP on CUDA."""
    if mode not in BATCHNORM_MODES:
        raise ValueError(f"Learner: batchnorm={mode!r} is not a mode. Choose from {BATCHNORM_MODES}.")
    if mode != "sync" or not distributed:
        return model  # one process: plain BatchNorm already normalises over the whole batch
    if device.type != "cuda":
        raise ValueError(
            "Learner: batchnorm='sync' needs CUDA (SyncBatchNorm runs on GPUs only); on CPU use batchnorm='eval' "
            "(statistics fixed, the same at any number of processes) or 'train' (per-process statistics)."
        )
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def _trainable(model: nn.Module) -> tuple[int, ...]:
    """The identity of ``model``'s trainable parameters (a DDP wrapper is built for exactly these)."""
    return tuple(id(p) for p in model.parameters() if p.requires_grad)


def _has_batchnorm2d(model: nn.Module) -> bool:
    """Whether ``model`` is a convolutional network with 2-D BatchNorm (channels-last pays off there)."""
    return any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


class Learner:
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
        progress: show tqdm bars (default: only when stderr is a terminal); ``False``: one line per epoch.
        quiet: print nothing.
        callbacks: :class:`~torchgraft.train.callbacks.Callback` objects (events at fit/epoch/step; plain
            functions as :class:`~torchgraft.train.callbacks.LambdaCallback`).
        cache_features: while the body of a grafted model is fully frozen (``bn="frozen"``), compute its
            (pooled) features once and train the head on them; other fits run normally.

    Under ``torchrun`` with several processes the Learner trains with ``DistributedDataParallel`` (gloo on
    CPU, NCCL on CUDA), each rank on its own device: each rank reads its shard of the training data, the
    validation data is split without padding (each sample counted once), losses and metrics are reduced
    over all ranks, and only rank 0 prints and writes checkpoints. The wrapper is rebuilt at the start of
    every fit for the parameters that train in it, so every stage of ``fine_tune`` (frozen, gradual,
    unfrozen) averages exactly the gradients that exist and nothing frozen costs a reduction.

    Example:
        >>> learner = Learner(graft(resnet18(weights="DEFAULT"), 10), train_dl, valid_dl)
        >>> learner.fine_tune(3)
    """

    epoch = InState()  # epochs completed in the current fit
    step = InState()  # optimizer steps in the current fit
    phase = InState()  # fits completed so far (a fine-tune's stages)
    stage = InState()  # the part of a fine-tune running ("frozen", "top2", "unfrozen"), else None
    history = InState()  # one record per epoch, every fit
    lr_history = InState()  # each optimizer group's rate after every step
    best_epoch = InState()  # the best epoch so far (BestEpoch): its place in the history, phase, value
    stop = InState()  # a callback sets it to end the fit after this epoch
    stepped = InState()  # whether the last batch ended with an optimizer step
    resumed = InState()  # the checkpoint the current fit resumed from

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
        cache_features: bool = False,
        save_every: int | None = None,
        batchnorm: BatchNormMode = "train",
        strategy: Strategy = "ddp",
    ) -> None:
        if accumulate < 1:
            raise ValueError(f"Learner: accumulate must be >= 1, got {accumulate}.")
        if strategy not in STRATEGIES:
            raise ValueError(f"Learner: strategy={strategy!r} is not one. Choose from {STRATEGIES}.")
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
        self._task = task if isinstance(task, Task) or task is None else get_task(task, target_key=target_key)
        self.target_key, self.metrics_spec = target_key, metrics
        self.device = local_device(device)
        amp_dtype = _amp_dtype(amp)
        if amp_dtype is torch.float16 and self.device.type != "cuda":
            raise ValueError("Learner: amp='fp16' needs CUDA; on CPU use amp='bf16'.")
        self.channels_last = _has_batchnorm2d(model) if channels_last == "auto" else bool(channels_last)
        if strategy == "fsdp" and launched():  # FSDP2 shards contiguous parameters only
            self.channels_last = False
        memory = torch.channels_last if self.channels_last else torch.preserve_format
        self.distributed = setup(self.device)
        self.model = _batchnorm(model, batchnorm, self.device, self.distributed).to(self.device, memory_format=memory)
        self.plain: nn.Module | None = None  # under FSDP: the unsharded structure (meta), for gathered_model()
        self.strategy, self.amp_dtype = strategy, amp_dtype
        self.network: nn.Module = self.model  # what runs the training forward: DDP around it, rebuilt per fit
        self._synced: dict[int, Any] = {}  # tensors broadcast from rank 0 by an earlier DDP wrapper
        self._wrapped_for: tuple[int, ...] = ()  # the trainable parameters the DDP wrapper was built for
        self.train_dl, self.valid_dl = self._shard_loaders(train_dl, valid_dl)
        self.full_valid_dl = valid_dl  # every validation sample, unsharded: what rank 0 reports on after a fit
        scaler = torch.amp.GradScaler("cuda") if amp_dtype is torch.float16 else None
        self.loop = Loop(
            task=self._task or Task(target_key=target_key),  # until inferred: splits batches, nothing else
            device=self.device,
            loss=loss,
            amp_dtype=amp_dtype,
            channels_last=self.channels_last,
            accumulate=accumulate,
            clip_grad=clip_grad,
            scaler=scaler,
            distributed=self.distributed,
            batchnorm_eval=batchnorm == "eval",
            check_targets=loss is None or metrics is not None,  # the user's loss alone: any targets it takes
        )
        self.metric_set = MetricSet(self.loop.task, None)
        if self._task is not None:
            self._use_task(self._task)
        elif metrics != "default":
            check_metric_names(metrics)
        self.optimizer_class, self.weight_decay = optimizer, weight_decay
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.quiet = quiet
        self.callbacks: list[Any] = [ProgressPrinter(), BestEpoch(monitor, mode), *callbacks]
        if self.checkpoint_dir is not None:
            self.callbacks.insert(1, Checkpointer(self.checkpoint_dir, monitor=monitor, mode=mode, every=save_every))
        self.optimizer: torch.optim.Optimizer | None = None
        self.fit_state = FitState()  # counters, history, best epoch, the running epoch's position
        self.cache: tuple[Any, Any, nn.Module] | None = None  # (train, valid loaders, head) of cached features
        self._watch: Any = None
        self.cache_features = cache_features

    @property
    def task(self) -> Task:
        """The task: the one given, else inferred from the first training batch (at the first fit, or here)."""
        if self._task is None:
            own_loss = self.loop.loss is not None and self.metrics_spec is None
            self._use_task(
                inferred_task(
                    self.model,
                    self.train_dl,
                    self.loop,
                    target_key=self.target_key,
                    own_loss=own_loss,
                    quiet=self.quiet,
                )
            )
        assert self._task is not None
        return self._task

    def _use_task(self, task: Task) -> None:
        self._task = self.loop.task = task
        self.metric_set = MetricSet(task, task.default_metrics if self.metrics_spec == "default" else self.metrics_spec)

    # ------------------------------------------------------------------------------------------ set-up

    def _shard_loaders(self, train_dl: Iterable[Any], valid_dl: Iterable[Any] | None) -> tuple[Any, Any]:
        """The loaders, each rank reading its shard under DDP (validation unpadded)."""
        if not self.distributed:
            return train_dl, valid_dl
        valid = shard_loader(valid_dl, train=False) if valid_dl is not None else None  # type: ignore[arg-type]
        return shard_loader(train_dl), valid  # type: ignore[arg-type]

    def _unwrap(self) -> None:
        """Drop the DDP wrapper: its reducer's gradient hooks must be gone before another wrapper is built."""
        wrapped = self.network is not self.model
        self.network = self.model
        if self.cache is not None and isinstance(self.cache[2], nn.parallel.DistributedDataParallel):
            self.cache, wrapped = (*self.cache[:2], self.cache[2].module), True
        if wrapped:
            gc.collect()

    def _shard_model(self) -> None:
        """Under FSDP, shard the model before its first fit (the optimizer is then built on the shards)."""
        if self.strategy == "fsdp" and self.distributed and self.plain is None:
            self.plain = plain_copy(self.model)
            shard_model(self.model, param_dtype=self.amp_dtype)

    def _wrap_network(self) -> None:
        """DDP around what trains in this fit (the model, or the head on cached features), for the parameters
        that are trainable now."""
        self._unwrap()
        if not self.distributed or is_sharded(self.model):  # FSDP2 reduces gradients itself
            return
        trained = self.cache[2] if self.cache is not None else self.model
        self._wrapped_for = _trainable(trained)
        wrapped = wrap(trained, self.device, synced=self._synced, accumulate=self.loop.accumulate)
        if self.cache is not None:
            self.cache = (*self.cache[:2], wrapped)
        else:
            self.network = wrapped

    def _current_network(self) -> nn.Module:
        """What the next training batch runs: under DDP a new wrapper when the trainable parameters changed
        inside the fit (surgery and :func:`torchgraft.sync_optimizer` in a hook), so new layers are averaged too."""
        trained = self.cache[2] if self.cache is not None else self.network
        if self.distributed and not is_sharded(self.model):
            plain = trained.module if isinstance(trained, nn.parallel.DistributedDataParallel) else trained
            if _trainable(plain) != self._wrapped_for:
                self._wrap_network()
                trained = self.cache[2] if self.cache is not None else self.network
        return trained

    def close(self) -> None:
        """Release what ties the Learner to the process: the DistributedDataParallel wrapper (which must go
        before its process group, see :func:`torchgraft.distributed.cleanup`) and the optimizer watch hook.
        The model, history and optimizer stay usable; the Learner can train again only on one process.

        Example:
            >>> learner.fit(3, 1e-3)
            >>> learner.close()
            >>> torchgraft.distributed.cleanup()
        """
        if self._watch is not None:
            self._watch.remove()
            self._watch = None
        self._unwrap()
        self.cache = None
        gc.collect()  # the wrapper's reducer holds the process group until it is collected

    def __enter__(self) -> Learner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add_callback(self, callback: Callback) -> None:
        """Add a :class:`~torchgraft.train.callbacks.Callback`; it runs after the ones already there."""
        self.callbacks.append(callback)

    def _prepare_optimizer(self, lr: LRSpec) -> torch.optim.Optimizer:
        """An optimizer with ``lr`` per layer group; moments of a previous optimizer carry over."""
        optimizer = self.optimizer_class(param_groups(self.model, lr=lr, weight_decay=self.weight_decay))
        if self.optimizer is not None:  # carry the moments of parameters still in the model over
            held = {id(p) for group in optimizer.param_groups for p in group["params"]}
            for param, state in self.optimizer.state.items():
                if id(param) in held:
                    optimizer.state[param] = state
        if self._watch is not None:
            self._watch.remove()
        self._watch = watch_optimizer(optimizer, self.model)
        self.optimizer = optimizer
        return optimizer

    def _set_cache(self) -> None:
        """Cache body features for this fit if asked and the body cannot change; else run normally."""
        self._unwrap()
        self.cache = None
        if self.cache_features and not is_sharded(self.model):
            self.cache = feature_loaders(self.model, self.train_dl, self.valid_dl, self.loop.prepare, quiet=self.quiet)

    def _bar(self, iterable: Iterable[Any], desc: str, *, total: int | None = None, initial: int = 0) -> Iterable[Any]:
        if not self.progress or self.quiet or not is_main():
            return iterable
        from tqdm.auto import tqdm

        return tqdm(iterable, desc=desc, leave=False, total=total, initial=initial)

    # ------------------------------------------------------------------------------------ checkpoints

    def gathered_model(self) -> nn.Module | None:
        """The trained model whole: itself, or under FSDP an unsharded copy filled with the gathered tensors on
        rank 0 (``None`` on the other ranks; every rank must call it). What a run reports on and exports."""
        if self.plain is None:
            return self.model
        state = full_model_state(self.model)
        if not is_main():
            return None
        plain = copy.deepcopy(self.plain).to_empty(device="cpu")
        for name, buffer in self.model.named_buffers():  # buffers are not sharded (non-persistent ones too)
            plain.get_buffer(name).copy_(buffer.detach().cpu())
        plain.load_state_dict(state)
        return plain.to(self.device)

    def load_best(self) -> dict[str, Any]:
        """Put the weights of ``checkpoint_dir/best.pt`` (the best epoch by the monitored value, over every fit)
        into the model; returns that epoch's record. Every rank must call it.

        Raises:
            FileNotFoundError: no ``checkpoint_dir`` was given, or no epoch has ended yet.

        Example:
            >>> learner.fine_tune(3)
            >>> learner.load_best()["epoch"]
        """
        path = self.checkpoint_dir / "best.pt" if self.checkpoint_dir is not None else None
        if path is None or not on_main(path.is_file):
            raise FileNotFoundError(
                f"load_best: no best.pt{f' in {self.checkpoint_dir}' if path else ''}; the Learner writes it with "
                f"checkpoint_dir= after each epoch that improves the monitored value."
            )
        state = on_main(read_state, path)
        if is_sharded(self.model):
            load_full_state(self.model, state["model"])
        else:
            self.model.load_state_dict(state["model"])
        return dict(state["history"][-1])

    def state(self) -> dict[str, Any]:
        """Everything a resumed fit needs (:func:`torchgraft.train.resume.capture`)."""
        return capture(self.fit_state, self._trained())

    def _trained(self) -> Trained:
        loaders = [self.train_dl, self.valid_dl]
        return Trained(self.model, self.optimizer, self.scheduler, self.loop.scaler, loaders)

    @property
    def scheduler(self) -> Any:
        """The running fit's learning-rate schedule (stepped by the loop with the optimizer), or ``None``."""
        return self.loop.scheduler

    def save(self, path: str | Path) -> None:
        """Write :meth:`state` to ``path`` atomically (on rank 0 only). Under DDP every rank must call it (the
        built-in :class:`~torchgraft.train.callbacks.Checkpointer` does): inside an epoch the ranks' partial
        training losses are summed first."""
        state = self.state()
        position = state.get("position")
        if position is not None and self.distributed:
            sums = torch.tensor([position["loss_sum"], position["count"]], dtype=torch.float64, device=self.device)
            position["loss_sum"], position["count"] = reduce_sum(sums).tolist()
        if is_main():
            write_state(path, state)

    # ----------------------------------------------------------------------------------------- fitting

    def _run(self, kind: str, epochs: int, lr: LRSpec, schedule: Schedule, resume: str | Path | None) -> list[Any]:
        if epochs < 1:
            raise ValueError(f"{kind}: epochs must be >= 1, got {epochs}.")
        _ = self.task  # inferred from the first batch when none was given (before any sharding or wrapping)
        self._shard_model()
        optimizer = self._prepare_optimizer(lr)
        self._set_cache()
        self._wrap_network()
        steps = math.ceil(len(self.train_dl) / self.loop.accumulate) * epochs  # type: ignore[arg-type]
        self.loop.scheduler = schedule(optimizer, steps)
        self.fit_state.start_fit({"kind": kind, "epochs": epochs})
        self.loop.checked = False  # check the first batch's targets against the task again
        if resume is not None:
            self.fit_state = restore(resume, self.fit_state, self._trained())
        notify(self.callbacks, "on_fit_begin", self)
        try:
            while self.epoch < epochs and not self.stop:
                self._one_epoch()
        except KeyboardInterrupt:
            if not self.quiet:
                where = f"; resume with resume={self.checkpoint_dir / 'last.pt'}" if self.checkpoint_dir else ""
                print(f"interrupted after {self.epoch} of {epochs} epochs{where}", file=sys.stderr)
            raise
        except TrainingDivergedError as error:
            last = self.checkpoint_dir / "last.pt" if self.checkpoint_dir is not None else None
            good = f" The last good checkpoint is {last}." if last is not None and last.is_file() else ""
            raise TrainingDivergedError(f"{error}{good}") from None
        self.phase += 1
        self.cache = None
        notify(self.callbacks, "on_fit_end", self)
        return self.history

    def _step_begin(self) -> None:
        self.stepped = False
        notify(self.callbacks, "on_step_begin", self)

    def _stepped(self, optimizer: torch.optim.Optimizer) -> None:
        self.step += 1
        self.stepped = True
        self.lr_history.append([group["lr"] for group in optimizer.param_groups])

    def _step_end(self) -> None:
        notify(self.callbacks, "on_step_end", self)

    def _one_epoch(self) -> None:
        notify(self.callbacks, "on_epoch_begin", self)
        start = time.perf_counter()
        train, valid, model = self.cache if self.cache else (self.train_dl, self.valid_dl, self.network)
        set_sampler_epoch(train, len(self.history))
        epoch = self.epoch + 1
        batches = epoch_batches(train, [self.train_dl, self.valid_dl], self.fit_state, distributed=self.distributed)
        done = self.fit_state.progress.batch
        train_loss = self.loop.train_epoch(
            model,
            self._bar(batches, f"epoch {epoch}", total=len(train), initial=done),  # type: ignore[arg-type]
            self.optimizer,  # type: ignore[arg-type]
            n_batches=len(train),  # type: ignore[arg-type]
            events=StepEvents(self._step_begin, self._stepped, self._step_end),
            where=lambda i: f"epoch {epoch}, batch {i + 1}",
            progress=self.fit_state.progress,
            network=self._current_network if self.distributed else None,
        )
        self.fit_state.progress = EpochProgress()
        record = {"phase": self.phase, "epoch": epoch, "train_loss": train_loss}
        if valid is not None:  # the plain module: its parameters are the same on every rank
            plain = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
            # sharded layers gather their parameters at every forward: every rank runs as many
            forwards = int(reduce_max(torch.tensor(len(valid), device=self.device))) if is_sharded(plain) else 0
            record.update(self.loop.evaluate(plain, self._bar(valid, "valid"), self.metric_set, forwards=forwards))
        record["seconds"] = time.perf_counter() - start
        self.history.append(record)
        self.epoch += 1
        notify(self.callbacks, "on_epoch_end", self, record)

    def fit(self, epochs: int, lr: LRSpec = 1e-3, *, resume: str | Path | None = None) -> list[dict[str, Any]]:
        """Train for ``epochs`` at constant learning rate(s) ``lr`` (a float, ``slice(lo, hi)`` over the layer
        groups, or one per group). Returns the history (one dict per epoch)."""
        return self._run("fit", epochs, lr, lambda optimizer, steps: None, resume)

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

        def schedule(optimizer: torch.optim.Optimizer, steps: int) -> Any:
            return one_cycle(
                optimizer, steps, pct_start=pct_start, div_factor=div_factor, final_div_factor=final_div_factor
            )

        return self._run("fit_one_cycle", epochs, lr_max, schedule, resume)

    def plot(self, directory: str | Path) -> list[Path]:
        """Write ``loss.png`` (loss and metric curves) and ``lr.png`` (each optimizer group's rate per step)
        into ``directory``; needs matplotlib."""
        from torchgraft.train.plots import plot_training

        groups = self.optimizer.param_groups if self.optimizer is not None else []
        return plot_training(self.history, self.lr_history, groups, directory)

    def lr_find(self, *, start: float = 1e-7, end: float = 10.0, steps: int = 100) -> LRFind:
        """Sweep the learning rate and suggest one (:func:`torchgraft.train.lr_finder.lr_find` with this
        Learner's task, loss and autocast); the model, the optimizer and every random generator are left
        exactly as they were."""

        _ = self.task  # the task's loss, unless the user's

        def loss_of(batch: Any) -> torch.Tensor:
            return self.loop.compute_loss(self.model, *self.loop.prepare(batch))[0]

        return lr_find(
            self.model,
            self.train_dl,
            loss_of,
            optimizer=self.optimizer_class,
            weight_decay=self.weight_decay,
            start=start,
            end=end,
            steps=steps,
        )

    def recipe(
        self,
        *,
        lr: float | None = None,
        lr_mult: float | None = None,
        frozen_lr: float | None = None,
        keep_frozen: int | None = None,
    ) -> Recipe:
        """The rates :meth:`fine_tune` uses: those given, the rest from the measured recipe of this model's kind
        and task (:func:`torchgraft.train.recipes.recipe_for`: images, texts, segmentation)."""
        given = {"lr": lr, "lr_mult": lr_mult, "frozen_lr": frozen_lr, "keep_frozen": keep_frozen}
        return recipe_for(self.model, self.task).filled(**given)

    def stages(
        self,
        epochs: int,
        lr: float | None = None,
        *,
        freeze_epochs: int = 1,
        lr_mult: float | None = None,
        frozen_lr: float | None = None,
        bn: BNPolicy = "frozen",
        gradual: bool = False,
        keep_frozen: int | None = None,
    ) -> list[Stage]:
        """The stages :meth:`fine_tune` with the same arguments runs (:mod:`torchgraft.train.stages`): per
        stage the frozen layer groups, the trained ones and their rates, the epochs, cached or not.

        Example:
            >>> print(plan_text(learner.stages(2, freeze_epochs=1, keep_frozen=1)))
        """
        if epochs < 0 or freeze_epochs < 0 or epochs + freeze_epochs < 1:
            raise ValueError(
                f"fine_tune: need epochs, freeze_epochs >= 0 and one epoch at least, got {epochs}, {freeze_epochs}."
            )
        recipe = self.recipe(lr=lr, lr_mult=lr_mult, frozen_lr=frozen_lr, keep_frozen=keep_frozen)
        structure = getattr(self.model, "body", None) is not None and getattr(self.model, "cacheable", True)
        sharded = self.strategy == "fsdp" and self.distributed
        cache = self.cache_features and bn == "frozen" and bool(structure) and not sharded
        groups = layer_groups(self.model)
        return plan_stages(groups, epochs, recipe=recipe, freeze_epochs=freeze_epochs, gradual=gradual, cache=cache)

    def fine_tune(
        self,
        epochs: int,
        lr: float | None = None,
        *,
        freeze_epochs: int = 1,
        lr_mult: float | None = None,
        frozen_lr: float | None = None,
        bn: BNPolicy = "frozen",
        pct_start: float = 0.25,
        gradual: bool = False,
        keep_frozen: int | None = None,
        resume: str | Path | None = None,
    ) -> list[dict[str, Any]]:
        """Transfer-learning recipe: ``freeze_epochs`` of one-cycle training of the head alone (body frozen
        with BatchNorm policy ``bn``), then ``epochs`` of the whole network with discriminative rates from
        ``lr / lr_mult`` (first group) to ``lr`` (head). ``resume=`` continues a run of the same call from
        its ``last.pt``, in whichever stage it stopped. ``frozen_lr`` sets the head's rate in the frozen stage
        apart (default ``lr``): a head on cached features (``cache_features=True``) trains almost for free and
        often wants a higher rate than the network. :meth:`stages` lists the stages this runs.

        Rates and ``keep_frozen`` left ``None`` come from the measured recipe of the model's kind and task
        (:mod:`torchgraft.train.recipes`, the same table ``torchgraft train`` reads): images 3e-3 for every
        group; texts (a Hugging Face text model) 1e-3 with ``lr_mult=10`` and ``frozen_lr=3e-2``;
        segmentation 4e-3 with the backbone kept frozen (``keep_frozen=-1``).

        ``gradual=True`` unfreezes ULMFiT-style: each of the ``epochs`` unfreezes one more layer group from
        the top (one one-cycle fit per epoch; ``learner.stage`` is ``"top2"``, ``"top3"``, ...) until every
        group trains; the epochs left after that train the whole network in one fit.

        ``keep_frozen=k`` leaves the first ``k`` layer groups frozen (with BatchNorm policy ``bn``) in the
        unfrozen stages too: their backward pass, the costliest part of a high-resolution network, is never
        run; ``-1`` keeps every body group frozen (only the head, and a dense graft's decoder, train: with
        ``cache_features`` every stage then trains on cached features). On small segmentation targets a
        decoder on frozen ImageNet features beat every unfrozen recipe (bench/segment.py).

        The image defaults were chosen by measurement (bench/finetune_targets.py, docs/benchmarks.md): on
        three small targets far from ImageNet (Fashion-MNIST, sklearn digits, lfw faces) a uniform rate
        (``lr_mult=1``) of 3e-3 beat every discriminative spread tried (2x, 3x, 10x) and rates of 1e-3 and
        2e-3 (5e-3 was close: better on two targets, worse on the third); pass ``lr_mult > 1`` for data
        close to the pretraining data, where early layers should move less.
        """
        options = {"lr_mult": lr_mult, "frozen_lr": frozen_lr, "keep_frozen": keep_frozen}
        stages = self.stages(epochs, lr, freeze_epochs=freeze_epochs, bn=bn, gradual=gradual, **options)
        names = [stage.name for stage in stages]
        saved = on_main(lambda: read_state(resume).get("stage")) if resume is not None else None
        start = names.index(saved) if saved in names else 0
        try:
            for stage in stages[start:]:
                self.stage = stage.name
                freeze_to(self.model, stage.frozen, bn=bn)
                self.fit_one_cycle(stage.epochs, stage.lr, pct_start=pct_start, resume=resume)
                resume = None
            return self.history
        finally:
            self.stage = None
