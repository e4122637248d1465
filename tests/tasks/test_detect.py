"""The detect task end to end: torchvision detectors trained by the Learner on a real box dataset read from a
COCO JSON on disk (skimage photos pasted on textures, exact boxes, images without objects) — the loss falls,
validation gives COCO's mAP values (no validation loss), the report, per-class table and pictures come from the
kept validation outputs — and the refusals of what is not a detector or not a detection batch."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from torchgraft import Learner
from torchgraft.data.boxes import box_data
from torchgraft.data.detection import box_transforms, collate_boxes
from torchgraft.tasks import Detect, get_task, task_from_record
from torchgraft.tasks.detect import DetectionModelError, label_offset_of, model_classes
from torchgraft.tasks.metrics import TargetError
from torchgraft.tasks.pictures import ValidationInputs

sys.path.insert(0, str(Path(__file__).parents[1] / "scripts"))
from detect_scenes import CLASSES, tiny_faster_rcnn, write_scenes


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    return write_scenes(tmp_path_factory.mktemp("scenes"))


def _loaders(annotations: Path, *, batch_size: int = 4) -> tuple[DataLoader, DataLoader, list]:
    data = box_data(annotations)
    assert data.classes == CLASSES and any(len(s.labels) == 0 for s in data.valid)
    train, valid = data.datasets(box_transforms(train=True), box_transforms(train=False))
    train_dl = DataLoader(train, batch_size=batch_size, shuffle=True, collate_fn=collate_boxes)
    return train_dl, DataLoader(valid, batch_size=batch_size, collate_fn=collate_boxes), data.valid


def _first_and_last(losses: list[float], k: int = 4) -> tuple[float, float]:
    return sum(losses[:k]) / k, sum(losses[-k:]) / k


def test_a_torchvision_faster_rcnn_trains_through_the_learner_and_reports_map(scenes, tmp_path):
    torch.manual_seed(0)
    train_dl, valid_dl, valid_samples = _loaders(scenes)
    learner = Learner(tiny_faster_rcnn(), train_dl, valid_dl, task="detect", checkpoint_dir=tmp_path, quiet=True)
    learner.fit(3, 3e-3)
    first, last = _first_and_last(learner.loss_history)
    assert last < 0.8 * first, learner.loss_history
    for row in learner.history:
        assert "valid_loss" not in row  # detections have no loss
        assert 0 <= row["map_75"] <= row["map_50"] <= 1 and 0 <= row["map"] <= row["map_50"]
    assert max(row["map_50"] for row in learner.history) > 0.02  # it finds some objects already
    best = learner.load_best()
    assert best["map"] == max(row["map"] for row in learner.history)  # mAP is maximised
    batches, why = learner.kept.outputs_of(learner.best_epoch["index"])
    assert batches is not None, why
    assert sum(len(targets) for _, targets in batches) == len(valid_samples)
    for detections, targets in batches:
        for found, truth in zip(detections, targets, strict=True):
            assert found["labels"].numel() == 0 or 0 <= int(found["labels"].min()) <= int(found["labels"].max()) < 3
            assert tuple(truth["canvas_size"].tolist()) == (96, 128)
    report = learner.task.report(batches, CLASSES)
    assert report.final["map"] == pytest.approx(best["map"], abs=1e-6)  # the whole set, as validated
    assert set(report.final["per_class_ap"]) == set(CLASSES) and len(report.lines) == len(CLASSES) + 2
    inputs = ValidationInputs("image", [s.path for s in valid_samples], load=Image.open)
    files = learner.task.pictures(batches, CLASSES, tmp_path / "pictures", inputs=inputs)
    assert [f.name for f in files] == ["per_class_ap.png", "worst_boxes.png"] and all(f.stat().st_size for f in files)
    learner.close()


def test_labels_reach_a_background_model_shifted_and_come_back_as_the_datas(scenes):
    """Faster R-CNN keeps label 0 for the background: its RoI heads see labels 1..3 while training; the task's
    detections are 0..2 again."""
    model = tiny_faster_rcnn()
    seen: list[torch.Tensor] = []
    hook = model.roi_heads.register_forward_pre_hook(lambda module, args: seen.extend(t["labels"] for t in args[3]))
    images, targets = next(iter(_loaders(scenes)[0]))
    task = get_task("detect")
    model.train()
    losses = task.forward(model, images, targets, training=True)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    assert task.loss(losses, targets).ndim == 0
    assert [s.tolist() for s in seen] == [(t["labels"] + 1).tolist() for t in targets]
    hook.remove()
    model.eval()
    with torch.no_grad():
        detections = task.forward(model, images, targets, training=False)
    assert len(detections) == len(images) and all(set(d) == {"boxes", "scores", "labels"} for d in detections)
    labels = torch.cat([d["labels"] for d in detections])
    assert labels.numel() and int(labels.min()) >= 0 and int(labels.max()) < len(CLASSES)


def test_a_detector_without_background_gets_the_labels_as_they_are(scenes):
    """FCOS scores the classes alone: labels 0..2 reach it unshifted, and its losses come back."""
    from torchvision.models.detection import fcos_resnet50_fpn

    torch.manual_seed(0)
    model = fcos_resnet50_fpn(weights=None, weights_backbone=None, num_classes=3, min_size=96, max_size=128).train()
    seen: list[torch.Tensor] = []
    model.transform.register_forward_pre_hook(lambda module, args: seen.extend(t["labels"] for t in args[1]))
    images, targets = next(iter(_loaders(scenes)[0]))
    losses = Detect().forward(model, images, targets, training=True)
    assert set(losses) == {"classification", "bbox_regression", "bbox_ctrness"}
    assert [s.tolist() for s in seen] == [t["labels"].tolist() for t in targets]


def test_label_offset_is_read_from_the_model():
    from torchvision.models.detection import fcos_resnet50_fpn, retinanet_resnet50_fpn, ssdlite320_mobilenet_v3_large

    with torch.device("meta"):
        ssd = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=4)
        fcos = fcos_resnet50_fpn(weights=None, weights_backbone=None, num_classes=3)
        retinanet = retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=3)
    assert [label_offset_of(m) for m in (ssd, fcos, retinanet, tiny_faster_rcnn())] == [1, 0, 0, 1]
    assert [model_classes(m) for m in (ssd, fcos, retinanet, tiny_faster_rcnn())] == [4, 3, 3, 4]
    marked = nn.Linear(2, 2)
    marked.label_offset = 1  # type: ignore[assignment]  # a detector that records its convention
    assert label_offset_of(marked) == 1 and Detect(label_offset=0).offset(tiny_faster_rcnn()) == 0


class _NotADetector(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Conv2d(3, 4, 3)

    def forward(self, images: list[torch.Tensor], targets: object = None) -> torch.Tensor:
        return torch.stack([self.layer(image).mean() for image in images])


def test_a_model_that_gives_no_losses_or_no_boxes_is_refused_with_the_fix(scenes):
    images, targets = next(iter(_loaders(scenes)[0]))
    task = Detect()
    with pytest.raises(DetectionModelError, match=r"returned Tensor, not a dict of losses.*model\.train\(\)"):
        task.forward(_NotADetector(), images, targets, training=True)
    with pytest.raises(DetectionModelError, match=r"not one \{'boxes', 'scores', 'labels'\} dict per image"):
        task.forward(_NotADetector(), images, targets, training=False)
    detector = tiny_faster_rcnn().eval()  # a detector left in evaluation mode returns boxes, not losses
    with pytest.raises(DetectionModelError, match="not a dict of losses"):
        task.forward(detector, images, targets, training=True)
    torch.manual_seed(0)
    learner = Learner(_NotADetector(), [(images, targets)], task="detect", quiet=True)
    with pytest.raises(DetectionModelError, match="not a dict of losses"):
        learner.fit(1, 1e-3)


def test_batches_that_are_not_images_and_target_dicts_are_refused(scenes):
    images, targets = next(iter(_loaders(scenes)[0]))
    model, task = tiny_faster_rcnn().train(), Detect()
    with pytest.raises(TargetError, match=r"collate_fn=torchgraft\.data\.detection\.collate_boxes"):
        task.forward(model, torch.zeros(4, 3, 8), targets, training=True)
    with pytest.raises(TargetError, match="4 images but targets 3"):
        task.forward(model, images, targets[:3], training=True)
    bad = [{**targets[0], "labels": targets[0]["labels"].float()}, *targets[1:]]
    with pytest.raises(TargetError, match=r"need \(N, 4\) xyxy pixel boxes and \(N,\) integer class indices"):
        task.forward(model, images, bad, training=True)
    too_few = tiny_faster_rcnn(classes=2).train()  # 3 outputs: background + 2, for data of 3 classes
    with pytest.raises(
        TargetError, match=r"class index 2 but the model scores 3 classes \+ 1 for the background.*num_classes=4"
    ):
        task.forward(
            too_few, images, [{**t, "labels": torch.full_like(t["labels"], 2)} for t in targets], training=True
        )
    with pytest.raises(TargetError, match="detections have no loss"):
        task.loss([{"boxes": torch.zeros(0, 4)}], targets)


def test_the_task_is_registered_and_rebuilt_from_its_record():
    task = get_task("detect", score_threshold=0.3, backend="pycocotools")
    again = task_from_record(task.record())
    assert isinstance(again, Detect) and again.score_threshold == 0.3 and again.backend == "pycocotools"
    assert Detect.for_run(score_threshold=0.7).score_threshold == 0.7 and Detect.for_run().score_threshold == 0.5
    with pytest.raises(ValueError, match="label_offset=2"):
        Detect(label_offset=2)


def test_lr_find_runs_on_the_detectors_own_loss(scenes):
    torch.manual_seed(0)
    train_dl, valid_dl, _ = _loaders(scenes)
    learner = Learner(tiny_faster_rcnn(), train_dl, valid_dl, task="detect", quiet=True)
    found = learner.lr_find(steps=6, start=1e-5, end=1e-1)
    assert len(found.losses) >= 4 and all(loss == loss for loss in found.losses)


@pytest.mark.slow
def test_fasterrcnn_mobilenet_v3_trains_from_a_coco_json_and_its_loss_falls(scenes):
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_320_fpn

    torch.manual_seed(0)
    train_dl, valid_dl, _ = _loaders(scenes)
    model = fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None, num_classes=len(CLASSES) + 1, min_size=128, max_size=160
    )
    learner = Learner(model, train_dl, valid_dl, task="detect", quiet=True)
    learner.fit(3, 1e-3)
    first, last = _first_and_last(learner.loss_history)
    assert last < 0.7 * first, learner.loss_history
    assert all({"map", "map_50", "map_75"} <= set(row) for row in learner.history)
    best = learner.best_epoch["index"]  # the epoch of highest mAP
    batches, why = learner.kept.outputs_of(best)
    assert batches is not None, why
    report = learner.task.report(batches, CLASSES)
    assert report.final["map"] == pytest.approx(learner.history[best]["map"], abs=1e-6)
    learner.close()


def test_a_learner_given_no_task_infers_detect_from_box_targets(scenes):
    train_dl, valid_dl, _ = _loaders(scenes)
    learner = Learner(tiny_faster_rcnn(), train_dl, valid_dl, quiet=True)
    assert isinstance(learner.task, Detect) and learner.metric_set.names == ["map", "map_50", "map_75"]


def test_the_command_line_reads_boxes_for_the_detect_task(scenes):
    from torchgraft.app.inputs import target_layout
    from torchgraft.app.prepare import input_recipe
    from torchgraft.app.settings import TrainSettings

    assert target_layout(TrainSettings(task="detect")) == "detect"  # tests/cli/test_cli_detect.py trains it
    assert input_recipe(scenes, TrainSettings(task="detect")).name == "boxes"


@pytest.mark.slow  # 10 s on an idle CPU: a ResNet-18 forward and backward per step
def test_a_detector_grafted_on_a_backbone_trains_with_its_label_offset(scenes):
    from torchvision.models import resnet18

    from torchgraft import graft_detector

    torch.manual_seed(0)
    train_dl, valid_dl, _ = _loaders(scenes)
    model = graft_detector(resnet18(weights=None), CLASSES, head="fasterrcnn", channels=32, min_size=96, max_size=128)
    learner = Learner(model, train_dl, valid_dl, task="detect", quiet=True)
    assert learner.task.offset(model) == 1 and model_classes(model) == len(CLASSES) + 1
    learner.fit(2, 1e-3)
    first, last = _first_and_last(learner.loss_history)
    assert last < first and all(0 <= row["map"] <= 1 for row in learner.history), learner.loss_history
    learner.close()
