"""The torchvision detection tutorial's recipe, the other arm of bench/detect.py; one run per process.

Usage: python bench/tutorial_detect.py ANNOTATIONS SIZE EPOCHS BATCH DEVICE OUT_JSON

The model is the one ``torchgraft train --task detect --model timm/efficientnet_lite0 --detector fcos --size
SIZE`` builds (the offline ImageNet Lite0 weights, FCOS grafted on it by ``torchgraft.graft_detector`` with
``input_size=(3, SIZE, SIZE)``, so the same ``min_size``); the training is the tutorial's
(https://pytorch.org/tutorials/intermediate/torchvision_tutorial.html and its ``references/detection/engine.py``):
every parameter that requires grad in SGD(lr 0.005, momentum 0.9, weight decay 5e-4), StepLR(step_size=3,
gamma=0.1) stepped per epoch, the engine's linear warm-up over the first epoch (factor 1/1000, at most 1000
steps), the sum of the model's losses, an evaluation after every epoch. The data are torchgraft's readers and
pipelines as the CLI uses them (``box_data`` + ``box_transforms``: a random horizontal flip; the detector
resizes and normalises inside), in a plain DataLoader with ``collate_boxes``. mAP is torchmetrics'
``MeanAveragePrecision`` (xyxy, COCO backend and thresholds as torchgraft's, ``torchgraft.tasks.boxmetrics``).
Writes each epoch's map / map_50 and the loop's seconds as JSON.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchmetrics.detection import MeanAveragePrecision

import torchgraft
from torchgraft.data.boxes import box_data
from torchgraft.data.detection import box_transforms, collate_boxes
from torchgraft.tasks.boxmetrics import IOU_THRESHOLDS, RECALL_THRESHOLDS, coco_backend, plain_targets


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: DataLoader, shift: int, device: torch.device) -> dict[str, float]:
    """COCO mAP over the validation set (labels back in the data's 0..C-1)."""
    model.eval()
    metric = MeanAveragePrecision(
        box_format="xyxy", backend=coco_backend(), iou_thresholds=IOU_THRESHOLDS, rec_thresholds=RECALL_THRESHOLDS
    )
    for images, targets in loader:
        found = model([image.to(device) for image in images])
        detections = [{"boxes": d["boxes"].float().cpu(), "scores": d["scores"].float().cpu(),
                       "labels": d["labels"].long().cpu() - shift} for d in found]  # fmt: skip
        metric.update(detections, plain_targets(targets))
    values = metric.compute()
    return {"map": float(values["map"]), "map_50": float(values["map_50"])}


def main() -> None:
    annotations, size, epochs, batch, device, out = sys.argv[1:7]
    size, epochs, batch, device = int(size), int(epochs), int(batch), torch.device(device)
    torch.set_flush_denormal(True)  # as torchgraft's CLI: denormals make CPU convolutions 7-16x slower
    torch.manual_seed(0)
    data = box_data(annotations)
    train, valid = data.datasets(box_transforms(train=True), box_transforms(train=False))
    train_dl = DataLoader(train, batch_size=batch, shuffle=True, num_workers=0, collate_fn=collate_boxes)
    valid_dl = DataLoader(valid, batch_size=batch, num_workers=0, collate_fn=collate_boxes)
    backbone = torchgraft.pretrained_model("timm/efficientnet_lite0")[0]
    model = torchgraft.graft_detector(backbone, data.classes, head="fcos", input_size=(3, size, size)).to(device)
    shift = torchgraft.label_offset(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.005, momentum=0.9, weight_decay=0.0005)
    schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.1)
    start, history = time.perf_counter(), []
    for epoch in range(epochs):
        model.train()
        warmup = None
        steps = min(1000, len(train_dl) - 1)
        if epoch == 0 and steps > 0:  # engine.train_one_epoch's warm-up
            warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1.0 / 1000, total_iters=steps)
        for images, targets in train_dl:
            images = [image.to(device) for image in images]
            targets = [
                {"boxes": t["boxes"].as_subclass(torch.Tensor).to(device), "labels": (t["labels"] + shift).to(device)}
                for t in targets
            ]
            loss = sum(model(images, targets).values())
            if not torch.isfinite(loss):
                raise SystemExit(f"tutorial_detect: loss is {float(loss)} at epoch {epoch}, stopping training")
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if warmup is not None:
                warmup.step()
        schedule.step()
        history.append({"epoch": epoch + 1, **evaluate(model, valid_dl, shift, device)})
    seconds = time.perf_counter() - start
    Path(out).write_text(json.dumps({"seconds": seconds, "history": history, "classes": data.classes}))


if __name__ == "__main__":
    main()
