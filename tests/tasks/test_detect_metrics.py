"""Detection metrics: the detect task's mAP values equal pycocotools' COCOeval run directly on the same fixed
predictions and ground truth (several classes, images without objects, every backend), they share one
accumulator, per-class AP/AR come out by class name, and the errors name what was wrong."""

from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path

import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from torchgraft.tasks import Detect, get_task
from torchgraft.tasks.accumulators import coco_evaluation
from torchgraft.tasks.boxmetrics import coco_backend, image_errors
from torchgraft.tasks.metrics import MetricSet, TargetError

sys.path.insert(0, str(Path(__file__).parents[1] / "scripts"))
from detect_scenes import fixed_set

CLASSES = ["bag", "shirt", "shoe", "sock"]  # "sock" has no boxes and no detections: AP None


def pycocotools_values(detections: list[dict], targets: list[dict], classes: int) -> tuple[list[float], list[float]]:
    """COCOeval's 12 stats and per-class AP (IoU .50:.95, all areas, 100 detections; -1: no ground truth) on the
    same set, written in COCO's own format (xywh, area = w * h, no crowd)."""
    images = [{"id": i + 1, "width": 640, "height": 640} for i in range(len(targets))]
    annotations, results = [], []
    for i, (target, found) in enumerate(zip(targets, detections, strict=True)):
        for box, label in zip(target["boxes"].tolist(), target["labels"].tolist(), strict=True):
            w, h = box[2] - box[0], box[3] - box[1]
            annotations.append(
                {"id": len(annotations) + 1, "image_id": i + 1, "category_id": label, "bbox": [box[0], box[1], w, h],
                 "area": w * h, "iscrowd": 0}
            )  # fmt: skip
        rows = zip(found["boxes"].tolist(), found["scores"].tolist(), found["labels"].tolist(), strict=True)
        for box, score, label in rows:
            results.append(
                {"image_id": i + 1, "category_id": label, "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                 "score": score}
            )  # fmt: skip
    truth = COCO()
    truth.dataset = {"images": images, "annotations": annotations, "categories": [{"id": c} for c in range(classes)]}
    with contextlib.redirect_stdout(io.StringIO()):
        truth.createIndex()
        evaluation = COCOeval(truth, truth.loadRes(results), iouType="bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    precision = evaluation.eval["precision"][:, :, :, 0, -1]  # (IoU, recall, class) at area all, 100 dets
    per_class = []
    for c in range(classes):
        values = precision[:, :, c]
        per_class.append(float(values[values > -1].mean()) if (values > -1).any() else -1.0)
    return [float(s) for s in evaluation.stats], per_class


@pytest.mark.parametrize("backend", ["pycocotools", "faster_coco_eval"])
def test_map_values_equal_pycocotools_cocoeval_on_a_fixed_set(backend):
    pytest.importorskip(backend)
    detections, targets = fixed_set()
    stats, per_class = pycocotools_values(detections, targets, 3)
    assert stats[0] > 0.05 and stats[1] > stats[0]  # a set where the values mean something
    task = Detect(backend=backend)
    metrics = MetricSet(task, ["map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_1", "mar_100"])
    for start in range(0, len(targets), 5):  # batches of 5 images: accumulated over the whole set
        metrics.update(detections[start : start + 5], targets[start : start + 5])
    values = metrics.compute()
    expected = dict(map=stats[0], map_50=stats[1], map_75=stats[2], map_small=stats[3], map_medium=stats[4],
                    map_large=stats[5], mar_1=stats[6], mar_100=stats[8])  # fmt: skip
    for name, value in expected.items():
        assert values[name] == pytest.approx(value, abs=1e-4), name
    full = coco_evaluation([(detections, targets)], CLASSES, backend=backend)
    for c, name in enumerate(CLASSES[:3]):
        assert full["per_class_ap"][name] == pytest.approx(per_class[c], abs=1e-4), name
    assert full["per_class_ap"]["sock"] is None and full["per_class_ar"]["sock"] is None
    assert full["map"] == pytest.approx(stats[0], abs=1e-4)


def test_the_values_of_one_metric_set_share_one_accumulator_and_equal_separate_ones():
    detections, targets = fixed_set(images=10, seed=3)
    together = MetricSet(Detect(), ["map", "map_50", "map_75"])
    together.update(detections, targets)
    accumulators = {id(metric.accumulator) for metric in together.metrics.values()}
    assert len(accumulators) == 1  # one copy of the detections, one COCO evaluation
    apart = {}
    for name in ("map", "map_50", "map_75"):
        alone = MetricSet(Detect(), [name])
        alone.update(detections, targets)
        apart.update(alone.compute())
    assert together.compute() == pytest.approx(apart, abs=1e-7)
    together.reset()  # the shared accumulator is emptied with its owner
    together.update(detections[:3], targets[:3])
    first3 = MetricSet(Detect(), ["map_50"])
    first3.update(detections[:3], targets[:3])
    assert together.compute()["map_50"] == pytest.approx(first3.compute()["map_50"], abs=1e-7)


def test_metrics_say_higher_is_better_and_unknown_names_list_the_detection_ones():
    task = get_task("detect")
    assert task.default_metrics == ("map", "map_50", "map_75")
    assert MetricSet(task, ["map", "mar_100"]).higher_is_better("map") is True
    with pytest.raises(ValueError, match=r"unknown metric 'accuracy' for the detect task.*map, map_50, map_75"):
        MetricSet(task, ["accuracy"])


def test_metrics_refuse_a_dict_of_losses_and_targets_that_do_not_fit():
    detections, targets = fixed_set(images=2)
    metrics = MetricSet(Detect(), ["map"])
    with pytest.raises(TargetError, match="dict of losses"):
        metrics.update({"loss_classifier": torch.tensor(1.0)}, targets)
    with pytest.raises(TargetError, match="2 images but targets 1"):
        metrics.update(detections, targets[:1])
    with pytest.raises(TargetError, match="needs 'boxes' and 'labels'"):
        metrics.update(detections, [{"boxes": torch.zeros(0, 4)}, targets[1]])


def test_a_missing_backend_names_the_install_command():
    with pytest.raises(ValueError, match="choose one of faster_coco_eval, pycocotools"):
        coco_backend("cocoapi")
    assert coco_backend() in ("faster_coco_eval", "pycocotools")


def test_report_gives_the_values_and_a_per_class_table_by_name():
    detections, targets = fixed_set()
    task = Detect(backend="pycocotools")
    stats, per_class = pycocotools_values(detections, targets, 3)
    report = task.report([(detections[:12], targets[:12]), (detections[12:], targets[12:])], CLASSES)
    assert report.final["map"] == pytest.approx(stats[0], abs=1e-4)
    assert report.final["map_50"] == pytest.approx(stats[1], abs=1e-4)
    assert report.final["map_75"] == pytest.approx(stats[2], abs=1e-4)
    assert report.final["per_class_ap"]["shirt"] == pytest.approx(per_class[1], abs=1e-4)
    assert report.lines[0].split() == ["class", "AP", "AR@100"]
    assert report.lines[2].startswith("shirt") and f"{per_class[1]:.3f}" in report.lines[2]
    assert "n/a" in report.lines[4]  # sock: no boxes
    rows = task.per_class([(detections, targets)], CLASSES)
    assert [r["support"] for r in rows] == [sum(int((t["labels"] == c).sum()) for t in targets) for c in range(4)]


def test_image_errors_score_matches_per_image():
    truth = [
        {"boxes": torch.tensor([[0.0, 0, 10, 10], [20, 20, 40, 40]]), "labels": torch.tensor([0, 1])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
        {"boxes": torch.tensor([[0.0, 0, 10, 10]]), "labels": torch.tensor([0])},
    ]
    found = [
        {"boxes": torch.tensor([[0.0, 0, 10, 10], [20, 20, 40, 40]]), "scores": torch.tensor([0.9, 0.8]),
         "labels": torch.tensor([0, 1])},
        {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)},
        {"boxes": torch.tensor([[0.0, 0, 10, 10], [50, 50, 60, 60]]), "scores": torch.tensor([0.9, 0.3]),
         "labels": torch.tensor([1, 0])},
    ]  # fmt: skip
    errors = image_errors(found, truth, score_threshold=0.5)
    assert errors.tolist() == [0.0, 0.0, 1.0]  # perfect, empty and right, wrong class
    assert image_errors(found[2:], truth[2:], score_threshold=0.0).tolist() == [1.0]


def test_decode_and_prediction_keep_detections_above_the_threshold_with_class_names():
    task = Detect(score_threshold=0.5)
    outputs = [
        {"boxes": torch.tensor([[1.0, 2, 3, 4], [5, 6, 7, 8], [0, 0, 9, 9]]), "scores": torch.tensor([0.6, 0.2, 0.9]),
         "labels": torch.tensor([1, 0, 2])},
        {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)},
    ]  # fmt: skip
    decoded = task.decode(outputs)
    assert decoded["scores"].tolist() == pytest.approx([0.9, 0.6]) and decoded["image"].tolist() == [0, 0]
    rows = task.detections(decoded, CLASSES)
    assert rows[0] == {"image": 0, "label": "shoe", "score": 0.9, "box": [0.0, 0.0, 9.0, 9.0]}
    assert task.prediction(decoded, CLASSES, top_k=1) == ([("shoe", pytest.approx(0.9))], {})
    assert len(Detect(score_threshold=0.1).decode(outputs)["scores"]) == 3
    with pytest.raises(ValueError, match="score_threshold must lie in"):
        Detect(score_threshold=1.5)
