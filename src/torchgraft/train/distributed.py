"""Distributed data parallel under ``torchrun``: process group, one device per rank, sharded loaders, reduced sums.

``torchrun --nproc_per_node N train.py`` sets ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``; :func:`setup` joins
the process group (gloo on CPU, NCCL on CUDA) and :func:`local_device` gives each rank its own GPU
(``cuda:{LOCAL_RANK}``). Training loaders are sharded like ``DistributedSampler`` (every rank the same
number of batches, the shuffle re-seeded per epoch); validation loaders are sharded *without padding*
(:class:`EvalShard`), so each sample is counted once whatever the number of processes. Sums (losses, metric
totals, counts) are added across ranks, so every rank reports the same numbers; only rank 0 prints and
writes files.
"""

from __future__ import annotations

import os
import pickle
import weakref
from collections.abc import Callable, Iterator, Sized
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, RandomSampler, Sampler
from torch.utils.data.distributed import DistributedSampler

from torchgraft.data.sampling import lone_last_batch
from torchgraft.devices import check_device
from torchgraft.spelling import option
from torchgraft.train.launch import launched

__all__ = [
    "EvalShard",
    "ShardedBatches",
    "barrier",
    "broadcast_object",
    "cleanup",
    "is_distributed",
    "is_main",
    "launched",
    "local_device",
    "on_main",
    "rank",
    "reduce_max",
    "reduce_sum",
    "setup",
    "shard_loader",
    "world_size",
    "wrap",
]


def is_distributed() -> bool:
    """Whether a process group with more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of processes (1 when not distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (0 when not distributed)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """Whether this is rank 0 (always true when not distributed)."""
    return rank() == 0


def local_device(device: str | torch.device | None = None) -> torch.device:
    """The device of this process: ``device`` when given, else under ``torchrun`` with CUDA ``cuda:{LOCAL_RANK}``
    (each rank its own GPU), else CUDA if available, else the CPU.

    Raises:
        DeviceError: ``device`` is not a device this machine has (see :func:`torchgraft.devices.check_device`).
        ValueError: several processes on one machine given the same explicit CUDA device.
    """
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", local % torch.cuda.device_count()) if launched() else torch.device("cuda")
    # the placement rule first (it holds on any machine), then whether this machine has the device
    kind = device.type if isinstance(device, torch.device) else str(device).split(":")[0].strip().lower()
    if launched() and kind == "cuda" and int(os.environ.get("LOCAL_WORLD_SIZE", "1")) > 1:
        raise ValueError(
            f"{option(f'device={str(device)!r}', f'--device {device}')} under torchrun with "
            f"{os.environ.get('LOCAL_WORLD_SIZE')} processes per machine "
            f"would put every rank on one GPU; leave the device out (each rank takes cuda:LOCAL_RANK)."
        )
    return check_device(device)


def setup(device: torch.device | None = None) -> bool:
    """Join the process group if launched by ``torchrun`` with more than one process (NCCL when ``device`` is
    CUDA, else gloo), and make ``device`` this process's current CUDA device; returns whether training is
    distributed. Joining once is enough: later calls only report."""
    if not launched():
        return world_size() > 1
    if not dist.is_initialized():
        device = device if device is not None else local_device()
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return True


class EvalShard(Sampler[int]):
    """Rank ``r`` of ``w`` reads indices ``r, r + w, r + 2w, ...`` of ``size`` samples, in order, with no padding:
    shards differ by at most one sample and every sample is read exactly once (``DistributedSampler`` repeats
    samples to even the shards, which changes validation metrics with the number of processes)."""

    def __init__(self, size: int, *, rank: int, world: int) -> None:
        self.size, self.rank, self.world = size, rank, world

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.size, self.world))

    def __len__(self) -> int:
        return len(range(self.rank, self.size, self.world))


class ShardedBatches(Sampler[list[int]]):
    """Every ``world``-th batch of a batch sampler for rank ``rank`` (the batch list padded by repeating its
    first batches so that every rank steps the same number of times). The batch sampler must produce the same
    batches on every rank (a shared seed), as torchgraft's :class:`~torchgraft.data.tokens.LengthGroupedBatches`
    does; ``set_epoch`` is passed on."""

    def __init__(self, batches: Any, *, rank: int, world: int) -> None:
        self.batches, self.rank, self.world = batches, rank, world
        self.batch_size = getattr(batches, "batch_size", None)

    def in_order(self) -> list[list[int]]:
        """Every index once, without randomness (what the feature cache reads): the batch sampler's own
        ``in_order()``, else consecutive batches."""
        inner = getattr(self.batches, "in_order", None)
        if callable(inner):
            return inner()
        size, count = self.batch_size or 1, sum(len(batch) for batch in self.batches)
        return [list(range(start, min(start + size, count))) for start in range(0, count, size)]

    def set_epoch(self, epoch: int) -> None:
        """Pass the epoch to the batch sampler (a new shuffle per epoch)."""
        setter = getattr(self.batches, "set_epoch", None)
        if callable(setter):
            setter(epoch)

    def __iter__(self) -> Iterator[list[int]]:
        batches = [list(batch) for batch in self.batches]
        padded = batches + batches[: (-len(batches)) % self.world]
        return iter(padded[self.rank :: self.world])

    def __len__(self) -> int:
        return -(-len(self.batches) // self.world)  # type: ignore[arg-type]


def _check_size(loader: DataLoader, world: int, *, train: bool) -> None:
    count = len(loader.dataset) if isinstance(loader.dataset, Sized) else None
    if count is not None and count < world:
        kind = "training" if train else "validation"
        raise ValueError(
            f"distributed: the {kind} set has {count} samples for {world} processes; every process needs one at "
            f"least. Run fewer processes (torchrun --nproc_per_node) or add data."
        )


def _rebuilt(loader: DataLoader, dataset: Any = None, **sampling: Any) -> DataLoader:
    if loader.num_workers > 0:  # prefetch_factor is refused without workers
        sampling["prefetch_factor"] = loader.prefetch_factor
    return DataLoader(
        loader.dataset if dataset is None else dataset,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        persistent_workers=loader.persistent_workers,
        worker_init_fn=loader.worker_init_fn,
        generator=loader.generator,
        **sampling,
    )


def shard_loader(loader: DataLoader, *, train: bool = True) -> DataLoader:
    """The same loader, each rank reading its own shard.

    Training (``train=True``): a sampler with ``shard(rank, world)`` (torchgraft's
    :class:`~torchgraft.data.sampling.SeededSampler`) shards itself; a batch sampler of its own
    (length-grouped text batches) is dealt out batch by batch (:class:`ShardedBatches`); anything else is
    replaced by a ``DistributedSampler`` (shuffled if the original was). Validation: :class:`EvalShard`. An
    ``IterableDataset`` with ``shard(rank, world)`` (:class:`~torchgraft.data.streams.SampleStream`) shards
    itself; one without is taken as this rank's already (webdataset's ``split_by_node``, datasets'
    ``split_dataset_by_node``): every rank must then yield as many training batches.

    Raises:
        ValueError: a set smaller than the number of processes, or a loader that is not a ``DataLoader``.
    """
    if not isinstance(loader, DataLoader):
        raise ValueError(
            f"distributed: loaders must be torch DataLoaders to be sharded across processes, got "
            f"{type(loader).__name__}."
        )
    world, me = world_size(), rank()
    if isinstance(loader.dataset, IterableDataset):  # a stream: it shards itself, or is already this rank's
        sharder = getattr(loader.dataset, "shard", None)
        return _rebuilt(loader, sharder(me, world), batch_size=loader.batch_size) if callable(sharder) else loader
    _check_size(loader, world, train=train)
    if not train:
        size = loader.batch_size or getattr(loader.batch_sampler, "batch_size", 1)
        return _rebuilt(loader, batch_size=size, sampler=EvalShard(len(loader.dataset), rank=me, world=world))  # type: ignore[arg-type]
    sharder = getattr(loader.sampler, "shard", None)
    if callable(sharder):  # this rank's share ends on a lone sample on every rank alike (shares are equal)
        share, size = sharder(me, world), loader.batch_size or 1
        return _rebuilt(loader, batch_size=size, sampler=share, drop_last=lone_last_batch(len(share), size))
    if loader.batch_size is None or type(loader.batch_sampler).__module__ != "torch.utils.data.sampler":
        return _rebuilt(loader, batch_sampler=ShardedBatches(loader.batch_sampler, rank=me, world=world))
    shuffle = isinstance(loader.sampler, RandomSampler)
    sampler = DistributedSampler(loader.dataset, shuffle=shuffle, drop_last=loader.drop_last)  # type: ignore[arg-type]
    return _rebuilt(loader, batch_size=loader.batch_size, sampler=sampler, drop_last=loader.drop_last)


def wrap(
    model: nn.Module, device: torch.device, *, synced: dict[int, weakref.ref] | None = None, accumulate: int = 1
) -> nn.Module:
    """``model`` in ``DistributedDataParallel`` for its *current* trainable parameters (``model`` itself when not
    distributed or when nothing trains). Build a new wrapper whenever the set of trainable parameters changes:
    DDP fixes its gradient buckets when it is built, so a wrapper built before freezing waits for gradients
    that never come, and one built before unfreezing never averages the newly trainable parameters.

    ``synced`` holds (by id, with a weak reference) the tensors already made equal on every rank: only the
    others are broadcast from rank 0 (and added to it), so re-wrapping never writes into a tensor that
    training has moved (which the pretrained-weights guard would rightly report as changed outside an
    optimizer step). ``None``: broadcast everything, as DDP does.

    Trainable parameters that never take part in the loss (a Hugging Face pooler that a mean-pooling head
    skips) are allowed: within one wrapper (one fit) the same parameters take part at every step, so DDP runs
    with ``static_graph=True`` and learns which on the first step; with gradient accumulation (``no_sync``,
    which a static graph does not support) it looks for them at every step (``find_unused_parameters``)."""
    if not is_distributed() or not any(p.requires_grad for p in model.parameters()):
        return model
    if synced is not None:
        with torch.no_grad():
            for tensor in [*model.parameters(), *model.buffers()]:
                known = synced.get(id(tensor))
                if known is None or known() is not tensor:  # never seen, or a new tensor at a freed one's id
                    dist.broadcast(tensor.data, src=0)
                    synced[id(tensor)] = weakref.ref(tensor)
    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    graph = {"static_graph": True} if accumulate == 1 else {"find_unused_parameters": True}
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, init_sync=synced is None, **graph)


def reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over all ranks (itself when not distributed)."""
    if world_size() > 1:
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """The largest ``tensor`` over all ranks (itself when not distributed)."""
    if world_size() > 1:
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def broadcast_object(value: Any = None) -> Any:
    """Rank 0's ``value`` on every rank (pickled; for small plain data such as a checked file list). Every rank
    must call it; ranks other than 0 pass anything."""
    if world_size() == 1:
        return value
    box = [value if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` run on rank 0 alone, its result (or its exception) given to every rank: data is
    listed and checked once, not once per process, and an error stops every rank with the same message
    instead of leaving the others waiting. Every rank must call it."""
    if world_size() == 1:
        return fn(*args, **kwargs)
    outcome: tuple[str, Any] | None = None
    if is_main():
        try:
            outcome = ("ok", fn(*args, **kwargs))
        except Exception as error:  # handed to every rank, raised there
            try:
                pickle.dumps(error)
                outcome = ("error", error)
            except Exception:
                outcome = ("error", RuntimeError(f"{type(error).__name__}: {error}"))
    kind, value = broadcast_object(outcome)
    if kind == "error":
        raise value
    return value


def barrier() -> None:
    """Wait until every rank gets here (a no-op when not distributed)."""
    if world_size() > 1:
        dist.barrier()


def cleanup(*, wait: bool = True) -> None:
    """Leave the process group at the end of a ``torchrun`` script (a no-op when not distributed). Drop the
    Learner's ``DistributedDataParallel`` wrapper first — ``learner.close()`` — otherwise gloo's threads may
    abort the process at exit. ``wait=False`` after an error: leave without waiting for the other ranks (they
    may be inside a collective this rank will never join; ``torchrun`` stops them when this rank exits)."""
    if dist.is_available() and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()
