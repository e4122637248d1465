"""The Python predict API takes what ``torchgraft predict`` takes; ``inspect`` resolves models as ``train`` does;
``lr-find`` is not silent when piped; other libraries' bars stay quiet unless ``--verbose``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from conftest import minilm_folder
from torchgraft.cli.main import main
from torchgraft.cli.progress import progress_seconds
from torchgraft.cli.quiet import libraries_quiet
from torchgraft.ship.export import load_exported
from torchgraft.ship.inputs import expand_images, expand_texts
from torchgraft.ship.predict import predict_images, predict_texts

CLI = [sys.executable, "-m", "torchgraft.cli.main"]
TINY = ["--model", "resnet18", "--weights", "none", "--size", "32", "--workers", "0"]


def test_predict_images_takes_a_path_a_folder_a_csv_and_a_list_like_the_cli(run_dir, folder, capsys):
    exported = load_exported(run_dir)
    valid = folder / "valid"
    one = predict_images(exported, str(valid / "red" / "0.png"))  # one string: one image, not its characters
    assert [p.path for p in one] == [str(valid / "red" / "0.png")]
    assert [p.path for p in predict_images(exported, valid / "red" / "0.png")] == [p.path for p in one]
    everything = predict_images(exported, str(valid))
    assert [p.path for p in everything] == [str(p) for p in sorted(valid.rglob("*.png"))]
    table = valid / "some.csv"
    table.write_text("path,label\nblue/1.png,blue\nred/0.png,red\n")
    from_csv = predict_images(exported, table)
    assert [p.path for p in from_csv] == [str(valid / "blue" / "1.png"), str(valid / "red" / "0.png")]
    mixed = predict_images(exported, [valid / "blue", str(valid / "red" / "1.png")])
    assert [p.path for p in mixed] == [
        str(valid / "blue" / "0.png"),
        str(valid / "blue" / "1.png"),
        str(valid / "red" / "1.png"),
    ]
    by_path = {p.path: p.top for p in everything}
    for p in [*one, *from_csv, *mixed]:  # the same image, the same answer (batches differ: float rounding)
        assert [c for c, _ in p.top] == [c for c, _ in by_path[p.path]]
        assert [q for _, q in p.top] == pytest.approx([q for _, q in by_path[p.path]], abs=1e-5)
    assert main(["predict", str(run_dir), str(table), "--json"]) == 0  # the CLI resolves the same inputs
    assert [entry["path"] for entry in __import__("json").loads(capsys.readouterr().out)] == [p.path for p in from_csv]


def test_input_resolution_keeps_a_string_whole(tmp_path):
    assert expand_texts("Shares rose after the results.") == (
        ["Shares rose after the results."],
        ["Shares rose after the results."],
    )
    article = "A long article. " * 500  # far beyond a file name's length: a text, not an OSError
    assert expand_texts([article, "read notes.txt later"])[1] == [article, "read notes.txt later"]
    (tmp_path / "a.txt").write_text("from a file")
    assert expand_texts(str(tmp_path)) == ([str(tmp_path / "a.txt")], ["from a file"])
    with pytest.raises(FileNotFoundError, match=r"missing\.txt: no such text file"):
        expand_texts("missing.txt")
    with pytest.raises(FileNotFoundError, match=r"nothing\.png: no such image file or folder"):
        expand_images("nothing.png")


def test_predict_texts_takes_one_string_as_one_text(tmp_path_factory):
    pytest.importorskip("transformers")
    run = tmp_path_factory.mktemp("texts") / "run"
    table = tmp_path_factory.mktemp("csv") / "texts.csv"
    rows = [f"shares in the firm rose {i} percent,business" for i in range(6)]
    rows += [f"the team won the cup final {i} nil,sport" for i in range(6)]
    table.write_text("text,label\n" + "\n".join(rows) + "\n")
    argv = ["train", str(table), "--model", f"hf/{minilm_folder()}", "--epochs", "1", "--freeze-epochs", "0"]
    assert main([*argv, "--max-length", "16", "--valid-pct", "0.34", "--out", str(run), "--quiet"]) == 0
    exported = load_exported(run)
    (one,) = predict_texts(exported, "Shares rose after the results.")
    assert one.path == "Shares rose after the results."
    from_csv = predict_texts(exported, table, top_k=1)
    assert [p.path for p in from_csv][:2] == [f"{table}:2", f"{table}:3"] and len(from_csv) == 12
    alone = predict_texts(exported, [rows[0].split(",")[0]], top_k=1)[0].top
    assert from_csv[0].top[0][0] == alone[0][0] and from_csv[0].top[0][1] == pytest.approx(alone[0][1], abs=1e-5)


def test_inspect_takes_an_hf_folder_a_run_dir_and_lists_real_close_names(run_dir, capsys):
    pytest.importorskip("transformers")
    assert main(["inspect", f"hf/{minilm_folder()}", "--n-out", "5"]) == 0
    out = capsys.readouterr().out
    assert "BertModel grafted -> 5 outputs" in out and "Pool(mode='mean'" in out
    assert main(["inspect", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{run_dir}: resnet18 trained for classify, 2 outputs (blue, red)")
    assert "ResNet grafted -> 2 outputs" in out
    assert main(["inspect", "timm/resnet5O"]) == 2
    assert "close names: resnet50" in capsys.readouterr().err
    assert main(["inspect", "timm/zzzqqq_net"]) == 2
    error = capsys.readouterr().err
    assert "no close name among timm's" in error and "close names: -" not in error


def test_lr_find_piped_to_a_file_prints_step_lines_before_its_result(folder, tmp_path):
    log = tmp_path / "lr-find.txt"
    with log.open("w") as output:
        subprocess.run(
            [*CLI, "lr-find", str(folder), *TINY, "--steps", "6", "--out", str(tmp_path / "lr")],
            stdout=output,
            stderr=subprocess.STDOUT,
            check=True,
        )
    lines = log.read_text().splitlines()
    steps = [i for i, line in enumerate(lines) if line.startswith("lr-find: step ")]
    result = next(i for i, line in enumerate(lines) if line.startswith("suggested learning rate"))
    assert steps and max(steps) < result and lines[steps[0]].startswith("lr-find: step 1/6  lr 1e-07  loss ")
    assert len(steps) >= 3  # one line per step at 6 steps (every total // 20, at least every step)


def _many_images(root: Path, count: int) -> Path:
    root.mkdir()
    for i in range(count):
        Image.new("RGB", (33 + i % 5, 32), (200 - 4 * i, 30, 30 + 4 * i)).save(root / f"{i:02d}.png")
    return root


def test_predict_piped_prints_progress_lines_on_stderr_before_its_result(run_dir, tmp_path, monkeypatch, capsys):
    """``TORCHGRAFT_PROGRESS_SECONDS=0``: a line after every batch (32 images), on stderr and before the
    predictions; ``--json`` and ``--quiet`` print none (``--json``'s stdout stays JSON); the default interval
    (20 s) prints none for work this short."""
    images = _many_images(tmp_path / "many", 40)
    argv = ["predict", str(run_dir), str(images), "--top-k", "1"]
    log = tmp_path / "predict.txt"
    with log.open("w") as output:  # a real pipe, stderr and stdout in one file: the order they came in
        env = {**os.environ, "TORCHGRAFT_PROGRESS_SECONDS": "0"}
        subprocess.run([*CLI, *argv], stdout=output, stderr=subprocess.STDOUT, env=env, check=True)
    lines = log.read_text().splitlines()
    assert lines[:2] == ["predict: 32/40 images", "predict: 40/40 images"], lines[:4]
    assert len(lines) == 42 and lines[2].startswith(str(images / "00.png"))
    monkeypatch.setenv("TORCHGRAFT_PROGRESS_SECONDS", "0")
    assert main(argv) == 0
    shown = capsys.readouterr()
    assert shown.err.splitlines() == lines[:2] and shown.out.splitlines() == lines[2:]
    assert main([*argv, "--json"]) == 0
    as_json = capsys.readouterr()
    assert "predict:" not in as_json.err and len(json.loads(as_json.out)) == 40
    assert main([*argv, "--quiet"]) == 0
    assert capsys.readouterr() == (shown.out, "")
    monkeypatch.delenv("TORCHGRAFT_PROGRESS_SECONDS")
    assert main(argv) == 0
    assert capsys.readouterr() == (shown.out, "")


def test_pack_piped_prints_progress_lines_on_stderr(folder, tmp_path):
    env = {**os.environ, "TORCHGRAFT_PROGRESS_SECONDS": "0"}
    done = subprocess.run(
        [*CLI, "pack", str(folder), str(tmp_path / "shards"), "--workers", "1"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    lines = [line for line in done.stderr.splitlines() if line.startswith("pack: ")]
    assert lines == [f"pack: {i:,}/16 images checked" for i in range(1, 17)], done.stderr[-2000:]
    assert "pack:" not in done.stdout and done.stdout.startswith("packed 12 train / 4 valid images")


def test_export_prints_a_progress_line_per_check_run(run_dir, folder, tmp_path, monkeypatch, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    monkeypatch.setenv("TORCHGRAFT_PROGRESS_SECONDS", "0")
    checks = [str(p) for p in sorted((folder / "valid").rglob("*.png"))]  # 4 images of 2 sizes: 4 check runs
    assert main(["export", str(run_dir), "--out", str(tmp_path / "model.onnx"), "--check", *checks]) == 0
    shown = capsys.readouterr()
    progress = [line for line in shown.err.splitlines() if line.startswith("export: ")]
    assert progress and progress[-1].endswith(" inputs checked") and "export:" not in shown.out, shown.err[-2000:]
    done = [int(line.split()[1].split("/")[0]) for line in progress]
    assert done == sorted(done) and progress[-1].split()[1].split("/")[0] == progress[-1].split()[1].split("/")[1]


def test_a_progress_interval_that_is_no_number_is_refused(monkeypatch):
    monkeypatch.setenv("TORCHGRAFT_PROGRESS_SECONDS", "soon")
    with pytest.raises(ValueError, match="TORCHGRAFT_PROGRESS_SECONDS='soon' is not a number of seconds"):
        progress_seconds()
    monkeypatch.setenv("TORCHGRAFT_PROGRESS_SECONDS", "2.5")
    assert progress_seconds() == 2.5


def test_transformers_loading_bar_is_quiet_unless_verbose(capfd):
    transformers = pytest.importorskip("transformers")
    with libraries_quiet():
        transformers.AutoModel.from_pretrained(str(minilm_folder()))
    quiet = capfd.readouterr()
    assert "Loading weights" not in quiet.err + quiet.out
    with libraries_quiet(False):
        transformers.utils.logging.enable_progress_bar()
        transformers.AutoModel.from_pretrained(str(minilm_folder()))
    assert "Loading weights" in capfd.readouterr().err  # the bar the quiet block removed


@pytest.mark.slow
def test_a_text_run_prints_no_loading_bar_without_verbose(tmp_path):
    pytest.importorskip("transformers")
    table = tmp_path / "texts.csv"
    table.write_text("text,label\n" + "\n".join(f"words {i} here,{'ab'[i % 2]}" for i in range(12)) + "\n")
    argv = [*CLI, "train", str(table), "--model", f"hf/{minilm_folder()}", "--epochs", "1", "--freeze-epochs", "0"]
    argv += ["--max-length", "8", "--valid-pct", "0.34", "--workers", "0"]
    quiet = subprocess.run([*argv, "--out", str(tmp_path / "q")], capture_output=True, text=True, check=True)
    assert "Loading weights" not in quiet.stdout + quiet.stderr
    loud = subprocess.run(
        [*argv, "--out", str(tmp_path / "v"), "--verbose"], capture_output=True, text=True, check=True
    )
    assert "Loading weights" in loud.stderr
