"""FSDP2 (``fully_shard``) for models larger than one device: sharding by layer group, whole state dicts.

:func:`shard_model` applies ``torch.distributed.fsdp.fully_shard`` to the blocks of each layer group (the
largest modules whose parameters all lie in one group), then to the root, so each group is gathered only
while it runs and freezing a group freezes whole units. Parameters become ``DTensor`` shards; the layer
groups, freezing, ``param_groups`` and the optimizer work on them unchanged, and flipping ``requires_grad``
after sharding (``fine_tune``'s stages) is supported by FSDP2.

Checkpoints and exports hold whole tensors, so a sharded run writes the same files as an unsharded one:
:func:`full_model_state` gathers the model through ``torch.distributed.checkpoint.state_dict`` (on the CPU,
every rank taking part, rank 0 keeping them); :func:`full_optimizer_state` gathers each moment of the
optimizer's own ``state_dict()`` (DCP's ``get_optimizer_state_dict`` is not used: on an optimizer that has
not stepped yet it takes a step with zero gradients to create the moments, which advances Adam's step count
and changes every later update); :func:`load_full_state` puts such files back into sharded modules.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from torchgraft.tune.groups import layer_groups

__all__ = [
    "full_model_state",
    "full_optimizer_state",
    "is_sharded",
    "load_full_state",
    "plain_copy",
    "shard_blocks",
    "shard_model",
]


def is_sharded(model: nn.Module) -> bool:
    """Whether ``fully_shard`` was applied to ``model``."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def shard_blocks(model: nn.Module) -> list[str]:
    """The names of the modules :func:`shard_model` shards before the root: per layer group, the largest
    modules whose parameters all belong to that group (and hold some)."""
    group_of = {name: g for g, group in enumerate(layer_groups(model)) for name in group.names}
    chosen: list[str] = []

    def visit(prefix: str, module: nn.Module) -> None:
        names = [f"{prefix}{n}" for n, _ in module.named_parameters()]
        groups = {group_of.get(n, -1) for n in names}
        if prefix and names and len(groups) == 1 and -1 not in groups:
            chosen.append(prefix.rstrip("."))
            return
        for child_name, child in module.named_children():
            visit(f"{prefix}{child_name}.", child)

    visit("", model)
    return chosen


def shard_model(model: nn.Module, *, param_dtype: torch.dtype | None = None) -> nn.Module:
    """``model`` sharded in place with FSDP2 over the default process group: each block of
    :func:`shard_blocks`, then the root. ``param_dtype`` (``torch.bfloat16``) gathers the parameters in that
    precision for the forward and backward, with gradients reduced in float32 (FSDP2's
    ``MixedPrecisionPolicy``) — except in networks with BatchNorm, whose float32 running statistics do not
    mix with bfloat16 weights: there the parameters stay float32 and autocast alone lowers the precision.

    Raises:
        RuntimeError: no process group (launch with ``torchrun``).
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        param_dtype = None
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32) if param_dtype else None
    options: dict[str, Any] = {"mp_policy": policy} if policy is not None else {}
    for name in shard_blocks(model):
        fully_shard(model.get_submodule(name), **options)
    fully_shard(model, **options)
    return model


def plain_copy(model: nn.Module) -> nn.Module:
    """An unsharded copy of ``model``'s structure on the meta device (no memory): what :func:`load_full_state`
    fills on rank 0 to report on and export a sharded run."""
    return copy.deepcopy(model).to("meta")


def _options(**flags: bool) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(**flags)


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Whole tensors of a sharded ``model`` on the CPU (rank 0; the other ranks get ``{}``). Every rank must
    call it."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options(full_state_dict=True, cpu_offload=True))


def _whole(value: Any) -> Any:
    full = getattr(value, "full_tensor", None)
    return full().cpu() if callable(full) else value


def full_optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """``optimizer.state_dict()`` with every sharded moment gathered whole onto the CPU: the state dict an
    unsharded run's optimizer has. Every rank must call it (the ranks hold the same parameters in the same
    order, so they gather in step)."""
    state = optimizer.state_dict()
    moments = {index: {k: _whole(v) for k, v in entry.items()} for index, entry in sorted(state["state"].items())}
    return {**state, "state": moments}


def _sharded_like(param: torch.Tensor, value: Any) -> Any:
    if not isinstance(value, torch.Tensor) or getattr(param, "device_mesh", None) is None or value.dim() == 0:
        return value
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(value.to(param.device), param.device_mesh, param.placements)  # type: ignore[attr-defined]


def load_full_state(
    model: nn.Module,
    model_state: dict[str, torch.Tensor],
    *,
    optimizer: torch.optim.Optimizer | None = None,
    optimizer_state: dict[str, Any] | None = None,
) -> None:
    """Put whole tensors (every rank holding them) into a sharded ``model`` (and into its optimizer, from
    :func:`full_optimizer_state`): each rank keeps its shard."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    set_model_state_dict(model, model_state, options=_options(full_state_dict=True))
    if optimizer is None or optimizer_state is None:
        return
    params = [p for group in optimizer.param_groups for p in group["params"]]
    moments = {
        index: {k: _sharded_like(params[int(index)], v) for k, v in entry.items()}
        for index, entry in sorted(optimizer_state["state"].items())
    }
    optimizer.load_state_dict({**optimizer_state, "state": moments})
