"""Find a network's classifier, its auxiliary heads and the point where its features are still unpooled.

The search reads a dry run (:mod:`torchgraft.grafting.dryrun`), never attribute names: the classifier is the last
module holding parameters to run in evaluation mode, checked against the number of classes the model
returns. That finds ``fc`` (ResNet), ``classifier.1`` (MobileNetV2, whose pooling is functional),
``heads.head`` (ViT, after class-token selection), ``classifier.1`` (SqueezeNet's 1x1 convolution) and
``classifier`` (Hugging Face) with one rule. Models that follow timm's contract (``get_classifier``,
``reset_classifier``, ``forward_features``) are asked directly.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import torch
from torch import nn

from torchgraft.grafting.dryrun import ModuleCall, Trace, spatial_extent

__all__ = [
    "ClassifierInfo",
    "ClassifierNotFoundError",
    "candidate_cuts",
    "find_aux_heads",
    "find_classifier",
    "find_unpooled",
    "is_timm_model",
    "suggest_names",
]


class ClassifierNotFoundError(ValueError):
    """Raised when no classifier can be found; the message names what was tried and the fix."""


@dataclass(frozen=True)
class ClassifierInfo:
    """Where a model's classifier is.

    Attributes:
        names: dotted module names of the classifier layer(s) (two for distilled timm models).
        in_features: size of the features the classifier reads.
        n_classes: number of outputs it produces.
        method: how it was found (``"timm"`` or ``"dry-run"``).
    """

    names: tuple[str, ...]
    in_features: int
    n_classes: int
    method: str


def is_timm_model(model: nn.Module) -> bool:
    """Whether ``model`` follows timm's classifier contract."""
    return all(hasattr(model, attr) for attr in ("forward_features", "get_classifier", "reset_classifier"))


def candidate_cuts(model: nn.Module, trace: Trace | None = None, *, limit: int = 8) -> list[str]:
    """Names a user could pass as ``cut=``: the top-level children, and the last containers that ran."""
    names = [name for name, _ in model.named_children()]
    if trace is not None:
        containers = [c.name for c in trace.calls if len(list(c.module.children())) > 0]
        names += [n for n in reversed(containers) if n not in names][:limit]
    return names


def _module_names(model: nn.Module) -> dict[int, str]:
    return {id(module): name for name, module in model.named_modules() if name}


def _timm_classifier(model: nn.Module) -> ClassifierInfo | None:
    found = model.get_classifier()
    heads = found if isinstance(found, tuple | list) else (found,)
    names = _module_names(model)
    head_names = tuple(names[id(h)] for h in heads if isinstance(h, nn.Module) and id(h) in names)
    if all(isinstance(h, nn.Identity) for h in heads):  # built with num_classes=0: already headless
        return ClassifierInfo(names=(), in_features=int(model.num_features), n_classes=0, method="timm")
    if not head_names:
        return None
    first = heads[0]
    in_features = int(getattr(first, "in_features", getattr(first, "in_channels", 0)) or model.num_features)
    n_classes = int(getattr(model, "num_classes", getattr(first, "out_features", 0)))
    return ClassifierInfo(names=head_names, in_features=in_features, n_classes=n_classes, method="timm")


def _out_features(call: ModuleCall) -> int | None:
    """Outputs of a projection layer (Linear, 1x1 Conv, or any module with a >=2-D ``weight``); ``None``
    for anything else (a LayerNorm's output width is not a class count)."""
    weight = getattr(call.module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.ndim < 2:
        return None
    for attr in ("out_features", "out_channels"):
        if isinstance(getattr(call.module, attr, None), int):
            return getattr(call.module, attr)
    return int(weight.shape[0])


def _in_features(module: nn.Module) -> int:
    for attr in ("in_features", "in_channels"):
        if isinstance(getattr(module, attr, None), int):
            return getattr(module, attr)
    weight = getattr(module, "weight", None)
    return int(weight.shape[1]) if isinstance(weight, torch.Tensor) and weight.ndim >= 2 else 0


def find_classifier(model: nn.Module, trace: Trace) -> ClassifierInfo:
    """Locate the classifier of ``model`` from an evaluation-mode dry run.

    Raises:
        ClassifierNotFoundError: when the model returns no ``(batch, classes)`` tensor or its last layer
            with parameters does not produce that many outputs. The message lists the candidates for
            ``cut=``.

    Example:
        >>> find_classifier(resnet18(), trace(resnet18())).names
        ('fc',)
    """
    if is_timm_model(model):
        info = _timm_classifier(model)
        if info is not None:
            return info
    owner = type(model).__name__
    shape = trace.main_shape
    if shape is None or len(shape) != 2:
        raise ClassifierNotFoundError(
            f"graft: no classifier found in {owner}: it returns {trace.output}, not a (batch, classes) "
            f"tensor, so there is no classifier to replace. Pass cut=... naming the last module of the "
            f"body (candidates: {', '.join(candidate_cuts(model, trace))}) and head=<your module>."
        )
    n_classes = int(shape[1])
    with_params = [call for call in trace.calls if call.has_own_params]
    last = with_params[-1] if with_params else None
    if last is None or _out_features(last) != n_classes:
        seen = (
            f"the last layer with parameters is '{last.name}' ({type(last.module).__name__})"
            if last
            else ("no layer with parameters ran")
        )
        raise ClassifierNotFoundError(
            f"graft: no classifier found in {owner}: the model returns {n_classes} outputs but {seen}, "
            f"which does not produce them (tried: timm contract, last parametrised layer of a dry run). "
            f"Pass cut=... (candidates: {', '.join(candidate_cuts(model, trace))})."
        )
    return ClassifierInfo(
        names=(last.name,), in_features=_in_features(last.module), n_classes=n_classes, method="dry-run"
    )


def find_aux_heads(eval_trace: Trace, train_trace: Trace) -> list[str]:
    """Top-most modules with parameters that run only in training mode (GoogLeNet's ``aux1``/``aux2``)."""
    eval_names = eval_trace.names()
    train_only = {c.name for c in train_trace.calls if c.name not in eval_names}
    with_params = {c.name for c in train_trace.calls if c.name in train_only and c.has_own_params}
    roots = {name for name in train_only if not any(name.startswith(p + ".") for p in train_only)}
    return sorted(r for r in roots if any(n == r or n.startswith(r + ".") for n in with_params))


def find_unpooled(trace: Trace, before: str) -> ModuleCall:
    """The outermost module whose output is the last unpooled feature map (or token sequence) before
    module ``before`` runs: the place to cut so that the head does the pooling.

    Raises:
        ClassifierNotFoundError: when no feature map with more than one position is produced first.
    """
    start = trace.by_name[before][0].start
    done = [c for c in trace.calls if 0 <= c.finish < start and c.main_shape is not None]
    unpooled = [c for c in done if len(c.main_shape) >= 3 and spatial_extent(c.main_shape) > 1]
    if not unpooled:
        raise ClassifierNotFoundError(
            f"graft: no unpooled feature map is produced before '{before}', so the head cannot do the "
            f"pooling. Use pool='model' to keep the model's own pooling, or pass cut=..."
        )
    return max(unpooled, key=lambda c: c.finish)


def suggest_names(model: nn.Module, name: str) -> str:
    """A hint listing module names close to ``name``."""
    names = [n for n, _ in model.named_modules() if n]
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    shown = close or [n for n, _ in model.named_children()]
    return ", ".join(repr(n) for n in shown)
