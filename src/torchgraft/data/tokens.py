"""Texts as model inputs: a Hugging Face tokenizer (truncation to the model's maximum), tokenized datasets,
dynamic padding (each batch padded to its longest text) and length-grouped batches.

Texts are tokenized once, up front; a batch is padded only to its own longest member, and
:class:`LengthGroupedBatches` puts texts of similar length together (shuffled in large chunks, sorted by
length within a chunk, the batches shuffled again), so little compute is spent on padding.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler

from torchgraft.weights.hf import load_tokenizer

__all__ = ["LengthGroupedBatches", "PadCollate", "TextPreprocessing", "TokenDataset"]


@dataclass(frozen=True)
class TextPreprocessing:
    """How texts become token ids: the tokenizer (a folder or hub name) and the truncation length.

    ``max_length`` defaults to the model's maximum (the tokenizer's ``model_max_length``, capped by the
    model's position embeddings).
    """

    tokenizer: str
    max_length: int

    def __str__(self) -> str:
        return f"tokenizer {self.tokenizer}, truncation to {self.max_length} tokens, dynamic padding"

    def load(self, root: str | Path | None = None) -> Any:
        """The tokenizer (a relative folder is read from ``root``, an export folder)."""
        folder = Path(root) / self.tokenizer if root is not None else Path(self.tokenizer)
        return load_tokenizer(folder if folder.is_dir() else self.tokenizer)

    def encode(self, tokenizer: Any, texts: Sequence[str]) -> dict[str, list[list[int]]]:
        """Token ids (and masks) of ``texts``, truncated to ``max_length``, not padded."""
        encoded = tokenizer(list(texts), truncation=True, max_length=self.max_length)
        return {key: list(value) for key, value in encoded.items()}

    def as_dict(self) -> dict[str, Any]:
        """JSON fields (``kind: text`` tells it from image preprocessing)."""
        return {"kind": "text", "tokenizer": self.tokenizer, "max_length": self.max_length}

    @classmethod
    def from_dict(cls, fields: dict[str, Any]) -> TextPreprocessing:
        """The inverse of :meth:`as_dict`."""
        return cls(str(fields["tokenizer"]), int(fields["max_length"]))


class TokenDataset(Dataset):
    """Tokenized texts and their targets: item ``i`` is ``{"input_ids": [...], "attention_mask": [...], ...,
    "labels": target}`` (lists, padded by :class:`PadCollate`).

    Targets are class indices, multi-hot float vectors over ``n_labels`` (multi-label: from tuples of label
    indices) or float vectors (regression), as ``task`` says; ``None`` targets (prediction) are left out.
    """

    def __init__(
        self,
        encoded: dict[str, list[list[int]]],
        targets: Sequence[Any] | None = None,
        *,
        task: str = "classify",
        n_labels: int = 0,
    ) -> None:
        self.encoded, self.targets, self.task, self.n_labels = encoded, targets, task, n_labels
        self.lengths = [len(ids) for ids in encoded["input_ids"]]

    def __len__(self) -> int:
        return len(self.lengths)

    def _target(self, index: int) -> Any:
        value = self.targets[index]  # type: ignore[index]
        if self.task == "multilabel":
            hot = torch.zeros(self.n_labels)
            hot[list(value)] = 1.0
            return hot
        if self.task == "regression":
            return torch.tensor(value, dtype=torch.float32)
        return value

    def __getitem__(self, index: int) -> dict[str, Any]:
        item: dict[str, Any] = {key: values[index] for key, values in self.encoded.items()}
        if self.targets is not None:
            item["labels"] = self._target(index)
        return item


class PadCollate:
    """Collate token items into one batch padded to its longest text: ``input_ids`` with ``pad_id``, masks
    and type ids with 0; ``labels`` stacked (class indices as a long tensor)."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        longest = max(len(item["input_ids"]) for item in items)
        batch: dict[str, torch.Tensor] = {}
        for key in items[0]:
            if key == "labels":
                labels = [item[key] for item in items]
                batch[key] = torch.stack(labels) if isinstance(labels[0], torch.Tensor) else torch.tensor(labels)
                continue
            fill = self.pad_id if key == "input_ids" else 0
            batch[key] = torch.tensor([list(item[key]) + [fill] * (longest - len(item[key])) for item in items])
        return batch


class LengthGroupedBatches(Sampler[list[int]]):
    """Batches of indices of similar length.

    With ``shuffle``: a random permutation (drawn from ``generator``, so a resumed run repeats it) cut into
    chunks of ``group`` batches, each chunk sorted by length (longest first) and cut into batches, then the
    batches shuffled. Without: every index sorted by length, longest first (for evaluation and caching).

    Args:
        lengths: the length of each sample.
        batch_size: samples per batch (the last batch may be smaller).
        shuffle: draw a new grouping each epoch.
        generator: the random generator of the shuffles.
        group: batches per sorted chunk (larger: less padding, less randomness).
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        *,
        shuffle: bool = True,
        generator: torch.Generator | None = None,
        group: int = 50,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"LengthGroupedBatches: batch_size must be >= 1, got {batch_size}.")
        self.lengths, self.batch_size, self.shuffle, self.group = list(lengths), batch_size, shuffle, group
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)

    def _batches(self, indices: list[int]) -> list[list[int]]:
        ordered = sorted(indices, key=lambda i: -self.lengths[i])
        return [ordered[i : i + self.batch_size] for i in range(0, len(ordered), self.batch_size)]

    def in_order(self) -> list[list[int]]:
        """Every index in batches sorted by length, no randomness (what the feature cache reads)."""
        return self._batches(list(range(len(self.lengths))))

    def __iter__(self) -> Iterator[list[int]]:
        if not self.shuffle:
            yield from self.in_order()
            return
        order = torch.randperm(len(self.lengths), generator=self.generator).tolist()
        chunk = self.batch_size * self.group
        batches = [b for start in range(0, len(order), chunk) for b in self._batches(order[start : start + chunk])]
        for index in torch.randperm(len(batches), generator=self.generator).tolist():
            yield batches[index]
