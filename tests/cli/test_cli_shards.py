"""``torchgraft pack`` and ``torchgraft train`` on WebDataset shards and Hugging Face datasets, end to end: every
label kind packed and trained with the classes and targets the source gives, a Parquet folder, a save_to_disk
folder and a stream, a brace pattern with ``--valid``, export and predict of a model trained on shards, and
texts from Parquet with the offline MiniLM."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shard_files import CLASSES, class_folders, hf_images, tables, user_shards
from torchgraft.cli.main import main
from torchgraft.data.folders import image_data
from torchgraft.data.preprocess import preprocessing_for

pytest.importorskip("webdataset")
datasets = pytest.importorskip("datasets")

TRAIN = ["--epochs", "1", "--freeze-epochs", "0", "--model", "resnet18", "--weights", "none", "--size", "32"]
TRAIN += ["--batch-size", "5", "--workers", "0", "--json"]


@pytest.fixture(autouse=True)
def _hf_cache(tmp_path, monkeypatch) -> None:
    """load_dataset's Arrow cache in the test's folder, not the home directory."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


def _train(data: str | Path, out: Path, capsys, *extra: str) -> dict:
    capsys.readouterr()
    assert main(["train", str(data), *TRAIN, "--out", str(out), *extra]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    return class_folders(tmp_path_factory.mktemp("photos"), corrupt=True)


def test_pack_lists_what_it_left_out_and_train_on_the_shards_exports_and_predicts(photos, tmp_path, capsys):
    shards = tmp_path / "shards"
    assert main(["pack", str(photos), str(shards), "--shard-size", "4"]) == 0
    printed = capsys.readouterr().out
    assert "packed 18 train / 6 valid images (classify, 3 classes) into" in printed
    assert "left out" in printed and "cut.jpg" in printed
    summary = _train(shards, tmp_path / "run", capsys)
    assert summary["classes"] == image_data(photos, skip_bad=True).classes == sorted(CLASSES)
    assert summary["task"] == "classify" and len(summary["history"]) == 1
    config = json.loads((tmp_path / "run" / "model.json").read_text())
    assert config["preprocessing"] == preprocessing_for("resnet18", size=32).as_dict()  # recorded as for folders
    assert main(["predict", str(tmp_path / "run"), str(photos / "dog" / "1.png"), "--json"]) == 0
    predicted = json.loads(capsys.readouterr().out)
    assert predicted[0]["top"][0]["class"] in CLASSES
    pytest.importorskip("onnxruntime")
    assert main(["export", str(tmp_path / "run"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["max_difference"] < 1e-4


@pytest.mark.parametrize("kind", ["multilabel", "regression"])
def test_pack_and_train_tables_of_every_label_kind(tmp_path, capsys, kind):
    multi, values = tables(tmp_path / "tables")
    source = multi if kind == "multilabel" else values
    assert main(["pack", str(source), str(tmp_path / "shards"), "--shard-size", "7"]) == 0
    summary = _train(tmp_path / "shards", tmp_path / "run", capsys)
    read = image_data(source)
    assert (summary["task"], summary["classes"]) == (kind, read.classes)
    assert summary["classes"] == (["sea", "sky", "sun"] if kind == "multilabel" else ["width", "height"])


def test_train_on_hf_parquet_save_to_disk_and_streamed(tmp_path, capsys):
    parquet, disk = hf_images(tmp_path / "hf")
    by_files = _train(parquet, tmp_path / "parquet", capsys)
    saved = _train(disk, tmp_path / "disk", capsys, "--valid-pct", "0.25")
    streamed = _train(parquet, tmp_path / "streamed", capsys, "--streaming")
    assert by_files["classes"] == saved["classes"] == streamed["classes"] == sorted(CLASSES)
    assert all(len(run["history"]) == 1 for run in (by_files, saved, streamed))
    plan = (tmp_path / "streamed" / "plan.txt").read_text()
    assert "preprocessing:" in plan


def test_train_on_a_brace_pattern_with_a_valid_pattern(tmp_path, capsys):
    root = user_shards(tmp_path / "user")
    pattern = str(root / "train-{000000..000002}.tar")
    summary = _train(pattern, tmp_path / "run", capsys, "--valid", str(root / "valid-000000.tar"))
    assert summary["classes"] == sorted(CLASSES)
    assert main(["train", str(root / "train-{000000..000009}.tar"), *TRAIN, "--out", str(tmp_path / "x")]) == 2
    assert "no shard" in capsys.readouterr().err


def test_pack_a_csv_of_texts(tmp_path, capsys):
    rows = "\n".join(f"story number {i} about {('sport', 'tech')[i % 2]},{('sport', 'tech')[i % 2]}" for i in range(20))
    (tmp_path / "news.csv").write_text(f"text,label\n{rows}\n")
    assert main(["pack", str(tmp_path / "news.csv"), str(tmp_path / "shards"), "--quiet"]) == 0
    assert capsys.readouterr().out.startswith("packed 16 train / 4 valid texts (classify, 2 classes) into 2 shards")
    assert json.loads((tmp_path / "shards" / "torchgraft-shards.json").read_text())["kind"] == "text"


def test_images_that_fail_to_decode_in_shards_are_replaced_reported_and_counted(tmp_path, capsys):
    root = user_shards(tmp_path / "user", corrupt=(2, 9))  # shards another tool wrote: pack checked nothing
    capsys.readouterr()
    assert main(["train", str(root), *TRAIN, "--epochs", "2", "--out", str(tmp_path / "run")]) == 0
    summary = json.loads(capsys.readouterr().out)
    found = sorted(entry["path"].rsplit(":", 1)[1] for entry in summary["final"]["unreadable_files"])
    assert found == ["s00002", "s00009"]
    assert main(["train", str(root), *TRAIN, "--max-bad", "1", "--out", str(tmp_path / "strict")]) == 2
    assert "2 image files failed to decode during training, more than --max-bad 1" in capsys.readouterr().err


@pytest.mark.slow
def test_texts_from_parquet_train_with_minilm(tmp_path, capsys):
    from conftest import minilm_folder

    words = {"sport": "the team won the match with a late goal", "tech": "the new chip runs the model faster"}
    rows = {"text": [], "label": []}
    for i in range(24):
        label = "sport" if i % 2 else "tech"
        rows["text"].append(f"{words[label]} ({i})")
        rows["label"].append(label)
    (tmp_path / "texts").mkdir()
    datasets.Dataset.from_dict(rows).to_parquet(str(tmp_path / "texts" / "train.parquet"))
    args = ["--epochs", "1", "--freeze-epochs", "1", "--model", f"hf/{minilm_folder()}", "--batch-size", "8"]
    for extra in ([], ["--streaming"]):
        capsys.readouterr()
        out = tmp_path / f"run{len(extra)}"
        data = tmp_path / "texts"
        if extra:  # a stream needs its validation split
            datasets.Dataset.from_dict({k: v[:6] for k, v in rows.items()}).to_parquet(str(data / "valid.parquet"))
        assert main(["train", str(data), *args, "--json", "--out", str(out), *extra]) == 0
        summary = json.loads(capsys.readouterr().out)
        assert summary["classes"] == ["sport", "tech"] and len(summary["history"]) == 2
        assert (out / "hf" / "tokenizer.json").is_file()


@pytest.mark.slow
def test_torchrun_on_shards_writes_the_run_of_one_process(photos, tmp_path):
    import subprocess
    import sys

    safetensors = pytest.importorskip("safetensors.torch")
    assert main(["pack", str(photos), str(tmp_path / "shards"), "--shard-size", "5"]) == 0
    common = [*TRAIN[:-5], "--workers", "1", "--batchnorm", "eval", "--quiet", "--lr", "1e-4"]  # as for folders

    def run(command: list[str], out: Path, batch: int) -> None:
        args = [*command, "-m", "torchgraft", "train", str(tmp_path / "shards"), *common, "--out", str(out)]
        done = subprocess.run([*args, "--batch-size", str(batch)], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]

    run([sys.executable], tmp_path / "one", 6)
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"], tmp_path / "two", 3)
    one, two = (safetensors.load_file(tmp_path / run / "model.safetensors") for run in ("one", "two"))
    assert max((one[k].double() - two[k].double()).abs().max().item() for k in one) < 1e-5
    a, b = (json.loads((tmp_path / run / "history.json").read_text()) for run in ("one", "two"))
    assert [r["accuracy"] for r in a] == [r["accuracy"] for r in b]
