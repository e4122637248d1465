"""Tuning a grafted network: layer groups (their types, the head, the automatic split, the user's and the
families' rules), freezing, optimizer parameter groups, checking and syncing an optimizer, LoRA, and the
plan table that describes them."""

from torchgraft.tune.describe import describe
from torchgraft.tune.freeze import freeze, freeze_to, gradual_unfreeze, refreeze, unfreeze
from torchgraft.tune.group_types import GroupSpec, LayerGroup, LayerGroups
from torchgraft.tune.groups import group_state, layer_groups
from torchgraft.tune.lora import LoraError, is_adapted, lora, merged, save_adapters
from torchgraft.tune.optim import LRSpec, decay_exempt, group_lrs, param_groups
from torchgraft.tune.stale import OptimizerReport, StaleOptimizerError, check_optimizer, watch_optimizer
from torchgraft.tune.sync import SyncReport, sync_optimizer

__all__ = [
    "GroupSpec",
    "LRSpec",
    "LayerGroup",
    "LayerGroups",
    "LoraError",
    "OptimizerReport",
    "StaleOptimizerError",
    "SyncReport",
    "check_optimizer",
    "decay_exempt",
    "describe",
    "freeze",
    "freeze_to",
    "gradual_unfreeze",
    "group_lrs",
    "group_state",
    "is_adapted",
    "layer_groups",
    "lora",
    "merged",
    "param_groups",
    "refreeze",
    "save_adapters",
    "sync_optimizer",
    "unfreeze",
    "watch_optimizer",
]
