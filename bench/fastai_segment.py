"""fastai's side of the segmentation benchmark; run with a Python that has fastai 2.8 and timm (no torchgraft).

Usage: python fastai_segment.py DATA LITE0_WEIGHTS SIZE FREEZE_EPOCHS EPOCHS BATCH OUT_JSON

``DataBlock((ImageBlock, MaskBlock(codes)))`` over DATA's ``train/`` and ``valid/`` pairs (``classes.txt`` as
the codes), each image resized to SIZE, fastai's ``aug_transforms()`` (flip, rotate, zoom, warp, lighting) and
ImageNet normalisation; ``unet_learner`` on timm's ``efficientnet_lite0`` with the ImageNet Lite0 tensors loaded
(same names order), ``fine_tune(EPOCHS, freeze_epochs=FREEZE_EPOCHS)`` with fastai's defaults. Writes the wall
time of ``fine_tune`` and the validation confusion matrix as JSON, or the error if the model cannot be built.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import timm
import torch
from fastai.vision.all import (
    DataBlock,
    FuncSplitter,
    ImageBlock,
    MaskBlock,
    Normalize,
    Resize,
    aug_transforms,
    get_image_files,
    imagenet_stats,
    unet_learner,
)


def main() -> None:
    data, weights, size, freeze, epochs, batch, out = sys.argv[1:8]
    size, freeze, epochs, batch = int(size), int(freeze), int(epochs), int(batch)
    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    root = Path(data)
    codes = (root / "classes.txt").read_text().split()
    block = DataBlock(
        blocks=(ImageBlock, MaskBlock(codes)),
        get_y=lambda p: p.parent.parent / "masks" / f"{p.stem}.png",
        splitter=FuncSplitter(lambda p: p.parent.parent.name == "valid"),
        item_tfms=Resize(size),
        batch_tfms=[*aug_transforms(), Normalize.from_stats(*imagenet_stats)],
    )
    files = [p for p in get_image_files(root) if p.parent.name == "images"]
    dls = block.dataloaders(files, bs=batch, num_workers=2)

    def lite0(pretrained: bool = True) -> torch.nn.Module:
        model = timm.create_model("efficientnet_lite0", pretrained=False)
        source = torch.load(weights, map_location="cpu", weights_only=True)
        model.load_state_dict(dict(zip(model.state_dict(), source.values(), strict=True)))
        return model

    try:
        learn = unet_learner(dls, lite0, n_out=len(codes))
    except Exception as error:
        Path(out).write_text(json.dumps({"error": f"{type(error).__name__}: {error}"}))
        return
    start = time.perf_counter()
    learn.fine_tune(epochs, freeze_epochs=freeze)
    seconds = time.perf_counter() - start
    outputs, targets = learn.get_preds()
    n = len(codes)
    predicted, targets = outputs.argmax(1), targets.long()
    matrix = torch.bincount(targets.flatten() * n + predicted.flatten(), minlength=n * n).view(n, n)
    Path(out).write_text(json.dumps({"seconds": seconds, "matrix": matrix.tolist()}))


if __name__ == "__main__":
    main()
