"""Where the model trains: on one process as it is; under ``torchrun`` in a ``DistributedDataParallel`` wrapper
rebuilt for the parameters that train in each fit, or sharded with FSDP2 (:mod:`torchgraft.train.fsdp`); and
the trained model gathered whole again.

:class:`Placement` holds the model, what runs its training forward (``network``: the model or the head on
cached features, wrapped under DDP) and, under FSDP, the unsharded structure (``plain``) that
:meth:`Placement.gathered` fills. The :class:`~torchgraft.Learner` owns one and asks it, before every fit,
to shard the model (once) and to wrap what trains.

Under ``torchrun`` with several processes the Learner trains with ``DistributedDataParallel`` (gloo on CPU,
NCCL on CUDA), each rank on its own device: each rank reads its shard of the training data, the validation
data is split without padding (each sample counted once), losses and metrics are reduced over all ranks, and
only rank 0 prints and writes checkpoints. The wrapper is rebuilt at the start of every fit for the
parameters that train in it, so every stage of ``fine_tune`` (frozen, gradual, unfrozen) averages exactly the
gradients that exist and nothing frozen costs a reduction.
"""

from __future__ import annotations

import copy
import gc
from collections.abc import Iterable
from typing import Any, Literal

import torch
from torch import nn

from torchgraft.choices import BATCHNORM_MODES, STRATEGIES
from torchgraft.spelling import option
from torchgraft.train.distributed import is_main, launched, setup, shard_loader, wrap
from torchgraft.train.fsdp import full_model_state, is_sharded, plain_copy, shard_model

__all__ = ["BATCHNORM_MODES", "STRATEGIES", "BatchNormMode", "Placement", "Strategy", "with_batchnorm"]

BatchNormMode = Literal["train", "eval", "sync"]
Strategy = Literal["ddp", "fsdp"]


def with_batchnorm(model: nn.Module, mode: str, device: torch.device, distributed: bool) -> nn.Module:
    """``model`` with BatchNorm as ``mode`` asks: ``"sync"`` converts it to ``SyncBatchNorm`` under DDP on CUDA.

    Raises:
        ValueError: an unknown mode, or ``"sync"`` under DDP on CPU.
    """
    if mode not in BATCHNORM_MODES:
        raise ValueError(f"Learner: batchnorm={mode!r} is not a mode. Choose from {BATCHNORM_MODES}.")
    if mode != "sync" or not distributed:
        return model  # one process: plain BatchNorm already normalises over the whole batch
    if device.type != "cuda":
        sync, fixed, train = (option(f"batchnorm={m!r}", f"--batchnorm {m}") for m in ("sync", "eval", "train"))
        raise ValueError(
            f"Learner: {sync} needs CUDA (SyncBatchNorm runs on GPUs only); on CPU use {fixed} "
            f"(statistics fixed, the same at any number of processes) or {train} (per-process statistics)."
        )
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def _trainable(model: nn.Module) -> tuple[int, ...]:
    """The identity of ``model``'s trainable parameters (a DDP wrapper is built for exactly these)."""
    return tuple(id(p) for p in model.parameters() if p.requires_grad)


def _channels_last(model: nn.Module, channels_last: bool | Literal["auto"], strategy: str) -> bool:
    """Whether to train in channels-last: ``"auto"`` for convolutional networks with 2-D BatchNorm (where it pays
    off); never under FSDP, which shards contiguous parameters only."""
    if strategy == "fsdp" and launched():
        return False
    if channels_last == "auto":
        return any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    return bool(channels_last)


class Placement:
    """A model on its device and processes, and what runs its training forward.

    Attributes:
        model: the model, on ``device`` (sharded in place under FSDP from the first fit).
        network: what the training forward runs: ``trained``, in its DDP wrapper under ``torchrun``.
        trained: what trains in the current fit: the model, or the head on cached features.
        plain: under FSDP the unsharded structure on the meta device (for :meth:`gathered`), else ``None``.
        device, distributed, strategy, channels_last: where and how it trains.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        device: torch.device,
        strategy: Strategy = "ddp",
        batchnorm: BatchNormMode = "train",
        channels_last: bool | Literal["auto"] = "auto",
        amp_dtype: torch.dtype | None = None,
        accumulate: int = 1,
    ) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"Learner: strategy={strategy!r} is not one. Choose from {STRATEGIES}.")
        self.device, self.strategy, self.amp_dtype, self.accumulate = device, strategy, amp_dtype, accumulate
        self.channels_last = _channels_last(model, channels_last, strategy)
        memory = torch.channels_last if self.channels_last else torch.preserve_format
        self.distributed = setup(device)
        self.model = with_batchnorm(model, batchnorm, device, self.distributed).to(device, memory_format=memory)
        self.network = self.trained = self.model
        self.plain: nn.Module | None = None
        self._synced: dict[int, Any] = {}  # tensors broadcast from rank 0 by an earlier DDP wrapper
        self._wrapped_for: tuple[int, ...] = ()  # the trainable parameters the DDP wrapper was built for

    @property
    def shards(self) -> bool:
        """Whether the model is (or will be, at its first fit) sharded with FSDP2."""
        return self.strategy == "fsdp" and self.distributed

    def shard_loaders(self, train_dl: Iterable[Any], valid_dl: Iterable[Any] | None) -> tuple[Any, Any]:
        """The loaders, each rank reading its shard under DDP (validation unpadded)."""
        if not self.distributed:
            return train_dl, valid_dl
        valid = shard_loader(valid_dl, train=False) if valid_dl is not None else None  # type: ignore[arg-type]
        return shard_loader(train_dl), valid  # type: ignore[arg-type]

    def shard(self) -> None:
        """Under FSDP, shard the model before its first fit (the optimizer is then built on the shards)."""
        if self.shards and self.plain is None:
            self.plain = plain_copy(self.model)
            shard_model(self.model, param_dtype=self.amp_dtype)

    def wrap(self, trained: nn.Module | None = None) -> None:
        """DDP around what trains in this fit (``trained``: the model, or the head on cached features), for the
        parameters that are trainable now."""
        trained = trained if trained is not None else self.model
        self.unwrap()
        self.network = self.trained = trained
        if not self.distributed or is_sharded(self.model):  # FSDP2 reduces gradients itself
            return
        self._wrapped_for = _trainable(trained)
        self.network = wrap(trained, self.device, synced=self._synced, accumulate=self.accumulate)

    def current(self) -> nn.Module:
        """What the next training batch runs: under DDP a new wrapper when the trainable parameters changed
        inside the fit (surgery and :func:`torchgraft.sync_optimizer` in a hook), so new layers are averaged too."""
        if self.distributed and not is_sharded(self.model) and _trainable(self.trained) != self._wrapped_for:
            self.wrap(self.trained)
        return self.network

    def unwrap(self) -> None:
        """Drop the DDP wrapper: its reducer's gradient hooks must be gone before another wrapper is built."""
        wrapped = self.network is not self.trained
        self.network = self.trained = self.model
        if wrapped:
            gc.collect()

    def gathered(self) -> nn.Module | None:
        """The model whole: itself, or under FSDP an unsharded copy filled with the gathered tensors on rank 0
        (``None`` on the other ranks; every rank must call it)."""
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
