"""Detection under torchrun (gloo, CPU); used by tests/tasks/test_detect_distributed.py.

Usage: [torchrun --nproc_per_node W] ddp_detect.py OUT_DIR ANNOTATIONS. Each rank writes OUT_DIR/rank{R}.json:
``metric``: the detect task's mAP values with each rank holding every W-th image of a fixed set (torchmetrics
gathers them before COCO's evaluation); ``history``: a Learner's epochs training torchvision's Faster R-CNN on the
COCO scenes of ANNOTATIONS (sharded loaders of lists of images); rank 0 adds ``report_map``, the report's mAP
on the validation outputs gathered from every rank.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from detect_scenes import fixed_set, tiny_faster_rcnn
from torchgraft import Learner
from torchgraft.data.boxes import box_data
from torchgraft.data.detection import box_transforms, collate_boxes
from torchgraft.tasks import Detect
from torchgraft.tasks.metrics import MetricSet
from torchgraft.train.distributed import cleanup, is_main, rank, setup, world_size

NAMES = ["map", "map_50", "map_75", "mar_100"]


def main(out: Path, annotations: Path) -> None:
    setup()
    detections, targets = fixed_set(images=23)  # 12 and 11 images on 2 ranks
    mine = range(rank(), len(targets), world_size())
    metrics = MetricSet(Detect(), NAMES)
    for start in range(0, len(mine), 4):  # batches of this rank's images
        chosen = mine[start : start + 4]
        metrics.update([detections[i] for i in chosen], [targets[i] for i in chosen])
    result: dict = {"world": world_size(), "metric": metrics.compute()}

    data = box_data(annotations)
    train, valid = data.datasets(box_transforms(train=True), box_transforms(train=False))
    torch.manual_seed(0)
    learner = Learner(
        tiny_faster_rcnn(),
        DataLoader(train, batch_size=4, shuffle=True, collate_fn=collate_boxes),
        DataLoader(valid, batch_size=3, collate_fn=collate_boxes),
        task="detect",
        quiet=True,
    )
    learner.fit(2, 3e-3)
    result["history"] = [{k: row[k] for k in ("train_loss", *Detect.default_metrics)} for row in learner.history]
    if is_main():
        best = learner.best_epoch["index"]  # the epoch of highest mAP: the one kept
        kept, why = learner.kept.outputs_of(best)
        assert kept is not None, why
        result["kept_images"] = sum(len(t) for _, t in kept)
        result["report_map"] = learner.task.report(kept, data.classes).final["map"]
        result["best_map"] = learner.history[best]["map"]
    (out / f"rank{rank()}.json").write_text(json.dumps(result))
    learner.close()
    cleanup()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
