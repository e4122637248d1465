"""Benchmark: the cost of ``Learner.fit`` over a hand-written training loop, side by side.

Same model (torchvision ResNet-18 grafted to 10 classes), same data (Fashion-MNIST from Debian's
``dataset-fashion-mnist``, 64 px, 3 channels, batch 32), same optimizer (Adam, lr 1e-3), same number of
steps, no validation. Runs alternate (hand, Learner, hand, ...) so that machine noise hits both; the ratio
of the medians is reported. fastai's Learner measured 1.30x on this setup (DESIGN.md); target <= 1.03x.

Run: python bench/loop_overhead.py  (append the results to docs/benchmarks.md with --write)
"""

from __future__ import annotations

import gzip
import statistics
import time
from pathlib import Path

import torch
import torchvision
from torch import nn

from _report import machine, report, should_write
from torchgraft import Learner, graft

FASHION = Path("/usr/share/datasets/fashion-mnist")
BATCHES, BATCH, SIZE, REPEATS = 25, 32, 64, 14


def fashion_mnist(n: int) -> torch.utils.data.TensorDataset:
    """The first ``n`` training images, as a (n, 3, 64, 64) float tensor and labels."""
    if not FASHION.is_dir():
        raise SystemExit(f"{FASHION} not found: apt-get install dataset-fashion-mnist")
    with gzip.open(FASHION / "train-images-idx3-ubyte.gz") as handle:
        images = torch.frombuffer(bytearray(handle.read()[16:]), dtype=torch.uint8).view(-1, 1, 28, 28)[:n]
    with gzip.open(FASHION / "train-labels-idx1-ubyte.gz") as handle:
        labels = torch.frombuffer(bytearray(handle.read()[8:]), dtype=torch.uint8)[:n].long()
    x = nn.functional.interpolate(images.float() / 255, size=SIZE, mode="bilinear").repeat(1, 3, 1, 1)
    return torch.utils.data.TensorDataset((x - 0.45) / 0.225, labels)


def hand_loop(model: nn.Module, loader: torch.utils.data.DataLoader) -> float:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    start = time.perf_counter()
    model.train()
    for inputs, targets in loader:
        loss = nn.functional.cross_entropy(model(inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def learner_loop(model: nn.Module, loader: torch.utils.data.DataLoader) -> float:
    # channels_last=False: the same memory format as the hand-written loop (the default "auto" would switch
    # ResNet-18 to channels-last and measure that speed-up instead of the loop's overhead)
    learner = Learner(
        model, loader, None, optimizer=torch.optim.Adam, weight_decay=0.0, metrics=None, quiet=True, channels_last=False
    )
    start = time.perf_counter()
    learner.fit(1, 1e-3)
    return time.perf_counter() - start


def main() -> None:
    write = should_write()
    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader(fashion_mnist(BATCHES * BATCH), batch_size=BATCH, shuffle=True)
    times: dict[str, list[float]] = {"hand": [], "learner": []}
    hand_loop(graft(torchvision.models.resnet18(), 10), loader)  # warm-up
    runs = {"hand": hand_loop, "learner": learner_loop}
    for repeat in range(REPEATS):  # alternate, and swap who goes first every other time
        for name in ("hand", "learner") if repeat % 2 == 0 else ("learner", "hand"):
            times[name].append(runs[name](graft(torchvision.models.resnet18(), 10), loader))
    hand, ours = statistics.median(times["hand"]), statistics.median(times["learner"])
    # paired: each Learner run against the hand-written run beside it, so slow drifts of the machine cancel
    ratios = [b / a for a, b in zip(times["hand"], times["learner"], strict=True)]
    lines = [
        f"`python bench/loop_overhead.py --write` on {machine()}. ResNet-18 grafted to 10 classes, Fashion-MNIST "
        f"at {SIZE} px, batch {BATCH}, Adam lr 1e-3, {BATCHES} steps per run, no validation; {REPEATS} alternating "
        "runs each (who goes first swaps every time); the ratio is the median of the paired ratios (each "
        "Learner run over the hand-written run beside it: single runs swing +-5% on this machine). The "
        "Learner's time includes building its "
        "optimizer from the layer groups, the stale-optimizer check before every step and the per-step "
        "bookkeeping. Target: <= 1.03x "
        "(fastai measured 1.30x).",
        "",
        "| loop | median (s) | runs (s) |",
        "|---|---|---|",
        f"| hand-written | {hand:.2f} | {', '.join(f'{t:.2f}' for t in times['hand'])} |",
        f"| `Learner.fit` | {ours:.2f} | {', '.join(f'{t:.2f}' for t in times['learner'])} |",
        f"| **ratio** (median of paired ratios) | **{statistics.median(ratios):.3f}x** | "
        f"{', '.join(f'{r:.3f}' for r in ratios)} |",
    ]
    report("loop overhead: Learner.fit vs a hand-written loop", lines, write=write)


if __name__ == "__main__":
    main()
