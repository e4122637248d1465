"""Sampling that a resumed or distributed run reproduces exactly: a shuffle drawn from ``(seed, epoch)`` and a
random seed of its own for every sample.

:class:`SeededSampler` yields ``(index, seed)`` pairs; :class:`SeededSamples` around a dataset reads sample
``index`` with the random generators (torch's CPU one, Python's, NumPy's) seeded from ``seed``. So the random
augmentation of a sample depends on the run's seed, the epoch and the sample alone — not on which worker
process reads it, how many workers there are, which rank of a ``torchrun`` job it lands on, or whether the
run was killed and resumed halfway through the epoch. That makes three things exact that are not with a
plain shuffled ``DataLoader``: ``N`` processes at batch ``B`` equal one process at batch ``N·B`` sample for
sample; a resumed epoch skips the batches already trained without reading them
(:meth:`SeededSampler.skip`); and persistent workers cannot carry random state from one epoch into the next.

Example:
    >>> train = SeededSamples(ImageDataset(samples, transform=augment))
    >>> loader = DataLoader(train, batch_size=64, sampler=SeededSampler(len(train), seed=0), num_workers=8)
"""

from __future__ import annotations

import random
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler, get_worker_info

__all__ = ["Indices", "SeededSampler", "SeededSamples", "lone_last_batch", "seeded"]

_MIX = 0x9E3779B97F4A7C15  # spreads (seed, epoch) pairs over the generator's seed space


def lone_last_batch(samples: int, batch_size: int) -> bool:
    """Whether an epoch of ``samples`` in batches of ``batch_size`` ends on a batch of one sample, which a
    training loader drops (``drop_last``): BatchNorm cannot normalise a single sample in training mode
    ("Expected more than 1 value per channel"), and one sample in a shuffled epoch is all that is left out."""
    return batch_size > 1 and samples > 1 and samples % batch_size == 1


class SeededSampler(Sampler[tuple[int, int]]):
    """``(index, sample seed)`` for every sample of an epoch: shuffled (or in order) from ``(seed, epoch)``,
    dealt out to rank ``rank`` of ``world`` as ``DistributedSampler`` does (padded by repeating the first
    indices so that every rank reads as many), starting after the samples given to :meth:`skip`.

    Args:
        size: number of samples.
        seed: the run's seed.
        shuffle: a new order each epoch (:meth:`set_epoch`); ``False``: index order.
        rank, world: this process's shard (set by :meth:`shard`).
    """

    def __init__(self, size: int, *, seed: int = 0, shuffle: bool = True, rank: int = 0, world: int = 1) -> None:
        if size < 1:
            raise ValueError(f"SeededSampler: size must be >= 1, got {size}.")
        if not 0 <= rank < world:
            raise ValueError(f"SeededSampler: rank {rank} is not in 0..{world - 1}.")
        self.size, self.seed, self.shuffle, self.rank, self.world = size, seed, shuffle, rank, world
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int) -> None:
        """Draw the order and the sample seeds of ``epoch`` next time."""
        self.epoch = epoch

    def shard(self, rank: int, world: int) -> SeededSampler:
        """The same sampling for rank ``rank`` of ``world`` processes."""
        return SeededSampler(self.size, seed=self.seed, shuffle=self.shuffle, rank=rank, world=world)

    def skip(self, samples: int) -> None:
        """Start the next epoch's iteration after this shard's first ``samples`` (a resumed epoch)."""
        self.start = samples

    def _generator(self) -> torch.Generator:
        return torch.Generator().manual_seed((self.seed * _MIX + self.epoch) % 2**63)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = self._generator()
        order = torch.randperm(self.size, generator=generator) if self.shuffle else torch.arange(self.size)
        seeds = torch.randint(0, 2**62, (self.size,), generator=generator)  # seeds[i]: sample i, this epoch
        total = len(self) * self.world
        order = torch.cat([order, order[: total - self.size]]) if total > self.size else order
        mine = order[self.rank :: self.world][self.start :].tolist()
        self.start = 0
        chosen = seeds[mine].tolist() if mine else []
        return iter(zip(mine, chosen, strict=True))

    def __len__(self) -> int:
        return -(-self.size // self.world)


class Indices(Sampler[int]):
    """The indices of a :class:`SeededSampler` without their seeds (for data with nothing random, such as
    cached features), in the same order; ``set_epoch`` is passed on."""

    def __init__(self, sampler: SeededSampler) -> None:
        self.sampler = sampler

    def set_epoch(self, epoch: int) -> None:
        """Pass the epoch on to the seeded sampler."""
        self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        return (index for index, _ in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


@contextmanager
def seeded(seed: int, *, restore: bool = True) -> Iterator[None]:
    """Run the block with torch's CPU generator, Python's ``random`` and (if imported) NumPy's global generator
    seeded from ``seed``; with ``restore`` their states are put back afterwards (the CUDA generators are
    never touched)."""
    numpy = sys.modules.get("numpy")
    saved = (torch.get_rng_state(), random.getstate(), numpy.random.get_state() if numpy else None) if restore else None
    torch.random.default_generator.manual_seed(seed)
    random.seed(seed)
    if numpy is not None:
        numpy.random.seed(seed % 2**32)
    try:
        yield
    finally:
        if saved is not None:
            torch.set_rng_state(saved[0])
            random.setstate(saved[1])
            if numpy is not None and saved[2] is not None:
                numpy.random.set_state(saved[2])


class SeededSamples(Dataset):
    """``dataset`` read with a seed per sample: key ``(index, seed)`` (from :class:`SeededSampler`) reads
    ``dataset[index]`` inside :func:`seeded`\\ ``(seed)``; a plain index reads it as it is. In a worker process
    the generators are not restored afterwards (nothing else draws from them there)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: int | tuple[int, int]) -> Any:
        if not isinstance(key, tuple):
            return self.dataset[key]
        index, seed = key
        with seeded(seed, restore=get_worker_info() is None):
            return self.dataset[index]

    def unaugmented(self) -> Dataset:
        """The wrapped dataset's deterministic version (what the feature cache reads), else the dataset."""
        plain = getattr(self.dataset, "unaugmented", None)
        return plain() if callable(plain) else self.dataset
