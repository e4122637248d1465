"""Benchmark: loader throughput (images/s out of the loader and onto the device, ready for the model) of the
training pipeline.

Photo-sized 500x375 JPEGs (quality 90, synthesised: smooth gradients, shapes and sensor-like noise), the
standard training transforms (random resized crop to 224 + flip), 2 loader processes, batch 64, on CUDA when
there is one (else the CPU), three arms side by side in the same run:

* ``tensor``: the training loader exactly as ``torchgraft train`` builds it (the image recipe's ``loaders``:
  the real :class:`~torchgraft.data.folders.ImageDataset`, files decoded to uint8 tensors by
  :func:`~torchgraft.data.decode.decode_rgb`, through :func:`~torchgraft.app.inputs.dataset_loaders`): uint8
  crops, normalised when moved (after the transfer on CUDA; in the training process on the CPU), timed with
  that normalisation;
* ``bare``: the ceiling — a trivial dataset reading the bytes, ``torchvision.io.decode_jpeg`` and v2
  ``RandomResizedCrop`` + flip on uint8, nothing else (not even the normalisation), in a plain ``DataLoader``
  on the same 2 processes;
* ``uint8`` (on the CPU only): the same loader timed without the normalisation: what the loader processes
  deliver, and so what the normalisation in the training process costs;
* ``float`` (on the CPU only): the same files and transforms with each crop normalised to float in the loader
  processes (the CPU default before 2026-12-03);
* ``pil``: the pipeline before the tensor path (``load_rgb``, a PIL image, the same transforms with float
  crops normalised in the loader processes), through the same loaders.

Every batch is moved to the device as the Learner moves it (:func:`~torchgraft.tasks.batch.move`).

Targets (issue 23): tensor/bare >= 0.9, tensor/pil >= 1.8.

Run: python bench/decode.py [--images 512] [--seconds 10] [--rounds 2]
(append the results to docs/benchmarks.md with --write)
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import v2

from _report import machine, report
from torchgraft.app.images import ImageInput
from torchgraft.app.inputs import Built, dataset_loaders
from torchgraft.app.settings import TrainSettings
from torchgraft.data.folders import ImageData, ImageDataset
from torchgraft.data.images import load_rgb
from torchgraft.data.preprocess import PixelCollate, preprocessing_for
from torchgraft.tasks.batch import move

WIDTH, HEIGHT, QUALITY, WORKERS, BATCH, SIZE = 500, 375, 90, 2, 64, 224


def photo(rng: np.random.Generator) -> np.ndarray:
    """A 375x500 RGB uint8 picture with the statistics of a photo: gradients, a few shapes, fine noise."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    angle, base = rng.uniform(0, np.pi), rng.uniform(40, 200, size=3)
    ramp = np.cos(angle) * x / WIDTH + np.sin(angle) * y / HEIGHT
    image = base + 60 * ramp[..., None] * rng.uniform(-1, 1, size=3)
    for _ in range(6):
        cx, cy, r = rng.uniform(0, WIDTH), rng.uniform(0, HEIGHT), rng.uniform(20, 120)
        image[(x - cx) ** 2 + (y - cy) ** 2 < r * r] += rng.uniform(-70, 70, size=3)
    image += rng.normal(0, 6, size=image.shape)  # sensor noise: what makes a JPEG photo-sized in bytes
    return np.clip(image, 0, 255).astype(np.uint8)


def make_photos(folder: Path, count: int) -> list[Path]:
    """``count`` synthetic photos saved as quality-90 JPEGs in ``folder``."""
    rng = np.random.default_rng(0)
    paths = [folder / f"{i:05d}.jpg" for i in range(count)]
    for path in paths:
        Image.fromarray(photo(rng)).save(path, quality=QUALITY)
    return paths


class PilImages(ImageDataset):
    """The dataset as it read files before the tensor path: a PIL image from ``load_rgb``."""

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        return self.transform(load_rgb(self.samples[index][0])), self.target(index)  # type: ignore[misc]


class BareJpegs(Dataset):
    """The ceiling: bytes, ``decode_jpeg``, random resized crop and flip on uint8; nothing else."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths
        self.crop = v2.Compose(
            [v2.RandomResizedCrop(SIZE, scale=(0.35, 1.0), antialias=True), v2.RandomHorizontalFlip()]
        )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        data = torch.frombuffer(bytearray(self.paths[index].read_bytes()), dtype=torch.uint8)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return self.crop(decode_jpeg(data, mode=ImageReadMode.RGB)), 0


def throughput(loader: DataLoader, device: torch.device | None, seconds: float) -> float:
    """Images per second out of ``loader`` and onto ``device`` (moved as the Learner moves batches; ``None``:
    not moved), over whole epochs for about ``seconds``, after one warm-up epoch that starts the persistent
    workers."""
    for _ in loader:
        pass
    images, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for inputs, _ in loader:
            images += len(move(inputs, device) if device is not None else inputs)
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize()
    return images / (time.perf_counter() - start)


def loaders(paths: list[Path], device: torch.device) -> dict[str, Callable[[], DataLoader]]:
    """The arms' training-loader builders on ``paths`` (built one at a time: 2 processes each)."""
    prep = preprocessing_for("resnet50")
    samples = [(str(p), 0) for p in paths]
    settings = TrainSettings(workers=WORKERS, batch_size=BATCH)
    data, built = ImageData(["a"], samples, samples[:1]), Built(nn.Identity(), "", "", prep)
    pil = PilImages(samples, ["a"], prep.train_transform())
    crops = ImageDataset(samples, ["a"], prep.train_transform(normalize=False))
    arms = {
        "tensor": lambda: ImageInput().loaders(data, built, settings, device)[0],
        "bare": lambda: DataLoader(
            BareJpegs(paths),
            batch_size=BATCH,
            shuffle=True,
            num_workers=WORKERS,
            persistent_workers=True,
            pin_memory=device.type == "cuda",
        ),
        "pil": lambda: dataset_loaders(pil, pil, settings, device)[0],
    }
    if device.type == "cpu":
        arms["uint8"] = lambda: dataset_loaders(crops, crops, settings, device, collate_fn=PixelCollate(prep))[0]
        floats = ImageDataset(samples, ["a"], prep.train_transform())
        arms["float"] = lambda: dataset_loaders(floats, floats, settings, device)[0]
    return arms


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=512, help="synthetic photos to decode (default 512)")
    parser.add_argument("--seconds", type=float, default=10.0, help="timed seconds per arm (default 10)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds over the arms, best kept (default 2)")
    parser.add_argument("--write", action="store_true", help="append the results to docs/benchmarks.md")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory() as folder:
        builders = loaders(make_photos(Path(folder), args.images), device)
        speeds: dict[str, float] = {}
        for _ in range(args.rounds):  # arms interleaved, best of the rounds: a shared machine's noise evens out
            for name, build in builders.items():
                moved = device if name != "uint8" else None  # its normalisation is the GPU's
                speeds[name] = max(speeds.get(name, 0.0), throughput(build(), moved, args.seconds))
    t, b, p = speeds["tensor"], speeds["bare"], speeds["pil"]
    lines = [
        f"Machine: {machine()}. {args.images} synthetic {WIDTH}x{HEIGHT} JPEGs (quality {QUALITY}), random",
        f"resized crop to {SIZE} + flip, {WORKERS} loader processes, batch {BATCH}, onto {device.type},",
        f"{args.seconds:g} s per arm, best of {args.rounds} interleaved rounds.",
        "",
        "| pipeline | images/s |",
        "| --- | ---: |",
        f"| torchgraft train's loader (decode_rgb, uint8 transforms, ImageDataset + dataset_loaders) | {t:.0f} |",
        f"| bare decode_jpeg + crop (ceiling) | {b:.0f} |",
        f"| PIL (load_rgb + the same transforms) | {p:.0f} |",
    ]
    ratios = [f"tensor / bare = {t / b:.2f} (target >= 0.9); tensor / PIL = {t / p:.2f} (target >= 1.8)."]
    if "uint8" in speeds:
        u = speeds["uint8"]
        lines.append(f"| the same loader without the normalisation (the loader processes' part) | {u:.0f} |")
        ratios.append(f"uint8 / bare = {u / b:.2f}; uint8 / PIL = {u / p:.2f} (without the normalisation).")
        f = speeds["float"]
        lines.append(f"| float crops normalised in the loader processes (the CPU default until 12-03) | {f:.0f} |")
        ratios.append(f"float / bare = {f / b:.2f}; float / PIL = {f / p:.2f}.")
    lines += ["", *ratios]
    report("Loader throughput: tensor decode path", lines, write=args.write)


if __name__ == "__main__":
    main()
