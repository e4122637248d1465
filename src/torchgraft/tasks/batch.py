"""Batches of any shape: split into model inputs and targets, moved to a device, fed to a model.

A batch is a tuple/list ``(inputs, targets)`` (torchvision, TensorDataset), or a mapping — a dict or a
Hugging Face ``BatchEncoding`` — whose target sits under one key (``labels`` by default) and whose other
entries are the model's keyword arguments. Tensors nested anywhere in the inputs are moved together.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

__all__ = [
    "BatchError",
    "DeviceInput",
    "call_model",
    "count_samples",
    "move",
    "output_tensor",
    "split_batch",
    "tensor_device",
]


@runtime_checkable
class DeviceInput(Protocol):
    """An input that says how it reaches a device (a :class:`~torchgraft.data.preprocess.PixelBatch`: uint8
    crops normalised after the transfer); :func:`move` calls :meth:`to_device`."""

    def to_device(self, device: torch.device) -> Any:
        """The input on ``device``, as the model takes it."""


class BatchError(ValueError):
    """A batch that cannot be split into inputs and targets; the message names what was found and the fix."""


def split_batch(batch: Any, *, target_key: str = "labels") -> tuple[Any, Any]:
    """``(inputs, targets)`` of one batch.

    Tuples and lists give ``(batch[0], batch[1])``; a mapping gives ``(the other entries as a dict,
    batch[target_key])``.

    Raises:
        BatchError: a mapping without ``target_key``, a sequence of fewer than two items, or another type.

    Example:
        >>> split_batch({"input_ids": ids, "attention_mask": mask, "labels": y})
        ({'input_ids': ids, 'attention_mask': mask}, y)
    """
    if isinstance(batch, Mapping):
        if target_key not in batch:
            raise BatchError(
                f"batch: the batch is a mapping with keys {sorted(batch)} but no target key {target_key!r}; "
                f"pass target_key=<the key holding the targets> (Learner(..., target_key=...))."
            )
        return {k: v for k, v in batch.items() if k != target_key}, batch[target_key]
    if isinstance(batch, list | tuple):
        if len(batch) < 2:
            raise BatchError(f"batch: a {type(batch).__name__} of {len(batch)} item(s); need (inputs, targets).")
        return batch[0], batch[1]
    raise BatchError(
        f"batch: got a {type(batch).__name__}; a batch must be (inputs, targets) or a dict with a {target_key!r} entry."
    )


def move(obj: Any, device: torch.device, *, channels_last: bool = False) -> Any:
    """``obj`` with every tensor in it (nested in dicts, lists and tuples) on ``device``; 4-D float tensors
    in channels-last memory format when ``channels_last``; a :class:`DeviceInput` moved by its own ``to_device``."""
    if isinstance(obj, DeviceInput):
        obj = obj.to_device(device)
    if isinstance(obj, torch.Tensor):
        obj = obj.to(device, non_blocking=True)
        if channels_last and obj.ndim == 4 and obj.is_floating_point():
            obj = obj.contiguous(memory_format=torch.channels_last)
        return obj
    if isinstance(obj, Mapping):
        return {k: move(v, device, channels_last=channels_last) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(move(v, device, channels_last=channels_last) for v in obj) if not _namedtuple(obj) else obj
    return obj


def _namedtuple(obj: Any) -> bool:
    return isinstance(obj, tuple) and hasattr(obj, "_fields")


def call_model(model: nn.Module | Any, inputs: Any) -> Any:
    """``model(**inputs)`` for a mapping of inputs (a tokenizer's output), ``model(inputs)`` otherwise."""
    return model(**inputs) if isinstance(inputs, Mapping) else model(inputs)


def output_tensor(outputs: Any) -> torch.Tensor:
    """The tensor a loss reads from what a model returned: itself, ``logits`` of a Hugging Face
    ``ModelOutput`` or dict, else its first tensor; the first element of a tuple.

    Raises:
        BatchError: no tensor in ``outputs``.
    """
    if isinstance(outputs, torch.Tensor):
        return outputs
    if isinstance(outputs, Mapping):
        if outputs.get("logits") is not None:
            return output_tensor(outputs["logits"])
        for value in outputs.values():
            if isinstance(value, torch.Tensor):
                return value
    elif isinstance(outputs, list | tuple) and outputs:
        return output_tensor(outputs[0])
    raise BatchError(f"batch: the model returned {type(outputs).__name__} without a tensor to compute a loss on.")


def count_samples(targets: Any) -> int:
    """Number of samples in a batch, read from its targets."""
    if isinstance(targets, torch.Tensor):
        return int(targets.shape[0]) if targets.ndim else 1
    return len(targets)


def tensor_device(obj: Any) -> torch.device:
    """The device of the first tensor in ``obj`` (a tensor, or tensors nested in dicts, lists and tuples:
    detection outputs are a list of dicts); the CPU when it holds none."""
    found = _first_tensor(obj)
    return found.device if found is not None else torch.device("cpu")


def _first_tensor(obj: Any) -> torch.Tensor | None:
    if isinstance(obj, torch.Tensor):
        return obj
    values = obj.values() if isinstance(obj, Mapping) else obj if isinstance(obj, list | tuple) else ()
    return next((found for found in map(_first_tensor, values) if found is not None), None)
