"""``torchgraft train`` / ``predict`` on texts: real BBC News articles with the offline all-MiniLM-L6-v2,
predictions from texts, .txt files and a CSV in a fresh process, and one-line errors for bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import bbc_news_root, minilm_folder
from torchgraft.cli.main import main
from torchgraft.ship.export import load_exported
from torchgraft.ship.predict import predict_texts

pytest.importorskip("transformers")

CLI = [sys.executable, "-m", "torchgraft.cli.main"]
OFFLINE = {**os.environ, "HF_HUB_OFFLINE": "1"}  # never reach for the hub in tests


@pytest.fixture(scope="module")
def text_run(bbc_folder, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("text") / "run"
    command = [*CLI, "train", str(bbc_folder), "--model", f"hf/{minilm_folder()}", "--out", str(run_dir)]
    options = ["--epochs", "1", "--freeze-epochs", "1", "--max-length", "48", "--json"]
    result = subprocess.run([*command, *options], capture_output=True, text=True, env=OFFLINE, check=True)
    return run_dir, json.loads(result.stdout)


@pytest.mark.slow
def test_train_on_class_folders_of_txt_files(text_run):
    run_dir, summary = text_run
    assert summary["task"] == "classify" and len(summary["classes"]) == 5
    assert summary["final"]["accuracy"] >= 0.6 and len(summary["history"]) == 2
    assert (run_dir / "hf" / "tokenizer.json").is_file() and (run_dir / "model.safetensors").is_file()


@pytest.mark.slow
def test_predict_texts_files_and_a_csv_in_a_fresh_process(text_run, tmp_path):
    run_dir, _ = text_run
    articles = sorted(bbc_news_root().joinpath("tech").glob("*.txt"))[-2:]
    table = tmp_path / "inputs.csv"
    table.write_text('text\n"Broadband prices fell as new chips arrived"\n', encoding="utf-8")
    inputs = ["The striker scored twice in the cup final.", *map(str, articles), str(table)]
    result = subprocess.run(
        [*CLI, "predict", str(run_dir), *inputs, "--json", "--top-k", "2"],
        capture_output=True,
        text=True,
        env=OFFLINE,
        check=True,
    )
    predictions = json.loads(result.stdout)
    assert [p["path"] for p in predictions] == [inputs[0], *inputs[1:3], f"{table}:2"]
    texts = [inputs[0], *(p.read_text(encoding="utf-8", errors="replace") for p in articles)]
    texts.append("Broadband prices fell as new chips arrived")
    expected = predict_texts(load_exported(run_dir), texts, top_k=2)
    logits = torch.tensor([p["logits"] for p in predictions])
    assert torch.allclose(logits, torch.tensor([p.logits for p in expected]), atol=1e-5)
    assert all(len(p["top"]) == 2 for p in predictions)


def test_bad_text_inputs_exit_2_with_one_line(bbc_folder, tmp_path, capsys):
    model = ["--model", f"hf/{minilm_folder()}"]
    assert main(["train", str(bbc_folder), *model, "--weights", str(tmp_path / "w.pth")]) == 2
    assert "loads its own weights; give --weights pretrained (default) or none" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["train", str(tmp_path / "empty"), *model, "--task", "text"]) == 2
    assert "no class folders" in capsys.readouterr().err
    assert main(["train", str(bbc_folder), "--model", "resnet18"]) == 2
    assert "holds texts but --model resnet18 is an image model" in capsys.readouterr().err


def test_an_unknown_hf_model_is_named_without_a_download(bbc_folder):
    result = subprocess.run(
        [*CLI, "train", str(bbc_folder), "--model", "hf/no-such-org/no-such-model"],
        capture_output=True,
        text=True,
        env=OFFLINE,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert (
        len(lines) == 1
        and "hf/no-such-org/no-such-model: not a local folder, not in the Hugging Face cache" in lines[0]
    )


@pytest.mark.slow
def test_export_onnx_of_a_text_run_runs_with_the_tokenizers_library_alone(text_run, capsys):
    ort = pytest.importorskip("onnxruntime")
    tokenizers = pytest.importorskip("tokenizers")
    run_dir, _ = text_run
    assert main(["export", str(run_dir), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["checked"] == "4 texts" and report["max_difference"] <= 1e-4  # the recorded validation texts
    prep = json.loads((run_dir / "preprocessing.json").read_text())
    assert prep["inputs"][:2] == ["input_ids", "attention_mask"] and prep["text"]["max_length"] == 48
    tokenizer = tokenizers.Tokenizer.from_file(str(run_dir / prep["text"]["tokenizer"] / "tokenizer.json"))
    tokenizer.enable_truncation(prep["text"]["max_length"])
    tokenizer.enable_padding()
    texts = ["Shares fell sharply after the bank cut its profit forecast.", "The striker scored twice in the final."]
    encoded = tokenizer.encode_batch(texts)
    feeds = {
        "input_ids": [e.ids for e in encoded],
        "attention_mask": [e.attention_mask for e in encoded],
        "token_type_ids": [e.type_ids for e in encoded],
    }
    session = ort.InferenceSession(str(run_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    import numpy as np

    got = session.run(None, {name: np.asarray(feeds[name], dtype=np.int64) for name in prep["inputs"]})[0]
    expected = predict_texts(load_exported(run_dir), texts, top_k=5)
    for row, prediction in zip(got, expected, strict=True):
        top = dict(prediction.top)
        np.testing.assert_allclose([row[prep["classes"].index(name)] for name in top], list(top.values()), atol=1e-4)
