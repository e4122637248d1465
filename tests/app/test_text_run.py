"""Text runs end to end with the real all-MiniLM-L6-v2 on real BBC News articles: train_run from class
folders and from a multi-label CSV, the export (weights, model.json, tokenizer and config in hf/), a
bit-equal rebuild from those files alone, and predict_texts."""

from __future__ import annotations

import csv
import random

import pytest
import torch

from conftest import bbc_news_root, minilm_folder
from torchgraft.app.run import train_run, validation_outputs
from torchgraft.app.settings import TrainSettings
from torchgraft.data.texts import text_data
from torchgraft.data.tokens import TextPreprocessing
from torchgraft.ship.export import load_exported
from torchgraft.ship.predict import predict_texts
from torchgraft.tasks import Multilabel
from torchgraft.train.callbacks import LambdaCallback

pytest.importorskip("transformers")
pytestmark = pytest.mark.slow


def _settings(**options) -> TrainSettings:
    return TrainSettings(model=f"hf/{minilm_folder()}", epochs=1, freeze_epochs=2, max_length=64, **options)


@pytest.fixture(scope="module")
def news_run(bbc_folder, tmp_path_factory):
    lines: list[str] = []
    result = train_run(bbc_folder, tmp_path_factory.mktemp("run"), _settings(), quiet=True, say=lines.append)
    return result, lines


def test_a_text_run_from_class_folders_learns_and_writes_everything(news_run, bbc_folder):
    result, lines = news_run
    assert any(line.startswith("data: text classify: 5 classes, 120 train / 30 valid texts") for line in lines)
    assert [r["phase"] for r in result.history] == [0, 0, 1]
    assert result.final["accuracy"] >= 0.8  # 5 topics; the frozen head alone reaches this on 64 tokens
    names = {p.relative_to(result.run_dir).as_posix() for p in result.files}
    assert {"model.json", "history.csv", "hf/config.json", "hf/tokenizer.json", "hf/tokenizer_config.json"} <= names
    assert isinstance(result.preprocessing, TextPreprocessing) and result.preprocessing.max_length == 64
    assert "Pool(mode='mean'" in (result.run_dir / "plan.txt").read_text()

    data = text_data(bbc_folder)  # the run's split (the same valid_pct and seed)
    truth = {text: data.classes[target] for text, target in data.valid}
    worst = list(csv.DictReader((result.run_dir / "pictures" / "worst_texts.csv").open()))
    losses = [float(row["loss"]) for row in worst]
    assert len(worst) == 8 and losses == sorted(losses, reverse=True)  # the highest-loss texts, worst first
    assert all(row["what"].startswith(f"true {truth[row['text']]}\n") for row in worst)  # each its own class


def test_the_export_rebuilds_bit_equal_from_its_files_and_predicts(news_run):
    result, _ = news_run
    learner = result.learner
    exported = load_exported(result.run_dir)
    outputs, _ = validation_outputs(learner.model, learner.valid_dl, device="cpu")
    rebuilt, _ = validation_outputs(exported.model, learner.valid_dl, device="cpu")
    assert torch.equal(outputs, rebuilt)
    assert exported.config["architecture"] == f"hf/{minilm_folder()}" and exported.classes == result.classes
    valid = sorted(bbc_news_root().joinpath("sports").glob("*.txt"))[-3:]  # articles not in the copied 30
    articles = [p.read_text(encoding="utf-8", errors="replace") for p in valid]
    predictions = predict_texts(exported, articles, top_k=2)
    assert [p.top[0][0] for p in predictions] == ["sports"] * 3
    assert all(len(p.top) == 2 and p.path.endswith("...") for p in predictions)
    direct = predict_texts(exported, articles[:1], sources=["a.txt"], top_k=1)[0]
    assert direct.path == "a.txt"  # alone, padded to its own length: the same logits up to float rounding
    assert torch.allclose(torch.tensor(direct.logits), torch.tensor(predictions[0].logits), atol=1e-5)


def _multilabel_table(path, n: int) -> None:
    """Rows of one or two real articles' opening lines, labelled with their classes (``a;b``)."""
    root = bbc_news_root()
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    articles = {c: sorted((root / c).glob("*.txt"))[:40] for c in classes}
    rng = random.Random(0)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "labels"])
        for i in range(n):
            chosen = rng.sample(classes, 1 + i % 2)
            parts = [" ".join(rng.choice(articles[c]).read_text(errors="replace").split()[:25]) for c in chosen]
            writer.writerow([" ".join(parts), ";".join(chosen)])


def test_multilabel_texts_from_a_csv_choose_and_export_a_threshold(tmp_path):
    _multilabel_table(tmp_path / "tags.csv", 150)
    lines: list[str] = []
    result = train_run(tmp_path / "tags.csv", tmp_path / "run", _settings(lr=2e-3), quiet=True, say=lines.append)
    assert "task: multilabel (some rows hold several labels; --task to choose)" in lines
    assert isinstance(result.learner.task, Multilabel) and 0 < result.final["threshold"] < 1
    assert result.final["f1_at_threshold"] >= 0.6
    exported = load_exported(tmp_path / "run")
    assert exported.task.threshold == result.final["threshold"]
    prediction = predict_texts(exported, ["The minister said the election would be held in May."])[0]
    probabilities = torch.tensor(prediction.logits).sigmoid()
    assert len(prediction.top) == int((probabilities >= exported.task.threshold).sum())


def test_a_lora_text_run_trains_adapters_only_and_exports_them_merged(bbc_folder, tmp_path, monkeypatch):
    pytest.importorskip("peft")
    from torchgraft.weights.hf import hf_text_model

    seen: list[set[str]] = []
    lines: list[str] = []
    settings = TrainSettings(model=f"hf/{minilm_folder()}", epochs=1, freeze_epochs=1, max_length=32, lora=8)
    original = {n: p.detach().clone() for n, p in hf_text_model(f"hf/{minilm_folder()}")[0].named_parameters()}

    from torchgraft.app import run as run_module

    make = run_module.prepare_run

    def watched(*args, **kwargs):
        prepared = make(*args, **kwargs)
        trainable = lambda lrn: seen.append({n for n, p in lrn.model.named_parameters() if p.requires_grad})  # noqa: E731
        prepared.learner.add_callback(LambdaCallback(on_step_begin=trainable))
        return prepared

    monkeypatch.setattr(run_module, "prepare_run", watched)  # a spy: the real run, its Learner watched
    result = train_run(bbc_folder, tmp_path / "run", settings, quiet=True, say=lines.append)
    assert any(line.startswith("LoRA: rank 8 on 37 layers") for line in lines)
    assert seen and all(".lora_" in n or ".head." in n for names in seen for n in names)
    model = result.learner.model
    prefix = "base_model.model.body.model."
    for name, param in model.named_parameters():  # the encoder's pretrained tensors, bit-identical
        plain = name.removeprefix(prefix).replace(".base_layer", "")
        if name.startswith(prefix) and ".lora_" not in name:
            assert torch.equal(param.cpu(), original[plain]), name
    exported = load_exported(result.run_dir)
    assert exported.config["adapters"]["mode"] == "merge"
    assert not any("lora" in n for n, _ in exported.model.named_parameters())  # folded in: runs without peft
    adapted, _ = validation_outputs(model, result.learner.valid_dl, device="cpu")
    folded, _ = validation_outputs(exported.model, result.learner.valid_dl, device="cpu")
    torch.testing.assert_close(folded, adapted, atol=1e-5, rtol=1e-5)
