"""Feature cache: run a fully frozen body once over the data, then train the head on stored features.

Valid only when nothing in the body can change its output: every body parameter frozen, every BatchNorm
in the ``"frozen"`` policy (evaluation mode, statistics fixed), no dropout or stochastic depth active in the
body, and a dataset that returns the same input for the same index (no random augmentation). Then the
head sees the features it would see without the cache (exactly with ``cache_dtype=torch.float32``; within
fp16's rounding, 2^-11 of each value, by default), batch for batch — the cached loader draws its shuffle
from the same random generator as the original one — and each epoch costs one pass through the head
instead of one through the whole network.

The features live on disk (:mod:`~torchgraft.train.feature_store`), filled once per rank's share
(:mod:`~torchgraft.train.feature_fill`) and found again by their key — the frozen weights, the model, the
reading and the data's fingerprint (:mod:`~torchgraft.train.feature_key`) — by the next fit, run or
``lr_find``.

What is cached is what the head's first trainable layer reads: when the head starts with a
:class:`~torchgraft.grafting.heads.Pool`, the pooled vectors (token features are pooled with the attention
mask, so text batches padded to different lengths cache fine); otherwise the body's output.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler, SequentialSampler
from torch.utils.data.distributed import DistributedSampler

from torchgraft.data.sampling import Indices, SeededSampler
from torchgraft.train.distributed import EvalShard, is_main, rank, world_size
from torchgraft.train.feature_fill import CACHE_DTYPES, FeatureFillError, filled_store
from torchgraft.train.feature_key import cache_root, weights_digest, writable_root
from torchgraft.train.feature_store import FeatureStore, collate_rows
from torchgraft.tune.freeze import held_in_eval, is_stochastic

__all__ = [
    "FeatureCacheError",
    "cache_problem",
    "cached_head",
    "cached_loader",
    "cached_store",
    "check_cache_dtype",
    "feature_loaders",
]


class FeatureCacheError(FeatureFillError):
    """The body or the data can change between epochs (or the features cannot be stored), so features cannot
    be cached; the message says why."""


def cache_problem(model: nn.Module) -> str | None:
    """Why ``model``'s body features cannot be cached now, or ``None`` if they can."""
    body = getattr(model, "body", None)
    if body is None or not isinstance(getattr(model, "head", None), nn.Module):
        return "the model has no body/head split (graft it with torchgraft.graft)"
    if getattr(model, "cacheable", True) is False:
        return f"{type(model).__name__} trains a decoder on several body outputs that are not cached"
    trainable = [n for n, p in body.named_parameters() if p.requires_grad]
    if trainable:
        return f"{len(trainable)} body parameters are trainable ({trainable[0]}, ...); freeze the body first"
    for name, module in body.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not held_in_eval(module):
            return f"BatchNorm 'body.{name}' is not frozen (its statistics would move); freeze with bn='frozen'"
        probability = getattr(module, "p", getattr(module, "drop_prob", 0.0))
        random = is_stochastic(module) and isinstance(probability, float) and probability > 0
        if random and not held_in_eval(module):
            return f"'body.{name}' ({type(module).__name__}, p={probability}) is random in training mode"
    return None


def cached_head(model: nn.Module) -> nn.Module:
    """The part of ``model.head`` that trains on cached features (the head after its pooling)."""
    pooled = getattr(model, "pooled_head", None)
    return pooled() if callable(pooled) else model.head


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, Mapping):
        return isinstance(b, Mapping) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return isinstance(b, list | tuple) and len(a) == len(b) and all(map(_same, a, b))
    return bool(a == b)


def _check_deterministic(dataset: Dataset) -> None:
    """Two reads of the same sample must agree (random augmentation would make cached features stale)."""
    for index in {0, len(dataset) - 1}:  # type: ignore[arg-type]
        if not _same(dataset[index], dataset[index]):
            raise FeatureCacheError(
                f"the training data is augmented randomly (sample {index} differs between two reads), so body "
                f"features cannot be cached; use cache_features=False or deterministic transforms."
            )


def _shuffle_generator(loader: DataLoader) -> tuple[bool, torch.Generator | None]:
    """Whether ``loader`` shuffles, and the generator it draws from (its sampler's or its batch sampler's)."""
    if isinstance(loader.sampler, RandomSampler):
        return True, loader.sampler.generator
    batches = loader.batch_sampler
    if getattr(batches, "shuffle", False) and isinstance(getattr(batches, "generator", None), torch.Generator):
        return True, batches.generator  # type: ignore[union-attr]
    return False, None


def _cached_sampler(loader: DataLoader, data: Dataset, *, train: bool) -> Sampler[int]:
    """The sampler of the cached loader: the original one where it yields plain indices of the whole dataset
    (a ``DistributedSampler`` or validation shard, or a :class:`SeededSampler` without its seeds), so cached
    and uncached epochs see the same batches; else the same shuffle, sharded when distributed."""
    sampler = loader.sampler
    if isinstance(sampler, SeededSampler):
        return Indices(sampler)
    if isinstance(sampler, DistributedSampler | EvalShard):
        return sampler
    shuffled, generator = _shuffle_generator(loader)
    if world_size() > 1:
        return (
            DistributedSampler(data, shuffle=shuffled)
            if train
            else EvalShard(len(data), rank=rank(), world=world_size())
        )
    return RandomSampler(data, generator=generator) if shuffled else SequentialSampler(data)


def check_cache_dtype(dtype: torch.dtype | None) -> None:
    """Raise ``ValueError`` unless ``dtype`` is one the feature cache stores in."""
    if dtype not in CACHE_DTYPES:
        raise ValueError(
            f"feature cache: cache_dtype={dtype} is not one it stores; choose None (fp16, bf16 where fp16 "
            "overflows), torch.float16, torch.bfloat16 or torch.float32 (exact)."
        )


def cached_store(
    model: nn.Module,
    loader: DataLoader,
    *,
    prepare: Callable[[Any], tuple[Any, Any]],
    train: bool,
    cache_dir: str | Path | None = None,
    cache_dtype: torch.dtype | None = None,
    weights: Callable[[], str] | None = None,
) -> tuple[FeatureStore, bool]:
    """The feature store standing for ``loader``'s dataset and whether it was found on disk (the body did not
    run) — see :func:`cached_loader`; ``weights()`` gives the weights' digest when the caller has it."""
    problem = cache_problem(model)
    if problem is not None:
        raise FeatureCacheError(f"feature cache: {problem}.")
    if not isinstance(loader, DataLoader) or not hasattr(loader.dataset, "__getitem__"):
        raise FeatureCacheError("feature cache: needs a torch DataLoader over a map-style dataset.")
    check_cache_dtype(cache_dtype)
    dataset = loader.dataset
    if train:
        plain = getattr(dataset, "unaugmented", None)  # a dataset may offer its unaugmented version
        dataset = plain() if callable(plain) else dataset
        _check_deterministic(dataset)
    root = writable_root(cache_root(cache_dir))
    return filled_store(model, loader, prepare, dataset, root=root, dtype=cache_dtype, weights=weights)


def cached_loader(
    model: nn.Module,
    loader: DataLoader,
    *,
    prepare: Callable[[Any], tuple[Any, Any]],
    train: bool,
    cache_dir: str | Path | None = None,
    cache_dtype: torch.dtype | None = None,
) -> DataLoader:
    """A loader of ``(features, targets)`` standing for ``loader``: same batch size, same shuffling (a
    ``RandomSampler`` drawing from the same generator), same ``drop_last``. A training dataset that augments
    randomly but has an ``unaugmented()`` method (:class:`~torchgraft.data.masks.MaskDataset`) is cached
    through that deterministic version. ``prepare(batch)`` splits a
    batch into inputs and targets on the device (the task's split). A length-grouping batch sampler
    (:class:`~torchgraft.data.tokens.LengthGroupedBatches`) is read in its own order and stood for by plain
    shuffled batches of its size: pooled features have no length left to group by.

    The features live on disk (:mod:`torchgraft.train.feature_store`), in fp16 by default (bf16 where fp16
    overflows; ``cache_dtype=torch.float32`` for exact features), under ``cache_dir``
    (:func:`~torchgraft.train.feature_key.cache_root`); a dataset with a ``fingerprint()`` finds the store of
    an earlier run with the same weights and reading there, and the body does not run
    (:func:`~torchgraft.train.feature_fill.filled_store`).

    Raises:
        FeatureCacheError: the body can change (see :func:`cache_problem`), the loader is not a
            ``DataLoader`` over a map-style dataset, or the data is augmented randomly.
    """
    options = {"prepare": prepare, "train": train, "cache_dir": cache_dir, "cache_dtype": cache_dtype}
    data, _ = cached_store(model, loader, **options)
    return _loader_over(loader, data, train=train)


def _loader_over(loader: DataLoader, data: FeatureStore, *, train: bool) -> DataLoader:
    sampler = _cached_sampler(loader, data, train=train)
    size = loader.batch_size or getattr(loader.batch_sampler, "batch_size", 1)
    return DataLoader(data, batch_size=size, sampler=sampler, drop_last=loader.drop_last, collate_fn=collate_rows)


def feature_loaders(
    model: nn.Module,
    train: DataLoader,
    valid: DataLoader | None,
    prepare: Callable[[Any], tuple[Any, Any]],
    *,
    quiet: bool = False,
    cache_dir: str | Path | None = None,
    cache_dtype: torch.dtype | None = None,
) -> tuple[DataLoader, DataLoader | None, nn.Module] | None:
    """``(cached train loader, cached valid loader, the head part that trains on them)`` while ``model``'s
    body cannot change, else ``None`` (the unfrozen phase of a recipe trains normally). ``valid=None``: no
    validation loader (``lr_find``)."""
    if cache_problem(model) is not None:
        return None
    digest = functools.cache(lambda: weights_digest(model))  # hashed once for both stores, if either is kept
    options = {"prepare": prepare, "cache_dir": cache_dir, "cache_dtype": cache_dtype, "weights": digest}
    stores = [cached_store(model, train, train=True, **options)]
    loaders: list[DataLoader | None] = [_loader_over(train, stores[0][0], train=True)]
    if valid is not None:
        stores.append(cached_store(model, valid, train=False, **options))
    loaders.append(_loader_over(valid, stores[1][0], train=False) if valid is not None else None)
    if not quiet and is_main():
        found, store = all(was_found for _, was_found in stores), stores[0][0]
        where = f"in {store.folder}" if store.key != "run" else "for this run"
        how = f"read from the store {where} (the body did not run)" if found else f"computed once, stored {where}"
        print(f"feature cache: body features of {len(store)} samples {how}", file=sys.stderr)
    return loaders[0], loaders[1], cached_head(model)  # type: ignore[return-value]
