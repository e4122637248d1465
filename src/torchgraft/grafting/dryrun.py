"""Dry runs: run a model once on the meta device and record which modules ran, in what order, with what shapes.

Everything that needs to know how a network is wired at run time (where the classifier is, what the body
returns, which convolution sees the input first) reads a :class:`Trace` instead of guessing from attribute
names. The run uses ``torch.func.functional_call`` with meta tensors standing in for every parameter and
buffer, so no memory is allocated and the model's own tensors (including BatchNorm running statistics) are
never touched, even in training mode. Models whose forward cannot run on the meta device (data-dependent
shapes, ``.item()``) fall back to a real run on a batch of two with cloned buffers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = [
    "Example",
    "ModuleCall",
    "Trace",
    "default_example",
    "example_input",
    "infer_input_size",
    "main_tensor",
    "shapes_of",
    "spatial_extent",
    "trace",
]


Example = torch.Tensor | Mapping[str, torch.Tensor]


@dataclass
class ModuleCall:
    """One call of one module during a dry run.

    ``start``/``finish`` are positions in a single counter shared by all calls: a container starts before
    and finishes after its children, so "the last module to finish before X started" is well defined.
    """

    name: str
    module: nn.Module
    start: int
    finish: int = -1
    output: Any = None
    main_shape: torch.Size | None = None

    @property
    def has_own_params(self) -> bool:
        """Whether the module holds parameters directly (not only through children)."""
        return next(self.module.parameters(recurse=False), None) is not None


@dataclass
class Trace:
    """What a dry run saw: every module call in start order, and the shapes the model returned."""

    calls: list[ModuleCall]
    output: Any
    main_shape: torch.Size | None
    device: str
    input_shape: tuple[int, ...]
    by_name: dict[str, list[ModuleCall]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for call in self.calls:
            self.by_name.setdefault(call.name, []).append(call)

    def names(self) -> set[str]:
        """Names of every module that ran at least once."""
        return set(self.by_name)


def shapes_of(obj: Any) -> Any:
    """The structure of ``obj`` with every tensor replaced by its shape (tuples, lists, dicts kept)."""
    if isinstance(obj, torch.Tensor):
        return obj.shape
    if isinstance(obj, Mapping):
        return {key: shapes_of(value) for key, value in obj.items()}
    if isinstance(obj, tuple | list):  # namedtuples (GoogLeNetOutputs) become plain tuples
        values = [shapes_of(value) for value in obj]
        return values if isinstance(obj, list) else tuple(values)
    return None


def main_tensor(obj: Any) -> Any:
    """The tensor a model "returns" when it returns a structure.

    A tensor is itself; a mapping (a Hugging Face ``ModelOutput``) gives ``logits`` if present, else its
    first tensor value; a tuple or list (``GoogLeNetOutputs``, ``InceptionOutputs``, a backbone returning
    several maps) gives its first element. Returns ``None`` when there is no tensor.
    """
    if isinstance(obj, torch.Tensor | torch.Size):
        return obj
    if isinstance(obj, Mapping):
        if obj.get("logits") is not None:
            return main_tensor(obj["logits"])
        for value in obj.values():
            found = main_tensor(value)
            if found is not None:
                return found
        return None
    if isinstance(obj, Sequence) and not isinstance(obj, str) and len(obj) > 0:
        return main_tensor(obj[0])
    return None


def infer_input_size(model: nn.Module) -> tuple[int, int, int]:
    """The (channels, height, width) a model expects, read from its own metadata.

    Looks at timm's ``pretrained_cfg['input_size']``, Hugging Face ``config.num_channels``/``image_size``,
    and ``image_size``/``img_size`` attributes (torchvision ViT); channels default to the first
    convolution's ``in_channels`` and the spatial size to 224.
    """
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, Mapping) and cfg.get("input_size"):
        channels, height, width = cfg["input_size"]
        return int(channels), int(height), int(width)
    config = getattr(model, "config", None)
    size: Any = getattr(config, "image_size", None) if config is not None else None
    if size is None:
        size = getattr(model, "image_size", None) or getattr(model, "img_size", None)
    height, width = _pair(size) if size is not None else (224, 224)
    channels = getattr(config, "num_channels", None) if config is not None else None
    if channels is None:
        first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        channels = first_conv.in_channels if first_conv is not None else 3
    return int(channels), height, width


def _pair(size: Any) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    height, width = tuple(size)[-2:]
    return int(height), int(width)


def example_input(input_size: Sequence[int], *, device: torch.device | str, batch: int = 2) -> torch.Tensor:
    """A float batch of shape ``(batch, *input_size)``: empty on the meta device, random elsewhere."""
    shape = (batch, *(int(s) for s in input_size))
    if torch.device(device).type == "meta":
        return torch.empty(shape, device="meta")
    generator = torch.Generator().manual_seed(0)
    return torch.randn(shape, generator=generator).to(device)


def _text_config(model: nn.Module) -> Any:
    """The Hugging Face config of a text model inside ``model`` (one with a vocabulary), or ``None``."""
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and getattr(config, "vocab_size", None) and not hasattr(config, "num_channels"):
            return config
    return None


def default_example(model: nn.Module, *, length: int = 16, batch: int = 2) -> dict[str, torch.Tensor] | None:
    """A real example batch for models that do not take an image tensor, else ``None``.

    Hugging Face text models (a config with ``vocab_size``) get ``input_ids`` drawn from ordinary token ids
    (never the special ids below 1000 where the vocabulary allows) and an ``attention_mask`` whose second
    row is padded, so that the dry run sees the masked path a real batch takes.
    """
    config = _text_config(model)
    if config is None:
        return None
    length = min(length, int(getattr(config, "max_position_embeddings", length) or length))
    vocab = int(config.vocab_size)
    low = 1000 if vocab > 2000 else 0
    ids = torch.arange(batch * length).reshape(batch, length) * 7919 % (vocab - low) + low
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[1:, length // 2 :] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _first_tensor(example: Example) -> torch.Tensor:
    return example if isinstance(example, torch.Tensor) else next(iter(example.values()))


def _to(example: Example | None, device: str | torch.device) -> Example | None:
    if example is None:
        return None
    if isinstance(example, torch.Tensor):
        return example.to(device)
    return {key: value.to(device) for key, value in example.items()}


def trace(
    model: nn.Module,
    input_size: Sequence[int] | None = None,
    *,
    train: bool = False,
    example: Example | None = None,
) -> Trace:
    """Run ``model`` once without changing it and record every module call.

    Nothing the run touches stays changed: parameters and buffers are replaced by stand-ins, and every
    other attribute a forward sets on a module (anchor caches, rotary tables, ``training`` flags) is put
    back afterwards.

    Args:
        model: any ``nn.Module``.
        input_size: per-sample input shape, e.g. ``(3, 224, 224)``; inferred with
            :func:`infer_input_size` when omitted.
        train: run in training mode (shows train-only branches such as auxiliary heads).
        example: a real example batch to use instead of ``input_size``: a tensor, or a dict of keyword
            arguments (``input_ids``, ``attention_mask``). Default: :func:`default_example` for text
            models. It runs on the meta device when the model allows, else for real.

    Example:
        >>> t = trace(torchvision.models.resnet18())
        >>> [c.name for c in t.calls][-2:]
        ['avgpool', 'fc']
    """
    if example is None and input_size is None:
        example = default_example(model)
    size = (
        tuple(_first_tensor(example).shape[1:]) if example is not None else tuple(input_size or infer_input_size(model))
    )
    try:
        return _run(
            model, size, train=train, device="meta", example=_to(example, "meta") if example is not None else None
        )
    except Exception:
        pass
    device = next((t.device for t in _tensors(model) if t.device.type != "meta"), torch.device("cpu"))
    if device.type == "meta":  # a model on the meta device that cannot run there: nothing else to try
        return _run(
            model, size, train=train, device="meta", example=_to(example, "meta") if example is not None else None
        )
    return _run(
        model, size, train=train, device=str(device), example=_to(example, device) if example is not None else None
    )


def _tensors(model: nn.Module) -> list[torch.Tensor]:
    return [*model.parameters(), *model.buffers()]


def _stand_ins(model: nn.Module, device: str) -> dict[str, torch.Tensor]:
    """Meta copies (or, for a real run, buffer clones) of every parameter and buffer, by name."""
    tensors: dict[str, torch.Tensor] = {}
    for name, param in model.named_parameters():
        tensors[name] = torch.empty_like(param, device="meta") if device == "meta" else param
    for name, buffer in model.named_buffers():
        tensors[name] = torch.empty_like(buffer, device="meta") if device == "meta" else buffer.clone()
    return tensors


_MODULE_STATE = ("_parameters", "_buffers", "_modules")


_MISSING = object()


def _contents(value: Any) -> Any:
    """A copy of a plain list's or dict's items (restored in place if a forward mutates the container)."""
    return list(value) if type(value) is list else dict(value) if isinstance(value, dict) else _MISSING


def _changed(value: Any, items: Any) -> bool:
    """Whether a list or dict no longer holds the same objects (compared by identity: tensors inside)."""
    now = _contents(value)
    if len(now) != len(items):
        return True
    if isinstance(items, dict):
        return now.keys() != items.keys() or any(now[k] is not items[k] for k in items)
    return any(a is not b for a, b in zip(now, items, strict=True))


def _attributes(model: nn.Module) -> list[tuple[nn.Module, dict[str, tuple[Any, Any]]]]:
    """Every module's plain attributes with a copy of their items (not parameters, buffers or children,
    which ``functional_call`` swaps and puts back itself)."""
    return [(m, {k: (v, _contents(v)) for k, v in vars(m).items() if k not in _MODULE_STATE}) for m in model.modules()]


def _restore_attributes(saved: list[tuple[nn.Module, dict[str, tuple[Any, Any]]]]) -> None:
    """Put back what :func:`_attributes` saw: values rebound during the run are restored (a forward that
    caches ``self.cell_anchors = [...]`` on the meta device), lists and dicts it filled are emptied back,
    attributes it added are removed (hooks included)."""
    for module, attributes in saved:
        state = vars(module)
        for key in [k for k in state if k not in attributes and k not in _MODULE_STATE]:
            del state[key]
        for key, (value, items) in attributes.items():
            if state.get(key, _MISSING) is not value:
                state[key] = value
            if items is not _MISSING and _changed(value, items):
                if isinstance(value, list):
                    value[:] = items
                else:
                    value.clear()
                    value.update(items)


def _run(model: nn.Module, size: tuple[int, ...], *, train: bool, device: str, example: Example | None = None) -> Trace:
    calls: list[ModuleCall] = []
    open_calls: dict[int, list[ModuleCall]] = {}
    counter = iter(range(1 << 62))
    handles = []

    def pre_hook(name: str) -> Any:
        def hook(module: nn.Module, args: Any) -> None:
            call = ModuleCall(name=name, module=module, start=next(counter))
            calls.append(call)
            open_calls.setdefault(id(module), []).append(call)

        return hook

    def post_hook(module: nn.Module, args: Any, output: Any) -> None:
        call = open_calls[id(module)].pop()
        call.finish = next(counter)
        call.output = shapes_of(output)
        main = main_tensor(output)
        call.main_shape = main.shape if isinstance(main, torch.Tensor) else None

    saved = _attributes(model)
    for name, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(pre_hook(name)))
        handles.append(module.register_forward_hook(post_hook))
    try:
        model.train(train)
        x = example if example is not None else example_input(size, device=device)
        args, kwargs = ((), dict(x)) if isinstance(x, Mapping) else ((x,), {})
        with torch.no_grad():
            output = torch.func.functional_call(model, _stand_ins(model, device), args, kwargs, strict=False)
    finally:
        for handle in handles:
            handle.remove()
        _restore_attributes(saved)
    calls = [call for call in calls if call.name != ""]
    main = main_tensor(output)
    return Trace(
        calls=calls,
        output=shapes_of(output),
        main_shape=main.shape if isinstance(main, torch.Tensor) else None,
        device=device,
        input_shape=size,
    )


def spatial_extent(shape: torch.Size | None) -> int:
    """Number of positions (pixels or tokens) per sample in a feature map; 1 for pooled vectors."""
    if shape is None or len(shape) < 3:
        return 1
    return math.prod(shape[1:-1]) if len(shape) == 3 else math.prod(shape[2:])
