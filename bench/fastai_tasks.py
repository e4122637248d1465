"""fastai's side of the multi-label / regression benchmark; run with a Python that has fastai 2.8.

Usage: python fastai_tasks.py TASK CSV LITE0_WEIGHTS SIZE OUT_JSON   (TASK: multilabel, regression or
regression_yrange: regression with ``y_range=(0, 1)``)

``DataBlock`` with ``MultiCategoryBlock`` (labels split on ``;``) or ``RegressionBlock``, the CSV's ``split``
column as the validation split, ``vision_learner`` on timm's ``efficientnet_lite0`` with the ImageNet Lite0
weights copied into its body by order and shape, ImageNet normalisation, batch 64, ``fine_tune(2,
freeze_epochs=1)`` with fastai's defaults. Writes the wall time, the validation outputs (sigmoid
probabilities or values, in the CSV's order) and fastai's own metric on them (micro-F1 at 0.5, or MAE) as JSON.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from fastai.vision.all import (
    ColReader,
    ColSplitter,
    DataBlock,
    F1ScoreMulti,
    ImageBlock,
    MultiCategoryBlock,
    Normalize,
    RegressionBlock,
    Resize,
    imagenet_stats,
    mae,
    vision_learner,
)


def main() -> None:
    task, table, weights, size, out = sys.argv[1:6]
    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    root = Path(table).parent
    frame = pd.read_csv(table)
    frame["is_valid"] = frame["split"] == "valid"
    blocks = (ImageBlock, MultiCategoryBlock if task == "multilabel" else RegressionBlock)
    get_y = ColReader(1, label_delim=";") if task == "multilabel" else ColReader(1)
    block = DataBlock(
        blocks=blocks,
        get_x=ColReader(0, pref=f"{root}/"),
        get_y=get_y,
        splitter=ColSplitter(),
        item_tfms=Resize(int(size)),
        batch_tfms=Normalize.from_stats(*imagenet_stats),
    )
    dls = block.dataloaders(frame, bs=64)
    metric = F1ScoreMulti(average="micro") if task == "multilabel" else mae
    y_range = (0.0, 1.0) if task == "regression_yrange" else None  # fastai's sigmoid range, as its docs advise
    learn = vision_learner(dls, "efficientnet_lite0", pretrained=False, metrics=metric, y_range=y_range)
    body = learn.model[0].model
    source = torch.load(weights, map_location="cpu", weights_only=True)
    body.load_state_dict(dict(zip(body.state_dict(), source.values(), strict=False)))
    start = time.perf_counter()
    learn.fine_tune(2, freeze_epochs=1)
    seconds = time.perf_counter() - start
    outputs, _ = learn.get_preds(dl=dls.valid)  # fastai applies the loss's activation (sigmoid for multi-label)
    own = learn.validate()  # fastai's own metric on the whole validation set: a check of the outputs' order
    result = {"seconds": seconds, "outputs": outputs.tolist(), "own_metric": float(own[1])}
    if task == "multilabel":
        result["vocab"] = [str(v) for v in dls.vocab]
    Path(out).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
