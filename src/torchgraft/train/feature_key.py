"""Where a feature store lives and the key it is found by: the frozen weights, the model's structure, how
batches are read and prepared, and the data's fingerprint.

The weights are hashed whole (``hashlib.blake2b`` over every byte of every tensor that is not a trainable
parameter: the frozen body, its buffers, a frozen part of the head), never sampled — two checkpoints that
differ in one value get two stores. The data is named by ``dataset.fingerprint()`` (for
:class:`~torchgraft.data.folders.ImageDataset`: each file's path, size, mtime and target, and the transform);
a dataset without one gets no key, and its store lives for one run.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchgraft.data.manifest import cache_root as torchgraft_cache

__all__ = ["cache_root", "data_fingerprint", "store_key", "weights_digest", "writable_root"]

FORMAT = "torchgraft-features-1"


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """The folder of the feature stores: ``cache_dir`` when given, else ``features/`` in torchgraft's cache
    (:func:`torchgraft.data.manifest.cache_root`: ``$TORCHGRAFT_CACHE``, else ``~/.cache/torchgraft``)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    return torchgraft_cache() / "features"


def writable_root(root: Path) -> Path:
    """``root``, created, when this process can write there; else ``<temp dir>/torchgraft-features`` (a
    read-only home), said once on stderr."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        if os.access(root, os.W_OK):
            return root
    except OSError:
        pass
    fallback = Path(tempfile.gettempdir()) / "torchgraft-features"
    if root not in _WARNED:
        _WARNED.add(root)
        print(f"feature cache: cannot write to {root}; storing features in {fallback}", file=sys.stderr)
    fallback.mkdir(parents=True, exist_ok=True)
    return fallback


_WARNED: set[Path] = set()


def weights_digest(model: nn.Module) -> str:
    """blake2b (128 bits) of the name, dtype, shape and every byte of each tensor of ``model.state_dict()``
    that is not a trainable parameter. Costs one read of the weights (measured: ResNet-50's 98 MB in about
    0.1 s on one core); a trained head (trainable) does not change it, a changed frozen value does."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in model.state_dict(keep_vars=True).items():
        if not isinstance(tensor, torch.Tensor) or (isinstance(tensor, nn.Parameter) and tensor.requires_grad):
            continue
        data = tensor.detach()
        digest.update(f"{name}|{data.dtype}|{tuple(data.shape)}|".encode())
        if data.is_sparse:
            data = data.to_dense()
        digest.update(memoryview(data.cpu().contiguous().reshape(-1).view(torch.uint8).numpy()))
    return digest.hexdigest()


def data_fingerprint(dataset: Any) -> str | None:
    """``dataset.fingerprint()`` when the dataset has one (a string naming its samples and transforms),
    else ``None``."""
    fingerprint = getattr(dataset, "fingerprint", None)
    value = fingerprint() if callable(fingerprint) else None
    return str(value) if value is not None else None


def _prepared_by(prepare: Callable[..., Any]) -> str:
    """What decides how a batch becomes the body's inputs: the loop's task (its kind and target key), device
    and memory format when ``prepare`` is a :class:`~torchgraft.train.loop.Loop`'s, else its name."""
    loop = getattr(prepare, "__self__", None)
    task = getattr(loop, "task", None)
    if task is None:
        return getattr(prepare, "__qualname__", type(prepare).__qualname__)
    device = getattr(loop, "device", None)
    kind = f"{type(task).__module__}.{type(task).__qualname__}|{getattr(task, 'target_key', '')}"
    return f"{kind}|{getattr(device, 'type', device)}|{getattr(loop, 'channels_last', False)}"


def store_key(
    model: nn.Module,
    dataset: Any,
    *,
    batch_size: int,
    collate: Callable[..., Any] | None,
    prepare: Callable[..., Any],
    dtype: torch.dtype | None,
    weights: Callable[[], str] | None = None,
) -> str | None:
    """The key of the store of ``model``'s features over ``dataset`` read in batches of ``batch_size``
    (``collate``, ``prepare``) and stored as ``dtype`` (``None``: fp16, or bf16 where fp16 overflows), or
    ``None`` when the dataset has no fingerprint. A hex digest: a folder name. ``weights()`` gives
    :func:`weights_digest` of ``model`` when the caller already has it (the training and the validation
    store of one fit hash the weights once)."""
    fingerprint = data_fingerprint(dataset)
    if fingerprint is None:
        return None
    parts = [
        FORMAT,
        torch.__version__,
        weights() if weights is not None else weights_digest(model),
        repr(model),
        fingerprint,
        str(len(dataset)),
        str(batch_size),
        getattr(collate, "__qualname__", repr(collate)),
        _prepared_by(prepare),
        str(dtype),
    ]
    return hashlib.blake2b("\n".join(parts).encode(), digest_size=16).hexdigest()
