"""Freezing by layer group and the BatchNorm policies, on the real ImageNet EfficientNet-Lite0 and ResNet-18."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from torchgraft import freeze, freeze_to, gradual_unfreeze, graft, layer_groups, param_groups, refreeze, unfreeze
from torchgraft.tune.freeze import held_in_eval, is_norm


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _changed(before: dict[str, torch.Tensor], model: nn.Module) -> set[str]:
    after = model.state_dict()
    return {k for k, v in before.items() if not torch.equal(v, after[k])}


def _norm_affine(model: nn.Module, prefix: str = "body.") -> set[str]:
    return {
        f"{name}.{p}"
        for name, m in model.named_modules()
        if is_norm(m) and name.startswith(prefix)
        for p, _ in m.named_parameters(recurse=False)
    }


def _bn_stats(model: nn.Module, prefix: str = "body.") -> set[str]:
    return {
        f"{name}.{b}"
        for name, m in model.named_modules()
        if isinstance(m, _BatchNorm) and name.startswith(prefix)
        for b in ("running_mean", "running_var", "num_batches_tracked")
    }


@pytest.mark.parametrize("bn", ["frozen", "train", "adapt"])
def test_one_step_after_freeze_changes_only_what_the_policy_allows(lite0, bn):
    model = graft(lite0, 5)
    freeze(model, bn=bn)
    optimizer = torch.optim.AdamW(param_groups(model, lr=1e-2, weight_decay=0.1))
    before = _snapshot(model)
    model.train()
    x, y = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 3])
    nn.functional.cross_entropy(model(x), y).backward()
    for name, p in model.named_parameters():
        assert (p.grad is None) == (not p.requires_grad), name
    optimizer.step()
    changed = _changed(before, model)
    head = {k for k in before if k.startswith("head.")}
    affine, stats = _norm_affine(model), _bn_stats(model)
    assert head <= changed
    if bn == "frozen":
        assert changed == head
        assert all(not p.requires_grad for p in model.body.parameters())
    elif bn == "train":
        assert changed <= head | affine | stats
        assert len(changed & affine) > 0.9 * len(affine) and changed >= stats
    else:
        assert changed == head | stats
        assert all(not p.requires_grad for p in model.body.parameters())


def test_frozen_batchnorm_survives_train_calls_and_copies(lite0):
    model = graft(lite0, 5)
    freeze(model, bn="frozen")
    before = _snapshot(model)
    for subject in (model, copy.deepcopy(model)):
        subject.train()
        with torch.no_grad():
            for _ in range(3):
                subject(torch.randn(2, 3, 64, 64) * 3 + 1)
    assert not (_changed(before, model) & _bn_stats(model))
    assert not any(m.training for m in model.body.modules() if isinstance(m, _BatchNorm))
    unfreeze(model)
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 64))
    assert _bn_stats(model) <= _changed(before, model), "after unfreeze the statistics move again"


def test_freeze_to_and_gradual_unfreezing():
    model = graft(torchvision.models.resnet18(), 10)
    groups = freeze_to(model, 1)
    assert [g.state for g in groups] == ["frozen", "trainable", "trainable"]
    groups = freeze_to(model, -1, bn="train")
    assert [g.state for g in groups] == ["frozen, norm trainable", "frozen, norm trainable", "trainable"]
    trainable = []
    for epoch in range(4):
        trainable.append(gradual_unfreeze(model, epoch))
        states = [g.state for g in layer_groups(model)]
        assert states.count("trainable") == trainable[-1]
        assert states[-1] == "trainable"
    assert trainable == [1, 2, 3, 3]
    with pytest.raises(ValueError, match="unknown bn='eval'"):
        freeze(model, bn="eval")  # type: ignore[arg-type]


def test_freeze_drops_stale_gradients():
    model = graft(torchvision.models.resnet18(), 10)
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    freeze(model)
    assert all(p.grad is None for p in model.body.parameters())
    assert all(p.grad is not None for p in model.head.parameters())


def test_refreeze_covers_modules_added_by_surgery():
    model = graft(torchvision.models.resnet18(), 10)
    freeze(model)
    model.body.model.layer1[0].conv1 = nn.Conv2d(64, 64, 3, padding=1, bias=False)
    assert model.body.model.layer1[0].conv1.weight.requires_grad
    refreeze(model)
    assert not model.body.model.layer1[0].conv1.weight.requires_grad
    assert all(p.requires_grad for p in model.head.parameters())


def test_freezing_a_single_group_warns():
    with pytest.warns(UserWarning, match="single"):
        freeze(nn.Linear(4, 2))


def test_frozen_groups_hold_dropout_and_stochastic_depth_in_eval_mode():
    from torchgraft.train.cache import cache_problem

    model = graft(torchvision.models.efficientnet_b0(), 4)  # StochasticDepth in every block
    dropout = [(n, m) for n, m in model.named_modules() if type(m).__name__ == "StochasticDepth"]
    assert dropout
    freeze(model)
    model.train()
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(model.body(x), model.body(x))  # the frozen body is deterministic in training mode
    assert all(held_in_eval(m) for _, m in dropout) and cache_problem(model) is None
    freeze(model, bn="adapt")  # only the "frozen" policy holds them
    model.train()
    model.body(x)
    assert not any(held_in_eval(m) for _, m in dropout) and cache_problem(model) is not None
    freeze(model)
    unfreeze(model)
    model.train()
    assert all(m.training and not held_in_eval(m) for _, m in dropout)
    freeze_to(model, 1)  # dropout in the trainable groups keeps training
    model.train()
    model.body(x)
    groups = layer_groups(model)
    held = [groups.group_of(name) == 0 for name, _ in dropout]
    assert [held_in_eval(m) for _, m in dropout] == held and any(held) and not all(held)
