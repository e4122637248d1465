"""Shards against folders on the same photo-sized JPEGs: ``pack`` (list, check, copy) against today's check
alone (:func:`scan_images`), and one training epoch read through :class:`SampleStream` over the shards against
the folder's loader (:func:`dataset_loaders`: seeded sampling, the same transforms, the same workers).

Usage: python bench/shards.py [--count 2000] [--workers 2] [--write]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from _report import machine, report
from torchgraft.app.inputs import dataset_loaders
from torchgraft.app.settings import TrainSettings
from torchgraft.app.shards import ShardInput
from torchgraft.data.folders import image_data
from torchgraft.data.images import scan_images
from torchgraft.data.packing import pack
from torchgraft.data.preprocess import preprocessing_for
from torchgraft.data.wds import wds_data


def photos(root: Path, count: int) -> Path:
    """``count`` 500x375 JPEGs of smooth noise in 10 class folders."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (47, 63, 3), dtype=np.uint8)
    for i in range(count):
        folder = root / f"c{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        shifted = np.roll(base, i, axis=1)
        Image.fromarray(shifted).resize((500, 375), Image.BILINEAR).save(folder / f"{i}.jpg", quality=90)
    return root


def epoch_seconds(loader: object) -> tuple[float, int]:
    start, seen = time.perf_counter(), 0
    for images, _ in loader:  # type: ignore[attr-defined]
        seen += len(images)
    return time.perf_counter() - start, seen


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--write", action="store_true", help="append the results to docs/benchmarks.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = photos(Path(tmp) / "photos", args.count)
        files = sorted(str(p) for p in root.rglob("*.jpg"))
        start = time.perf_counter()
        scan_images(files, workers=args.workers)
        scan = time.perf_counter() - start
        start = time.perf_counter()
        pack(root, Path(tmp) / "shards", shard_size=500, workers=args.workers)
        packed = time.perf_counter() - start
        settings = TrainSettings(model="resnet18", batch_size=64, workers=args.workers, size=224)
        prep = preprocessing_for("resnet18")
        folder = image_data(root)
        train, _ = folder.datasets(prep.train_transform(), prep.eval_transform())
        folder_loader, _ = dataset_loaders(train, train, settings, torch.device("cpu"))
        shards = wds_data(Path(tmp) / "shards")
        built = type("Built", (), {"preprocessing": prep})()
        stream_loader, _ = ShardInput().loaders(shards, built, settings, torch.device("cpu"))  # type: ignore[arg-type]
        folder_time, folder_seen = epoch_seconds(folder_loader)
        stream_time, stream_seen = epoch_seconds(stream_loader)
    lines = [
        f"{args.count} JPEGs of 500x375, {args.workers} workers; {machine()}",
        "",
        "| what | seconds | images/s | ratio |",
        "|---|---|---|---|",
        f"| check every file (scan_images, full decode) | {scan:.2f} | {args.count / scan:.0f} | 1.00 |",
        f"| pack: check and copy into shards | {packed:.2f} | {args.count / packed:.0f} | {packed / scan:.2f} |",
        f"| one epoch, folder loader (train transforms) | {folder_time:.2f} | {folder_seen / folder_time:.0f} | 1.00 |",
        f"| one epoch, SampleStream over the shards | {stream_time:.2f} | {stream_seen / stream_time:.0f} | "
        f"{stream_time / folder_time:.2f} |",
    ]
    report("Shards against folders (bench/shards.py)", lines, write=args.write)


if __name__ == "__main__":
    main()
