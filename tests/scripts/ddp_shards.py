"""Train a small CNN with the Learner on WebDataset shards (SampleStream loaders, random augmentation), under
torchrun or alone; used by the shard tests.

Usage: [torchrun --nproc_per_node W] ddp_shards.py SHARDS OUT_FILE GLOBAL_BATCH WORKERS. Each rank reads
GLOBAL_BATCH / W samples per step. Rank 0 writes OUT_FILE with the final weights, the history, the number of
batches per epoch and whether every rank ended with identical weights.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, default_collate
from torchvision.transforms import v2

from torchgraft import Learner
from torchgraft.data.streams import SampleStream, as_target
from torchgraft.data.wds import wds_data
from torchgraft.train.distributed import cleanup, is_main, setup, world_size


def cnn() -> nn.Module:
    """Two convolutions and a classifier, no BatchNorm (whose batch statistics differ per process)."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.Tanh(), nn.Conv2d(8, 8, 3, padding=1), nn.Tanh(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3),
    )  # fmt: skip


class Item:
    """``(transform(image), target)`` (a class: loader workers pickle it)."""

    def __init__(self, transform: Any, task: str, count: int) -> None:
        self.transform, self.task, self.count = transform, task, count

    def __call__(self, image: Any, target: Any) -> tuple[torch.Tensor, Any]:
        return self.transform(image), as_target(target, self.task, self.count)


def loaders(shards: str | Path, batch: int, workers: int, *, seed: int = 0) -> tuple[DataLoader, DataLoader]:
    """Augmented training batches (random crops and flips) and plain validation batches of the shards."""
    data = wds_data(shards, seed=seed)
    finish = [v2.ToDtype(torch.float32, scale=True)]
    augment = v2.Compose([v2.ToImage(), v2.RandomResizedCrop(16, scale=(0.5, 1.0)), v2.RandomHorizontalFlip(), *finish])
    plain = v2.Compose([v2.ToImage(), v2.Resize((16, 16)), *finish])
    made = []
    for split, transform, pad in ((data.train, augment, True), (data.valid, plain, False)):
        item = Item(transform, data.task, len(data.classes))
        stream = SampleStream(split.reader, item, default_collate, batch_size=batch, seed=seed, pad=pad)
        made.append(DataLoader(stream, batch_size=None, num_workers=workers))
    return made[0], made[1]


def main() -> None:
    shards, out, global_batch, workers = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    torch.set_num_threads(1)
    setup()
    torch.manual_seed(0)
    model = cnn()
    train, valid = loaders(shards, global_batch // world_size(), workers)
    learner = Learner(model, train, valid, task="classify", optimizer=torch.optim.SGD, weight_decay=0.0, quiet=True)
    history = learner.fit_one_cycle(2, 0.5)
    batches = len(learner.train_dl)
    learner.close()
    same = True
    if world_size() > 1:
        flat = torch.cat([p.detach().flatten() for p in model.parameters()])
        gathered = [torch.empty_like(flat) for _ in range(world_size())]
        dist.all_gather(gathered, flat)
        same = all(torch.equal(g, gathered[0]) for g in gathered)
    if is_main():
        torch.save({"weights": model.state_dict(), "history": history, "batches": batches, "same": same}, out)
    cleanup()


if __name__ == "__main__":
    main()
