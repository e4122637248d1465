"""The measured recipes: one table, chosen by the kind of model and task, filling what fine_tune is not given;
with them a new user's MiniLM on 300 BBC News articles learns (it stayed at chance with the image rates)."""

from __future__ import annotations

import random

import pytest
import torch
import torchvision
from torch.utils.data import DataLoader

from conftest import bbc_news_root, minilm_folder
from torchgraft import Learner, graft, graft_dense
from torchgraft.tasks import Classification, Segmentation
from torchgraft.train.recipes import RECIPES, Recipe, model_kind, recipe_for


def _tiny_bert():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=2000, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    return transformers.BertModel(config)


def test_the_kind_of_model_and_task_picks_the_recipe():
    image = graft(torchvision.models.resnet18(weights=None), 3, input_size=(3, 64, 64))
    text = graft(_tiny_bert(), 3, pool="mean")
    dense = graft_dense(torchvision.models.resnet18(weights=None), 3, input_size=(3, 64, 64))
    assert model_kind(image, Classification()) == "image" and model_kind(text, Classification()) == "text"
    assert recipe_for(dense, Segmentation()) == Recipe(lr=4e-3, lr_mult=1.0, frozen_lr=4e-3, keep_frozen=-1)
    assert recipe_for(text, Classification()) == RECIPES["text"] == Recipe(1e-3, 10.0, 3e-2, 0)
    assert RECIPES["image"] == Recipe(3e-3, 1.0, None, 0)
    assert RECIPES["text"].filled(lr=2e-3, lr_mult=None).as_dict() == {
        "lr": 2e-3,
        "lr_mult": 10.0,
        "frozen_lr": 3e-2,
        "keep_frozen": 0,
    }


def test_fine_tune_fills_only_what_it_is_not_given():
    text = graft(_tiny_bert(), 3, pool="mean")
    ids = torch.randint(1000, 2000, (8, 12))
    batches = [{"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.arange(8) % 3}]
    learner = Learner(text, batches, quiet=True)
    stages = learner.stages(1, freeze_epochs=1)
    assert stages[0].lr == 3e-2 and stages[1].lr == slice(1e-4, 1e-3)  # the text recipe
    stages = learner.stages(1, 5e-4, freeze_epochs=1, frozen_lr=1e-2)
    assert stages[0].lr == 1e-2 and stages[1].lr == slice(5e-5, 5e-4)  # lr_mult 10 still the recipe's


def _news(per_class: int, tokenizer, max_length: int) -> tuple[list[dict], list[dict]]:
    root = bbc_news_root()
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    train, valid = [], []
    for index, name in enumerate(classes):
        files = sorted((root / name).glob("*.txt"))
        random.Random(0).shuffle(files)
        texts = [f.read_text(encoding="utf-8", errors="replace") for f in files[:per_class]]
        cut = per_class * 4 // 5
        train += [(t, index) for t in texts[:cut]]
        valid += [(t, index) for t in texts[cut:]]

    def encode(rows: list[tuple[str, int]]) -> list[dict]:
        encoded = tokenizer([t for t, _ in rows], truncation=True, max_length=max_length, padding="max_length")
        return [
            {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask), "labels": torch.tensor(y)}
            for ids, mask, (_, y) in zip(encoded["input_ids"], encoded["attention_mask"], rows, strict=True)
        ]

    return encode(train), encode(valid)


@pytest.mark.slow
def test_minilm_with_the_default_recipe_learns_bbc_news():
    transformers = pytest.importorskip("transformers")
    folder = minilm_folder()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(folder, num_labels=5)
    train, valid = _news(60, tokenizer, 64)  # 300 articles: 240 train, 60 valid; 64 tokens each
    generator = torch.Generator().manual_seed(0)
    learner = Learner(
        graft(model, 5),
        DataLoader(train, batch_size=16, shuffle=True, generator=generator),
        DataLoader(valid, batch_size=32),
        quiet=True,
    )
    history = learner.fine_tune(1, freeze_epochs=1)
    assert learner.recipe() == RECIPES["text"]
    assert history[-1]["accuracy"] >= 0.85  # the image rates (3e-3, uniform) left it at 0.245
