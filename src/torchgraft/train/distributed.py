"""Distributed data parallel under ``torchrun``: process group, sharded loaders, reduced sums.

``torchrun --nproc_per_node N train.py`` sets ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``; :func:`setup` joins
the process group (gloo on CPU, NCCL on CUDA). Each rank sees its own shard of every loader
(``DistributedSampler``; the shuffle is re-seeded per epoch), gradients are averaged by
``DistributedDataParallel``, and sums (losses, metric totals, counts) are added across ranks, so
every rank reports the same numbers. Only rank 0 prints and writes files.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, RandomSampler
from torch.utils.data.distributed import DistributedSampler

__all__ = ["cleanup", "is_main", "reduce_sum", "setup", "shard_loader", "world_size"]


def world_size() -> int:
    """Number of processes (1 when not distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    """Whether this is rank 0 (always true when not distributed)."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def setup(device: torch.device) -> bool:
    """Join the process group if launched by ``torchrun`` with more than one process; returns whether
    training is distributed."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return world_size() > 1
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    return True


def shard_loader(loader: DataLoader, *, shuffle: bool | None = None) -> DataLoader:
    """The same loader, each rank reading its own shard (shuffled if the original was)."""
    shuffle = isinstance(loader.sampler, RandomSampler) if shuffle is None else shuffle
    sampler = DistributedSampler(loader.dataset, shuffle=shuffle, drop_last=loader.drop_last)  # type: ignore[arg-type]
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=sampler,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
        persistent_workers=loader.persistent_workers,
    )


def reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over all ranks (itself when not distributed)."""
    if world_size() > 1:
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def cleanup() -> None:
    """Leave the process group at the end of a ``torchrun`` script (a no-op when not distributed). Drop the
    Learner's ``DistributedDataParallel`` wrapper first — ``learner.close()`` — otherwise gloo's threads may
    abort the process at exit."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
