"""The training step and the evaluation pass, shared by the Learner and ``lr_find``.

:class:`Loop` holds what one step needs — the task (how a batch splits, the loss), the device, mixed
precision, channels-last, gradient accumulation and clipping, the gradient scaler, DDP — and nothing of
epochs, schedules or checkpoints, which belong to the Learner.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from torchgraft.spelling import option
from torchgraft.tasks.base import Task
from torchgraft.tasks.batch import call_model, count_samples, move
from torchgraft.tasks.metrics import MetricSet
from torchgraft.train.distributed import reduce_sum

__all__ = ["EpochProgress", "Loop", "StepEvents", "TrainingDivergedError", "amp_dtype"]


@contextmanager
def _fsdp_no_sync(network: Any) -> Iterator[None]:
    network.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        network.set_requires_gradient_sync(True)


LossFn = Callable[[torch.Tensor, Any], torch.Tensor]


def amp_dtype(amp: str | None, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``amp`` (``None``, ``"bf16"`` or ``"fp16"``) on ``device``.

    Raises:
        ValueError: an unknown mode, or ``"fp16"`` off CUDA.
    """
    if amp in (None, False, "no"):
        return None
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    if amp not in dtypes:
        raise ValueError(f"Learner: amp={amp!r} is not a mode. Choose None, 'bf16' or 'fp16'.")
    if dtypes[amp] is torch.float16 and device.type != "cuda":
        fp16, bf16 = option("amp='fp16'", "--amp fp16"), option("amp='bf16'", "--amp bf16")
        raise ValueError(f"Learner: {fp16} needs CUDA; on CPU use {bf16}.")
    return dtypes[amp]


class TrainingDivergedError(FloatingPointError):
    """The loss became NaN or infinite; the message names the step and the last good checkpoint."""


@dataclass(frozen=True)
class StepEvents:
    """What :meth:`Loop.train_epoch` tells its caller: a batch begins, the optimizer (and the schedule) stepped,
    a batch ends."""

    begin: Callable[[], None]
    stepped: Callable[[torch.optim.Optimizer], None]
    end: Callable[[], None]


@dataclass
class EpochProgress:
    """How far the current training epoch is: batches done, and this rank's sum of sample losses and count
    (a mid-epoch checkpoint stores it; a resumed epoch starts from it)."""

    batch: int = 0
    loss_sum: float = 0.0
    count: int = 0


@dataclass
class Loop:
    """One training step and one evaluation pass.

    Attributes:
        task: splits batches, checks targets, gives the default loss.
        device: where batches go.
        loss: ``loss(outputs, targets)``; ``None`` uses the task's.
        amp_dtype: autocast dtype, or ``None``.
        channels_last: 4-D float inputs in channels-last memory format.
        accumulate: batches whose gradients are summed per optimizer step.
        clip_grad: maximum gradient norm, or ``None``.
        scaler: fp16 gradient scaler (made for ``amp_dtype=torch.float16`` when not given), or ``None``.
        distributed: whether the forward runs under DDP (``no_sync`` between steps, reduced sums).
        batchnorm_eval: BatchNorm layers stay in evaluation mode while training (statistics fixed).
        check_targets: check the first training batch's targets against the task (off for a user's own loss
            without metrics: the loss decides what targets mean).
    """

    task: Task
    device: torch.device
    loss: LossFn | None = None
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False
    accumulate: int = 1
    clip_grad: float | None = None
    scaler: torch.amp.GradScaler | None = None
    distributed: bool = False
    batchnorm_eval: bool = False
    check_targets: bool = True
    scheduler: Any = field(default=None, init=False)  # the running fit's, stepped with the optimizer
    step_rates: list[float] = field(default_factory=list, init=False)  # each group's rate in the last step
    step_loss: float = field(default=float("nan"), init=False)  # the last step's loss: its batches' mean
    checked: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        if self.amp_dtype is torch.float16 and self.scaler is None:
            self.scaler = torch.amp.GradScaler("cuda")

    def prepare(self, batch: Any) -> tuple[Any, Any]:
        """``(inputs, targets)`` of ``batch`` on the device."""
        inputs, targets = self.task.split(batch)
        return move(inputs, self.device, channels_last=self.channels_last), move(targets, self.device)

    def autocast(self) -> Any:
        """The mixed-precision context (a no-op without ``amp``)."""
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def compute_loss(self, model: nn.Module, inputs: Any, targets: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss, outputs)``: the forward and the loss, in the autocast context."""
        with self.autocast():
            outputs = self.task.forward(model, inputs, targets, training=True)
            if self.check_targets and not self.checked and isinstance(targets, torch.Tensor):
                self.task.check_training(outputs.detach(), targets)  # once per fit: a wrong kind of target fails early
                self.checked = True
            loss = (self.loss or self.task.loss)(outputs, targets)
        return loss, outputs

    def batch_loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        """The loss of ``model`` on one raw ``batch`` (split, moved, in the autocast context)."""
        return self.compute_loss(model, *self.prepare(batch))[0]

    def diverged(self, loss: torch.Tensor) -> bool:
        """Whether the loss is NaN/inf — on any rank, so that all ranks stop together."""
        bad = ~torch.isfinite(loss.detach())
        if self.distributed:
            bad = reduce_sum(bad.float()) > 0
        return bool(bad)

    def no_sync(self, network: nn.Module, local: bool) -> Any:
        """No gradient reduction for the micro-batches before a step (one reduction per step): DDP's
        ``no_sync``, FSDP2's ``set_requires_gradient_sync(False)``; else nothing."""
        if not local:
            return nullcontext()
        if hasattr(network, "set_requires_gradient_sync"):
            return _fsdp_no_sync(network)
        return network.no_sync()  # type: ignore[operator]

    def optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Unscale and clip when asked, then step (through the scaler under fp16), and the schedule with it."""
        if self.clip_grad is not None:
            if self.scaler is not None:
                self.scaler.unscale_(optimizer)
            params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, self.clip_grad)
        self.step_rates = [group["lr"] for group in optimizer.param_groups]  # what this step uses
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()

    def backward(self, loss: torch.Tensor) -> None:
        """Backward of ``loss / accumulate`` (scaled under fp16)."""
        scaled = loss / self.accumulate if self.accumulate > 1 else loss
        (self.scaler.scale(scaled) if self.scaler else scaled).backward()

    def train_epoch(
        self,
        model: nn.Module,
        batches: Iterable[Any],
        optimizer: torch.optim.Optimizer,
        *,
        n_batches: int,
        events: StepEvents,
        where: Callable[[int], str],
        progress: EpochProgress | None = None,
        network: Callable[[], nn.Module] | None = None,
    ) -> float:
        """One pass over ``batches``; returns the mean training loss (over every rank).

        ``events`` hears of each batch's start and end and of each optimizer step; ``where(i)`` describes
        batch ``i`` for the divergence error. ``progress`` is updated after every batch; when it says
        ``batch=k`` (a resumed epoch), ``batches`` holds the epoch's batches after the first ``k``.
        ``network()``, asked before every
        batch, gives the module to run when it can change inside the epoch (a DDP wrapper rebuilt after
        surgery in a hook).
        """
        model.train()
        if self.batchnorm_eval:
            for module in model.modules():
                if isinstance(module, _BatchNorm):
                    module.eval()
        progress = progress if progress is not None else EpochProgress()
        total = torch.tensor(progress.loss_sum, device=self.device, dtype=torch.float64)
        count = progress.count
        window, parts = 0.0, 0  # the losses of the batches summed into the coming step
        for i, batch in enumerate(batches, start=progress.batch):
            events.begin()
            model = network() if network is not None else model
            inputs, targets = self.prepare(batch)
            step_now = (i + 1) % self.accumulate == 0 or i + 1 == n_batches
            reduces = isinstance(model, nn.parallel.DistributedDataParallel) or hasattr(
                model, "set_requires_gradient_sync"
            )
            local = self.distributed and not step_now and reduces
            with self.no_sync(model, local):
                loss, _ = self.compute_loss(model, inputs, targets)
            if self.diverged(loss):
                raise TrainingDivergedError(
                    f"loss is {loss.item()} at {where(i)}; training stopped. "
                    f"Lower the learning rate, or clip gradients (clip_grad=1.0)."
                )
            if i % self.accumulate == 0:
                # here, not right after the step: freeing the gradients just before backward allocates them
                # again (measured ~4% faster on CPU than zeroing after the step)
                optimizer.zero_grad(set_to_none=True)
            with self.no_sync(model, local):
                self.backward(loss)
            window, parts = window + float(loss.detach()), parts + 1  # read already: diverged() synchronised
            if step_now:
                self.step_loss, window, parts = window / parts, 0.0, 0
                self.optimizer_step(optimizer)
                events.stepped(optimizer)
            n = count_samples(targets)
            total += loss.detach() * n
            count += n
            progress.batch, progress.count = i + 1, count
            progress.loss_sum = total  # type: ignore[assignment]  # a tensor until read: no sync per step
            events.end()
        optimizer.zero_grad(set_to_none=True)  # free the last gradients
        count_ = reduce_sum(torch.tensor(float(count), device=self.device, dtype=torch.float64))
        return float(reduce_sum(total) / count_.clamp(min=1))

    @torch.no_grad()
    def evaluate(
        self,
        model: nn.Module,
        batches: Iterable[Any],
        metrics: MetricSet,
        *,
        forwards: int = 0,
        keep: Callable[[torch.Tensor, Any], None] | None = None,
    ) -> dict[str, float]:
        """``valid_loss`` (unless the task has none: :attr:`Task.validation_loss`) and every metric over all of
        ``batches`` (all ranks), accumulated, not averaged per batch. ``forwards``: run the model at least that
        many times, repeating the last batch with its outputs left out (a sharded model gathers its parameters
        at every forward, on every rank at once). ``keep`` is called with each batch's ``(outputs, targets)``
        (:mod:`torchgraft.train.kept`)."""
        model.eval()
        metrics.reset()
        total, count, done, inputs = torch.zeros((), device=self.device), 0, 0, None
        for batch in batches:
            done += 1
            inputs, targets = self.prepare(batch)
            with self.autocast():
                outputs = self.task.forward(model, inputs, targets, training=False)
            outputs = outputs.float() if isinstance(outputs, torch.Tensor) else outputs  # detections stay as given
            n = count_samples(targets)
            if self.task.validation_loss:
                total += (self.loss or self.task.loss)(outputs, targets) * n
            count += n
            metrics.update(outputs, targets)
            if keep is not None:
                keep(outputs, targets)
        for _ in range(forwards - done):  # this rank's shard has a batch fewer
            call_model(model, inputs)
        count_ = reduce_sum(torch.tensor(float(count), device=self.device)).clamp(min=1)
        loss = {"valid_loss": (reduce_sum(total) / count_).item()} if self.task.validation_loss else {}
        return {**loss, **(metrics.compute() if count else {})}
