"""Filling a feature store: the frozen body run once over the data, batch by batch, each rank its share.

The data is read in a fixed order (:func:`reading_order`) and, under ``torchrun``, batch ``b`` is encoded by
rank ``b % world``, which writes its rows into the one store at their dataset positions; the batches are
those one process would encode, so the store is the same at any number of processes. The store's folder
must be one that every rank sees (one machine, or a shared file system); rank 0 creates and commits it.

Features are stored in fp16 (2 bytes a value, 11 significant bits: rounding error <= 2^-11 relative): a
frozen body's features are activations of modest size, and fp16 keeps 8 times bf16's precision. A finite
feature beyond fp16's range (65504) is detected and the store rebuilt in bf16 (fp32's range, 8 bits).
``dtype=torch.float32`` stores exact features.
"""

from __future__ import annotations

import shutil
import socket
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from torchgraft.tasks.batch import call_model
from torchgraft.train.distributed import barrier, broadcast_object, is_main, on_main, rank, world_size
from torchgraft.train.feature_key import store_key
from torchgraft.train.feature_store import FeatureStore, StoreWriter, commit_store, new_store_folder, open_store

__all__ = ["CACHE_DTYPES", "FeatureFillError", "filled_store", "reading_order"]

CACHE_DTYPES = (None, torch.float16, torch.bfloat16, torch.float32)  # None: fp16, bf16 where fp16 overflows


class FeatureFillError(ValueError):
    """The body's features cannot be stored (not a tensor, shapes that change, no data, a folder the ranks
    do not share); the message says why and what to do."""


def _gathered(value: Any) -> list[Any]:
    """``value`` of every rank, in rank order (small picklable data)."""
    if world_size() == 1:
        return [value]
    values: list[Any] = [None] * world_size()
    dist.all_gather_object(values, value)
    return values


def reading_order(loader: DataLoader) -> list[Sequence[int]]:
    """Index batches that read every sample once without randomness: the batch sampler's own ``in_order()``
    when it has one (length-grouped text batches), else consecutive batches of the loader's batch size
    (``range`` objects: a few bytes a batch, whatever the number of rows)."""
    in_order = getattr(loader.batch_sampler, "in_order", None)
    if callable(in_order):
        return [list(batch) for batch in in_order()]
    size, count = loader.batch_size or 1, len(loader.dataset)  # type: ignore[arg-type]
    return [range(start, min(start + size, count)) for start in range(0, count, size)]


class _Listed(Sampler[list[int]]):
    """``batches`` handed to a ``DataLoader`` as lists, one at a time."""

    def __init__(self, batches: list[Sequence[int]]) -> None:
        self.batches = batches

    def __iter__(self) -> Iterator[list[int]]:
        return (list(batch) for batch in self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def _encode(model: nn.Module, inputs: Any) -> torch.Tensor:
    features = getattr(model, "features", None)
    encoded = call_model(features, inputs) if callable(features) else call_model(model.body, inputs)
    if not isinstance(encoded, torch.Tensor):
        raise FeatureFillError(f"feature cache: the body returns {type(encoded).__name__}, not a tensor.")
    return encoded


SHAPES = (
    "feature cache: the body's features change shape from batch to batch (padded sequences?) and the "
    "head does not pool them first; graft with a pooling head (pool='token' or 'mean') or pass "
    "cache_features=False."
)


@torch.no_grad()
def _fill(
    model: nn.Module,
    loader: DataLoader,
    prepare: Callable[[Any], tuple[Any, Any]],
    dataset: Dataset,
    folder: Path,
    dtype: torch.dtype,
) -> dict[str, Any]:
    """This rank's batches of the reading order, encoded and written into ``folder``; what it wrote."""
    mine = reading_order(loader)[rank() :: world_size()]
    ordered = DataLoader(
        dataset,
        batch_sampler=_Listed(mine),
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        generator=torch.Generator(),  # its own: reading must not consume the global generator's draws
    )
    writer = StoreWriter(folder, dtype=dtype)
    model.body.eval()
    try:
        for indices, batch in zip(mine, ordered, strict=True):
            inputs, labels = prepare(batch)
            encoded = _encode(model, inputs)
            if writer.parts is not None and tuple(encoded.shape[1:]) != writer.parts[0].shape:
                raise FeatureFillError(SHAPES)
            writer.write(list(indices), encoded, labels)
    finally:
        writer.close()
    parts = [p.to_json() for p in writer.parts] if writer.parts is not None else None
    return {"parts": parts, "overflowed": writer.overflowed}


def _shared(folder: Path | None, what: str) -> None:
    """Raise unless every rank sees ``folder`` (the store is written by all of them into one place)."""
    seen = _gathered(folder is not None and folder.exists())
    if not all(seen):
        blind = [r for r, ok in enumerate(seen) if not ok]
        raise FeatureFillError(
            f"feature cache: ranks {blind} cannot see the {what} rank 0 writes at {folder} ({socket.gethostname()}); "
            "pass cache_dir= a folder every rank shares, or cache_features=False."
        )


def _build(
    model: nn.Module,
    loader: DataLoader,
    prepare: Callable[[Any], tuple[Any, Any]],
    dataset: Dataset,
    root: Path,
    key: str | None,
    dtype: torch.dtype | None,
) -> FeatureStore:
    """Fill a new store (fp16, refilled in bf16 when fp16 overflows, for ``dtype=None``) and commit it."""
    stored = dtype or torch.float16
    while True:
        made = on_main(lambda: str(new_store_folder(root, key or "run")))
        folder = Path(broadcast_object(made))
        _shared(folder, "temporary feature store")
        written = _gathered(_fill(model, loader, prepare, dataset, folder, stored))
        layouts = {str(w["parts"]) for w in written if w["parts"] is not None}
        if not layouts:
            raise FeatureFillError("feature cache: the dataset is empty.")
        if len(layouts) > 1:
            raise FeatureFillError(SHAPES)
        if dtype is None and stored is torch.float16 and any(w["overflowed"] for w in written):
            barrier()
            if is_main():
                shutil.rmtree(folder, ignore_errors=True)
            stored = torch.bfloat16  # fp16 overflowed: the same rows again, in bf16 (fp32's range)
            continue
        break
    parts = next(w["parts"] for w in written if w["parts"] is not None)
    header = {"key": key or "run", "rows": len(dataset), "features": parts[0], "targets": parts[1]}  # type: ignore[arg-type]
    barrier()  # every rank's rows written and flushed
    final = root / key if key is not None else None
    done = on_main(lambda: str(commit_store(folder, final, header)))
    return _opened(Path(broadcast_object(done)), header["key"], remove=key is None)  # type: ignore[arg-type]


def _opened(folder: Path, key: str, *, remove: bool) -> FeatureStore:
    store = open_store(folder, key=key, remove=remove and is_main())  # rank 0 removes a one-run store
    _shared(folder if store is not None else None, "feature store")
    assert store is not None  # every rank opened it (else _shared raised)
    return store


def filled_store(
    model: nn.Module,
    loader: DataLoader,
    prepare: Callable[[Any], tuple[Any, Any]],
    dataset: Dataset,
    *,
    root: Path,
    dtype: torch.dtype | None,
    weights: Callable[[], str] | None = None,
) -> tuple[FeatureStore, bool]:
    """The store of ``model``'s features over ``dataset`` (read like ``loader``, split by ``prepare``) and
    whether it was found (``True``: the body did not run) rather than filled. A dataset with a fingerprint
    finds its store under ``root`` by key (:func:`~torchgraft.train.feature_key.store_key`) and leaves it for
    the next run; one without gets a store deleted when it is closed. ``weights()``: the weights' digest when
    the caller has it. Every rank must call it."""
    size = loader.batch_size or getattr(loader.batch_sampler, "batch_size", 1)
    options = {"batch_size": size, "collate": loader.collate_fn, "prepare": prepare, "dtype": dtype, "weights": weights}
    key = on_main(store_key, model, dataset, **options)
    if key is not None:
        found = _gathered(open_store(root / key, key=key) is not None)
        if all(found):
            return _opened(root / key, key, remove=False), True
    return _build(model, loader, prepare, dataset, root, key, dtype), False
