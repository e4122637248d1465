"""fastai's side of the fine-tuning benchmark; run with a Python that has fastai 2.8 (not torchgraft).

Usage: python fastai_finetune.py FOLDER LITE0_WEIGHTS OUT_JSON

``vision_learner`` on timm's ``efficientnet_lite0`` (fastai's own head: concat pooling + MLP), the ImageNet
Lite0 weights copied into its body by order and shape, ImageNet normalisation, 64 px, batch 64, then
``fine_tune(2, freeze_epochs=1)`` with fastai's defaults. Writes accuracy and wall time as JSON.
"""

from __future__ import annotations

import json
import sys
import time

import torch
from fastai.vision.all import ImageDataLoaders, Normalize, Resize, accuracy, imagenet_stats, vision_learner


def main() -> None:
    folder, weights, out = sys.argv[1:4]
    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    dls = ImageDataLoaders.from_folder(
        folder,
        train="train",
        valid="valid",
        item_tfms=Resize(64),
        batch_tfms=Normalize.from_stats(*imagenet_stats),
        bs=64,
    )
    learn = vision_learner(dls, "efficientnet_lite0", pretrained=False, metrics=accuracy)
    body = learn.model[0].model  # fastai's TimmBody around the timm model (classifier removed)
    target = body.state_dict()
    source = torch.load(weights, map_location="cpu", weights_only=True)
    mapped = {}
    for (name, tensor), saved in zip(target.items(), source.values(), strict=False):
        assert tensor.shape == saved.shape, (name, tensor.shape, saved.shape)
        mapped[name] = saved
    body.load_state_dict(mapped)
    start = time.perf_counter()
    learn.fine_tune(2, freeze_epochs=1)
    seconds = time.perf_counter() - start
    _, acc = learn.validate()
    with open(out, "w") as handle:
        json.dump({"accuracy": float(acc), "seconds": seconds, "groups": len(learn.opt.param_lists)}, handle)


if __name__ == "__main__":
    main()
