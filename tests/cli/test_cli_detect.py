"""``torchgraft train --task detect`` end to end on a real detection set on disk (crops of scikit-image photos
pasted on its textures, exact boxes, COCO JSON): the offline ImageNet Lite0 with a grafted FCOS, and a
torchvision detector re-headed from a weights file; the RUN_DIR, the exported model rebuilt bit for bit, and
``torchgraft predict`` printing, writing and drawing boxes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
import torchvision

from torchgraft.cli.main import main
from torchgraft.data.decode import decode_rgb
from torchgraft.ship.detect_deploy import DetectionDeployable, compare_detections
from torchgraft.ship.export import load_exported
from torchgraft.train.frozen_state import full_model_state

sys.path.insert(0, str(Path(__file__).parents[1] / "scripts"))
from detect_scenes import CLASSES, write_scenes

_FAST = ["--workers", "0", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``annotations/instances_{train,val}.json`` + ``images/``: 16 training and 8 validation scenes."""
    return write_scenes(tmp_path_factory.mktemp("boxes"), train=16, valid=8)


def _json_of(argv: list[str], capsys: pytest.CaptureFixture[str]) -> object:
    capsys.readouterr()
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _detections(model: torch.nn.Module, image: Path) -> list[dict[str, torch.Tensor]]:
    with torch.no_grad():
        return model.eval()([decode_rgb(image).float() / 255])


def _bit_equal(run_dir: Path, image: Path) -> None:
    """The exported files rebuild the detector of the exported epoch (``best.pt``) exactly."""
    exported = load_exported(run_dir)
    trained = load_exported(run_dir).model
    path = run_dir / "checkpoints" / "best.pt"
    trained.load_state_dict(full_model_state(torch.load(path, weights_only=True), trained, path=path))
    for mine, theirs in zip(_detections(exported.model, image), _detections(trained, image), strict=True):
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


@pytest.mark.slow
def test_a_detector_grafted_on_lite0_trains_exports_and_predicts_boxes(scenes, tmp_path, capsys) -> None:
    run_dir = tmp_path / "run"
    argv = ["train", str(scenes), "--out", str(run_dir), "--size", "96", "--epochs", "2", "--batch-size", "4", *_FAST]
    summary = _json_of(argv, capsys)  # no --task: COCO annotations are recognised
    assert summary["task"] == "detect" and summary["classes"] == CLASSES
    assert {"map", "map_50", "map_75"} <= set(summary["final"]) and len(summary["history"]) == 3
    config = json.loads((run_dir / "model.json").read_text())
    assert config["architecture"] == "timm/efficientnet_lite0" and config["task"]["name"] == "detect"
    assert config["graft"]["method"] == "detector" and config["graft"]["options"]["head"] == "fcos"
    plan = (run_dir / "plan.txt").read_text()
    assert all(f"  {group} " in plan for group in ("body0", "neck", "box_heads", "head"))
    assert "FrozenBatchNorm2d" in plan  # the BatchNorm policy is said in the plan
    assert {"per_class_ap.png", "worst_boxes.png"} <= {p.name for p in (run_dir / "pictures").iterdir()}
    assert [row.split(",")[0] for row in (run_dir / "per_class.csv").read_text().splitlines()[1:]] == CLASSES
    _bit_equal(run_dir, scenes.parent / "images" / "val_001.png")

    out, folder = tmp_path / "drawn", scenes.parent / "images"
    everything = _json_of(["predict", str(run_dir), str(folder), "--score-threshold", "0", "--out", str(out)], capsys)
    shown = _json_of(["predict", str(run_dir), str(folder), "--score-threshold", "0.3", "--out", str(out)], capsys)
    assert len(everything) == 24 and all(p["size"] == [96, 128] for p in everything)
    assert sum(len(p["boxes"]) for p in everything) > 0  # the detector ranks boxes after two epochs
    for every, some in zip(everything, shown, strict=True):
        assert all(b["label"] in CLASSES and 0 <= b["box"][0] <= b["box"][2] <= 128 for b in every["boxes"])
        scores = [b["score"] for b in every["boxes"]]
        assert scores == sorted(scores, reverse=True)
        clear = [b for b in every["boxes"] if b["score"] > 0.3001]  # JSON scores are rounded to 1e-4
        assert clear == some["boxes"][: len(clear)] and all(b in every["boxes"] for b in some["boxes"])
    drawn = Path(everything[0]["drawn"])
    assert drawn == out / "train_000.boxes.png" and decode_rgb(drawn).shape == (3, 96, 128)


@pytest.mark.slow
def test_a_torchvision_detector_from_a_weights_file_is_reheaded(scenes, tmp_path, capsys) -> None:
    name = "fasterrcnn_mobilenet_v3_large_320_fpn"
    coco = torchvision.models.get_model(name, weights=None, weights_backbone=None)  # COCO's 91 outputs
    torch.save(coco.state_dict(), tmp_path / "coco.pt")
    run_dir = tmp_path / "run"
    argv = ["train", str(scenes), "--task", "detect", "--model", name, "--weights", str(tmp_path / "coco.pt")]
    summary = _json_of([*argv, "--out", str(run_dir), "--epochs", "1", "--freeze-epochs", "0", *_FAST], capsys)
    assert summary["task"] == "detect" and {"map", "map_50"} <= set(summary["final"])
    config = json.loads((run_dir / "model.json").read_text())
    assert config["architecture"] == name and config["graft"]["method"] == "redetect"
    assert config["graft"]["options"]["classes"] == CLASSES  # background: the model's row 0, not a class
    assert "tensors" in config["weights"]  # read from the file
    exported = load_exported(run_dir)
    assert exported.model.roi_heads.box_predictor.cls_score.out_features == len(CLASSES) + 1
    _bit_equal(run_dir, scenes.parent / "images" / "val_000.png")
    found = _json_of(["predict", str(run_dir), str(scenes.parent / "images"), "--score-threshold", "0"], capsys)
    assert len(found) == 24 and all(b["label"] in CLASSES for p in found for b in p["boxes"])

    # the ONNX file (post-processing inside) computes the detections of the exported model, any batch size
    assert main(["export", str(run_dir), "--quiet"]) == 0
    meta = json.loads((run_dir / "preprocessing.json").read_text())
    assert meta["task"] == "detect" and meta["classes"] == CLASSES and meta["score_threshold_applied"]
    session = onnxruntime.InferenceSession(str(run_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    module = DetectionDeployable(exported.model, label_offset=1, score_threshold=meta["score_threshold"]).eval()
    images = [decode_rgb(scenes.parent / "images" / f"val_{i:03d}.png").permute(1, 2, 0) for i in range(4)]
    for batch in (torch.stack(images[:1]), torch.stack(images)):
        with torch.no_grad():
            expected = [x.numpy() for x in module(batch)]
        got = session.run(None, {"image": batch.numpy()})
        assert [g.shape for g in got] == [e.shape for e in expected] and got[2].dtype == np.int64
        compare_detections(got, expected, tolerance=1e-4, threshold=meta["score_threshold"], side=128.0)


def test_detection_options_that_do_not_apply_are_refused(scenes, capsys) -> None:
    for extra, needle in (
        (["--model", "fasterrcnn_mobilenet_v3_large_320_fpn", "--size", "128"], "keeps the image sizes"),
        (["--model", "fasterrcnn_mobilenet_v3_large_320_fpn", "--detector", "retinanet"], "is re-headed"),
        (["--head", "mlp"], "--head"),
    ):
        assert main(["train", str(scenes), "--task", "detect", *extra, "--out", "unused"]) == 2
        assert needle in capsys.readouterr().err
