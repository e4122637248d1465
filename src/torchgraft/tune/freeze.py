"""Freezing by layer group: ``freeze``, ``freeze_to``, ``unfreeze``, gradual unfreezing, BatchNorm policy.

A frozen parameter gets ``requires_grad=False`` (so no gradient is computed for it) and loses any ``.grad``
left from earlier steps (so an optimizer cannot apply a stale one). Normalization layers in frozen groups
follow an explicit policy, because every library does something different:

* ``"frozen"`` (default) — frozen means frozen: affine parameters fixed and BatchNorm in evaluation mode,
  so its running statistics never move, even after ``model.train()`` (as Keras does); dropout and
  stochastic depth inside frozen groups are held in evaluation mode too (a frozen feature extractor gives
  the same features every time, as in linear probing). Nothing in a fully frozen body can change, which is
  what makes the body's features cacheable.
* ``"train"`` — fastai's ``train_bn``: the affine parameters of every normalization layer stay trainable and
  BatchNorm keeps updating its statistics. Gradients then flow back through the whole body.
* ``"adapt"`` — affine parameters fixed but BatchNorm statistics keep adapting to the new data in training
  mode (AdaBN; what plain ``requires_grad=False`` freezing does in PyTorch, made explicit).

The freeze state is stored on the model, so :func:`refreeze` (called by
:func:`torchgraft.sync_optimizer`) can apply it again to modules added by surgery.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Literal

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from torchgraft.tune.group_types import LayerGroups
from torchgraft.tune.groups import layer_groups

__all__ = [
    "BN_POLICIES",
    "FreezeState",
    "freeze",
    "freeze_to",
    "gradual_unfreeze",
    "held_in_eval",
    "is_norm",
    "is_stochastic",
    "refreeze",
    "unfreeze",
]

BNPolicy = Literal["frozen", "train", "adapt"]
BN_POLICIES: tuple[str, ...] = ("frozen", "train", "adapt")
_STATE_ATTR = "_torchgraft_freeze"
_STOCHASTIC = ("Dropout", "DropPath", "StochasticDepth", "AlphaDropout")
_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)


@dataclass(frozen=True)
class FreezeState:
    """What is frozen: the first ``n_frozen`` layer groups, with BatchNorm policy ``bn``."""

    n_frozen: int
    bn: str


def is_norm(module: nn.Module) -> bool:
    """Whether ``module`` is a normalization layer (BatchNorm, LayerNorm, GroupNorm, InstanceNorm, RMSNorm,
    and library classes whose name ends in ``Norm``/``Norm1d``/``Norm2d``/``Norm3d``)."""
    if isinstance(module, _NORMS) or type(module).__name__ == "RMSNorm":
        return True
    name = type(module).__name__.rstrip("123d")
    return name.endswith("Norm") and next(module.children(), None) is None


def _keep_eval(module: nn.Module, args: Any) -> None:
    """Forward pre-hook of a frozen BatchNorm: whatever ``model.train()`` set, run in evaluation mode."""
    module.training = False


def held_in_eval(module: nn.Module) -> bool:
    """Whether ``module`` (a BatchNorm, dropout or stochastic-depth layer) is held in evaluation mode by the
    ``"frozen"`` policy, whatever ``model.train()`` sets."""
    return any(hook is _keep_eval for hook in module._forward_pre_hooks.values())


def is_stochastic(module: nn.Module) -> bool:
    """Whether ``module`` is random in training mode (dropout, drop-path, stochastic depth) by its class name."""
    return any(name in type(module).__name__ for name in _STOCHASTIC)


def _set_bn_frozen(module: nn.Module, frozen: bool, training: bool) -> None:
    hooked = held_in_eval(module)
    if frozen:
        module.training = False
        if not hooked:
            module.register_forward_pre_hook(_keep_eval)
        return
    for key, hook in list(module._forward_pre_hooks.items()):
        if hook is _keep_eval:
            del module._forward_pre_hooks[key]
    module.training = training


def _norm_parameters(model: nn.Module) -> set[int]:
    return {id(p) for m in model.modules() if is_norm(m) for p in m.parameters(recurse=False)}


def _check_policy(bn: str) -> None:
    if bn not in BN_POLICIES:
        raise ValueError(f"freeze: unknown bn={bn!r}. Choose one of {BN_POLICIES}.")


def _apply(model: nn.Module, groups: LayerGroups, n_frozen: int, bn: str) -> None:
    norm_params = _norm_parameters(model)
    frozen_ids: set[int] = set()
    for i, group in enumerate(groups):
        frozen = i < n_frozen
        for param in group.params:
            trainable = not frozen or (bn == "train" and id(param) in norm_params)
            param.requires_grad_(trainable)
            if not trainable:
                param.grad = None
                frozen_ids.add(id(param))
    if groups.locked:  # peft's frozen base never trains, whatever was done to it
        params = dict(model.named_parameters(remove_duplicate=False))
        for name in groups.locked:
            params[name].requires_grad_(False)
            params[name].grad = None
    frozen_names = {name for i, group in enumerate(groups) if i < n_frozen for name in group.names}
    frozen_names.update(groups.locked)
    for name, module in model.named_modules():
        if is_stochastic(module) and not isinstance(module, _BatchNorm):
            _set_bn_frozen(module, bn == "frozen" and _stochastic_frozen(groups, name, n_frozen), model.training)
            continue
        if not isinstance(module, _BatchNorm):
            continue
        own = [f"{name}.{n}" if name else n for n, _ in module.named_parameters(recurse=False)]
        in_frozen = all(n in frozen_names for n in own) if own else _in_frozen_group(groups, name, n_frozen)
        _set_bn_frozen(module, in_frozen and bn == "frozen", model.training)


def _in_frozen_group(groups: LayerGroups, module_name: str, n_frozen: int) -> bool:
    """For a layer without parameters: whether its module path falls in a frozen group."""
    index = groups.group_of(module_name)
    return index is not None and index < n_frozen


def _stochastic_frozen(groups: LayerGroups, name: str, n_frozen: int) -> bool:
    """Whether dropout ``name`` is frozen: its group is, or (in no group, like the pre-logits dropout a graft
    leaves in a torchvision body) it lies in a grafted model's body and every body group is frozen."""
    index = groups.group_of(name)
    if index is not None:
        return index < n_frozen
    return name.startswith("body.") and n_frozen >= len(groups) - 1


def freeze_to(model: nn.Module, n: int, *, bn: BNPolicy = "frozen") -> LayerGroups:
    """Freeze the first ``n`` layer groups and unfreeze the rest (``n < 0`` counts from the end, as in
    fastai: ``freeze_to(model, -1)`` leaves only the head trainable).

    Args:
        model: any module; its layer groups come from :func:`torchgraft.layer_groups`.
        n: number of groups to freeze.
        bn: normalization policy in frozen groups: ``"frozen"``, ``"train"`` or ``"adapt"`` (module docs).

    Returns:
        The resolved :class:`~torchgraft.LayerGroups`, whose ``state`` now shows what is frozen.

    Example:
        >>> freeze_to(model, -1)  # train the head only
    """
    _check_policy(bn)
    if not isinstance(n, int):
        raise TypeError(f"freeze_to: n must be an int (number of groups to freeze), got {type(n).__name__}.")
    groups = layer_groups(model)
    count = len(groups)
    n_frozen = max(0, min(count, n if n >= 0 else count + n))
    if count == 1 and n_frozen > 0:
        warnings.warn(
            "freeze: the model has a single layer group, so freezing it freezes everything. Split it first: "
            "torchgraft.layer_groups(model, n=3).",
            stacklevel=2,
        )
    _apply(model, groups, n_frozen, bn)
    object.__setattr__(model, _STATE_ATTR, FreezeState(n_frozen, bn))
    return groups


def freeze(model: nn.Module, *, bn: BNPolicy = "frozen") -> LayerGroups:
    """Freeze the pretrained groups: everything but the head group (``freeze_to(model, -1)``), and for a
    dense graft everything but its decoder and head."""
    return freeze_to(model, -layer_groups(model).n_new, bn=bn)


def unfreeze(model: nn.Module) -> LayerGroups:
    """Make every layer group trainable again (frozen BatchNorm layers follow ``model.train()`` again)."""
    state = getattr(model, _STATE_ATTR, None)
    return freeze_to(model, 0, bn=state.bn if isinstance(state, FreezeState) else "frozen")


def gradual_unfreeze(model: nn.Module, epoch: int, *, bn: BNPolicy = "frozen") -> int:
    """ULMFiT-style gradual unfreezing: at ``epoch`` 0 only the head (and a dense graft's decoder) trains,
    each later epoch unfreezes one more group (from the top). Returns the number of trainable groups.

    Example:
        >>> for epoch in range(epochs):
        ...     gradual_unfreeze(model, epoch)
        ...     sync_optimizer(optimizer, model)
        ...     train_one_epoch(...)
    """
    if epoch < 0:
        raise ValueError(f"gradual_unfreeze: epoch must be >= 0, got {epoch}.")
    groups = layer_groups(model)
    count = len(groups)
    trainable = min(count, epoch + groups.n_new)
    freeze_to(model, count - trainable, bn=bn)
    return trainable


def refreeze(model: nn.Module) -> None:
    """Apply the stored freeze state again, e.g. to modules added by surgery after :func:`freeze_to`."""
    state = getattr(model, _STATE_ATTR, None)
    if isinstance(state, FreezeState):
        _apply(model, layer_groups(model), state.n_frozen, state.bn)
