"""Feature cache: run a fully frozen body once over the data, then train the head on stored features.

Valid only when nothing in the body can change its output: every body parameter frozen, every BatchNorm
in the ``"frozen"`` policy (evaluation mode, statistics fixed), no dropout or stochastic depth active in the
body, and a dataset that returns the same input for the same index (no random augmentation). Then the
head sees exactly the features it would see without the cache, batch for batch — the cached loader draws
its shuffle from the same random generator as the original one — and each epoch costs one pass through
the head instead of one through the whole network.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler, SequentialSampler, TensorDataset

from torchgraft.tune.freeze import frozen_batchnorm

__all__ = ["FeatureCacheError", "cache_problem", "cached_loader"]

_STOCHASTIC = ("Dropout", "DropPath", "StochasticDepth", "AlphaDropout")


class FeatureCacheError(ValueError):
    """The body or the data can change between epochs, so features cannot be cached; the message says why."""


def cache_problem(model: nn.Module) -> str | None:
    """Why ``model``'s body features cannot be cached now, or ``None`` if they can."""
    body = getattr(model, "body", None)
    if body is None or not isinstance(getattr(model, "head", None), nn.Module):
        return "the model has no body/head split (graft it with torchgraft.graft)"
    trainable = [n for n, p in body.named_parameters() if p.requires_grad]
    if trainable:
        return f"{len(trainable)} body parameters are trainable ({trainable[0]}, ...); freeze the body first"
    for name, module in body.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not frozen_batchnorm(module):
            return f"BatchNorm 'body.{name}' is not frozen (its statistics would move); freeze with bn='frozen'"
        probability = getattr(module, "p", getattr(module, "drop_prob", 0.0))
        if any(s in type(module).__name__ for s in _STOCHASTIC) and isinstance(probability, float) and probability > 0:
            return f"'body.{name}' ({type(module).__name__}, p={probability}) is random in training mode"
    return None


def _check_deterministic(dataset: Dataset) -> None:
    """Two reads of the same sample must agree (random augmentation would make cached features stale)."""
    for index in {0, len(dataset) - 1}:  # type: ignore[arg-type]
        first, second = dataset[index], dataset[index]
        a, b = first[0], second[0]
        if isinstance(a, torch.Tensor) and not torch.equal(a, b):
            raise FeatureCacheError(
                f"the training data is augmented randomly (sample {index} differs between two reads), so body "
                f"features cannot be cached; use cache_features=False or deterministic transforms."
            )


@torch.no_grad()
def _features(model: nn.Module, loader: DataLoader, device: torch.device, move: Any) -> TensorDataset:
    ordered = DataLoader(
        loader.dataset,
        batch_size=loader.batch_size or 1,
        sampler=SequentialSampler(loader.dataset),  # type: ignore[arg-type]
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        generator=torch.Generator(),  # its own: reading must not consume the global generator's draws
    )
    features, targets = [], []
    model.body.eval()
    for batch in ordered:
        inputs, labels = move(batch)
        features.append(model.body(inputs).float().cpu())
        targets.append(labels.cpu())
    if not features:
        raise FeatureCacheError("feature cache: the dataset is empty.")
    return TensorDataset(torch.cat(features), torch.cat(targets))


def cached_loader(model: nn.Module, loader: DataLoader, *, device: torch.device, move: Any, train: bool) -> DataLoader:
    """A loader of ``(body features, targets)`` standing for ``loader``: same batch size, same shuffling
    (a ``RandomSampler`` drawing from the same generator), same ``drop_last``.

    Raises:
        FeatureCacheError: the body can change (see :func:`cache_problem`), the loader is not a
            ``DataLoader`` over a map-style dataset, or the data is augmented randomly.
    """
    problem = cache_problem(model)
    if problem is not None:
        raise FeatureCacheError(f"feature cache: {problem}.")
    if not isinstance(loader, DataLoader) or not hasattr(loader.dataset, "__getitem__"):
        raise FeatureCacheError("feature cache: needs a torch DataLoader over a map-style dataset.")
    if train:
        _check_deterministic(loader.dataset)
    data = _features(model, loader, device, move)
    shuffled = isinstance(loader.sampler, RandomSampler)
    sampler = RandomSampler(data, generator=loader.sampler.generator) if shuffled else SequentialSampler(data)
    return DataLoader(data, batch_size=loader.batch_size, sampler=sampler, drop_last=loader.drop_last)
