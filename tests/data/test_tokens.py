"""Texts as model inputs with the real all-MiniLM-L6-v2 tokenizer: truncation, dynamic padding, targets per
task, and length-grouped batches that cover every text once and repeat from a generator state."""

from __future__ import annotations

import pytest
import torch

from conftest import minilm_folder
from torchgraft.data.tokens import LengthGroupedBatches, PadCollate, TextPreprocessing, TokenDataset

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tokenizer():
    return transformers.AutoTokenizer.from_pretrained(minilm_folder())


def test_truncation_and_padding_to_the_longest_text_of_the_batch(tokenizer):
    prep = TextPreprocessing(str(minilm_folder()), 12)
    texts = ["short", "a somewhat longer sentence about markets", " ".join(["word"] * 50)]
    encoded = prep.encode(tokenizer, texts)
    lengths = [len(ids) for ids in encoded["input_ids"]]
    assert lengths[0] == 3 and lengths[2] == 12  # [CLS] short [SEP]; cut to 12
    dataset = TokenDataset(encoded, [0, 2, 1])
    batch = PadCollate(tokenizer.pad_token_id)([dataset[0], dataset[1]])
    assert batch["input_ids"].shape == (2, lengths[1])  # padded to the longer of the two, not to 12
    assert batch["attention_mask"][0].tolist() == [1, 1, 1] + [0] * (lengths[1] - 3)
    assert (batch["input_ids"][0, 3:] == tokenizer.pad_token_id).all()
    assert batch["labels"].tolist() == [0, 2] and batch["labels"].dtype == torch.long
    # the same ids as the tokenizer's own padding
    reference = tokenizer(texts[:2], truncation=True, max_length=12, padding=True, return_tensors="pt")
    assert torch.equal(batch["input_ids"], reference["input_ids"])
    assert torch.equal(batch["attention_mask"], reference["attention_mask"])


def test_multilabel_and_regression_targets():
    encoded = {"input_ids": [[1, 2], [1]], "attention_mask": [[1, 1], [1]]}
    hot = TokenDataset(encoded, [(0, 2), (1,)], task="multilabel", n_labels=3)
    assert hot[0]["labels"].tolist() == [1.0, 0.0, 1.0] and hot[1]["labels"].tolist() == [0.0, 1.0, 0.0]
    values = TokenDataset(encoded, [(0.5,), (2.0,)], task="regression")
    batch = PadCollate(0)([values[0], values[1]])
    assert batch["labels"].tolist() == [[0.5], [2.0]] and batch["input_ids"].tolist() == [[1, 2], [1, 0]]
    assert "labels" not in TokenDataset(encoded)[0]  # prediction: no targets


def test_length_grouped_batches_cover_each_index_once_and_group_similar_lengths():
    lengths = torch.randint(1, 500, (1000,), generator=torch.Generator().manual_seed(1)).tolist()
    sampler = LengthGroupedBatches(lengths, 16, group=10, generator=torch.Generator().manual_seed(0))
    batches = list(sampler)
    assert len(batches) == len(sampler) == 63
    assert sorted(i for b in batches for i in b) == list(range(1000))
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    random_order = torch.randperm(1000, generator=torch.Generator().manual_seed(2)).tolist()
    random_padded = sum(16 * max(lengths[i] for i in random_order[s : s + 16]) for s in range(0, 1000, 16))
    assert padded < 0.7 * random_padded  # far less padding than random batches
    assert batches != list(sampler)  # a new grouping each epoch


def test_length_grouped_batches_repeat_from_a_saved_generator_state():
    lengths = list(range(100))
    generator = torch.Generator().manual_seed(0)
    sampler = LengthGroupedBatches(lengths, 8, generator=generator)
    list(sampler)
    state = generator.get_state()
    second = list(sampler)
    generator.set_state(state)
    assert list(sampler) == second
    in_order = LengthGroupedBatches(lengths, 8, shuffle=False).in_order()
    assert in_order[0] == list(range(99, 91, -1)) and list(LengthGroupedBatches(lengths, 8, shuffle=False)) == in_order
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        LengthGroupedBatches(lengths, 0)
