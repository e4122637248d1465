"""``torchgraft inspect MODEL --task detect``: the detector ``train --task detect`` builds, with random weights (a
detector grafted on a CNN, channels-last or token backbone; a torchvision detector re-headed), ``--detector``
refused outside ``--task detect``, and the exported model of a detection RUN_DIR."""

from __future__ import annotations

import json

import pytest
from torch import nn

import torchgraft
from torchgraft.app.boxes import detector_preprocessing
from torchgraft.cli.main import main
from torchgraft.tasks import TASKS
from torchgraft.weights.zoo import build_model


def _groups(record: dict) -> dict[str, int]:
    return {g["name"]: g["parameters"] for g in record["groups"]}


def test_a_cnn_backbone_gets_fcos_on_its_taps(capsys):
    assert main(["inspect", "resnet18", "--task", "detect", "--n-out", "3", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    detection = record["detection"]
    assert [(t["name"], t["stride"], t["channels"], t["layout"]) for t in record["taps"]] == [
        ("layer2", 8, 128, "nchw"), ("layer3", 16, 256, "nchw"), ("layer4", 32, 512, "nchw")
    ]  # fmt: skip
    assert record["method"] == "detector" and detection["detector"] == "FCOS" and detection["label_offset"] == 0
    neck = detection["neck"]
    assert neck["in_channels"] == [128, 256, 512] and neck["out_channels"] == 256
    assert neck["extra_levels"] == "LastLevelP6P7"
    assert detection["batch_norm"] == {"policy": "frozen", "frozen": 20, "training": 0}  # resnet18's 20 BatchNorm2d
    assert detection["images"]["min_size"] == 224 and detection["images"]["fixed_size"] is None
    (cls_logits,) = detection["class_layers"]
    assert cls_logits["name"] == "head.classification_head.cls_logits" and cls_logits["out"] == 3
    groups = _groups(record)
    assert list(groups) == ["body0", "body1", "neck", "box_heads", "head"]
    assert groups["neck"] == neck["parameters"] and groups["head"] == cls_logits["parameters"] == 256 * 9 * 3 + 3
    resnet = build_model("resnet18")
    convs = sum(p.numel() for n, p in resnet.named_parameters() if not n.startswith("fc."))
    norms = sum(p.numel() for m in resnet.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters())
    assert groups["body0"] + groups["body1"] == convs - norms  # the backbone but its classifier; frozen BN: buffers
    assert record["new_parameters"] == sum(v for k, v in groups.items() if not k.startswith("body"))


def test_text_shows_taps_neck_batch_norm_and_sizes(capsys):
    args = ["inspect", "timm/efficientnet_lite0", "--task", "detect", "--detector", "fasterrcnn", "--n-out", "2"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "FasterRCNN (fasterrcnn), grafted on the backbone, for 2 object classes" in text
    assert "    blocks.1       4        24  nchw" in text and "    bn2           32      1280  nchw" in text
    assert "neck         FeaturePyramidNetwork: in (24, 40, 112, 1280) -> 256 channels" in text
    assert "49 frozen (FrozenBatchNorm2d), 0 updating" in text  # timm's BatchNormAct2d frozen too
    assert "shorter side resized to 224, longer side at most 374" in text
    assert "label c + 1" in text and "cls_score: Linear, 3 outputs" in text
    for group in ("body0", "neck", "rpn", "box_heads", "head"):
        assert f"\n  {group} " in text


def test_a_token_backbone_is_resized_to_its_own_size(capsys):
    args = ["inspect", "vit_b_16", "--task", "detect", "--detector", "retinanet", "--n-out", "4", "--json"]
    assert main(args) == 0
    detection = json.loads(capsys.readouterr().out)["detection"]
    assert [(t["name"], t["stride"], t["channels"], t["layout"]) for t in detection["taps"]] == [
        ("encoder", 16, 768, "nlc")
    ]
    assert detection["images"]["fixed_size"] == [224, 224] and detection["batch_norm"]["frozen"] == 0
    assert detection["class_layers"][0]["out"] == 9 * 4  # RetinaNet: 9 anchors per place, no background


def test_a_torchvision_detector_is_re_headed(capsys):
    args = ["inspect", "fasterrcnn_mobilenet_v3_large_320_fpn", "--task", "detect", "--n-out", "4"]
    assert main([*args, "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    detection = record["detection"]
    assert record["method"] == "redetect" and detection["label_offset"] == 1 and detection["taps"] == []
    layers = {layer["name"]: layer for layer in detection["class_layers"]}
    assert layers["roi_heads.box_predictor.cls_score"]["out"] == 4 + 1  # the background at index 0
    assert layers["roi_heads.box_predictor.bbox_pred"]["out"] == (4 + 1) * 4
    assert detection["images"] | {"mean": None, "std": None} == {
        "min_size": 320, "max_size": 640, "fixed_size": None, "mean": None, "std": None
    }  # fmt: skip
    groups = _groups(record)
    assert list(groups) == ["body0", "body1", "body2", "neck", "rpn", "box_heads", "head"]
    assert groups["head"] == sum(layer["parameters"] for layer in layers.values()) == record["new_parameters"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "background   index 0 is the background: class c of your data is label c + 1" in text
    assert "roi_heads.box_predictor.cls_score: Linear, 5 outputs" in text
    assert "FeaturePyramidNetwork: in (160, 960) -> 256 channels" in text


def test_detector_option_is_refused_outside_detect(capsys):
    assert main(["inspect", "resnet18", "--detector", "retinanet"]) == 2
    error = capsys.readouterr().err.strip()
    assert "--detector retinanet applies to --task detect" in error and "add --task detect" in error
    assert main(["inspect", "retinanet_resnet50_fpn", "--task", "detect", "--detector", "fcos"]) == 2
    assert "is a detector already" in capsys.readouterr().err
    assert main(["inspect", "retinanet_resnet50_fpn"]) == 2  # a detector needs --task detect
    assert "add --task detect to see it re-headed" in capsys.readouterr().err
    assert main(["inspect", "resnet18", "--task", "detect", "--pool", "avg"]) == 2
    assert capsys.readouterr().err.strip().endswith("--pool do not apply.")


def test_a_detection_run_dir(tmp_path, capsys):
    detector = torchgraft.graft_detector(build_model("timm/efficientnet_lite0", device="cpu"), ["a", "b"])
    run = tmp_path / "run"
    torchgraft.export_model(
        run,
        detector,
        architecture="timm/efficientnet_lite0",
        classes=["a", "b"],
        preprocessing=detector_preprocessing(detector),
        task=TASKS["detect"](),
    )
    assert main(["inspect", str(run)]) == 0
    text = capsys.readouterr().out
    assert "trained for detect, 2 classes (a, b)" in text
    assert "FCOS (fcos), grafted on the backbone, for 2 object classes" in text
    assert "    bn2           32      1280  nchw" in text and "\n  neck " in text
    assert main(["inspect", str(run), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["task"] == "detect" and record["detection"]["class_layers"][0]["out"] == 2
    assert [t["stride"] for t in record["detection"]["taps"]] == [8, 16, 32]


@pytest.mark.parametrize("name", ["ssdlite320_mobilenet_v3_large", "maskrcnn_resnet50_fpn"])
def test_other_torchvision_detectors(name, capsys):
    assert main(["inspect", name, "--task", "detect", "--n-out", "3", "--json"]) == 0
    detection = json.loads(capsys.readouterr().out)["detection"]
    assert detection["label_offset"] == 1 and detection["outputs"] == 4
    assert all(layer["out"] % 4 == 0 for layer in detection["class_layers"])
