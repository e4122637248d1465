"""Optimizer param groups (discriminative rates, no-decay sets, merging), schedulers, and optimizer sync."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torch import nn

from torchgraft import (
    StaleOptimizerError,
    check_optimizer,
    freeze,
    graft,
    group_lrs,
    layer_groups,
    param_groups,
    sync_optimizer,
    unfreeze,
    watch_optimizer,
)
from torchgraft.tune.freeze import is_norm
from torchgraft.tune.optim import decay_exempt
from torchgraft.weights.zoo import build_model


def _resnet(n_out: int = 10) -> nn.Module:
    return graft(torchvision.models.resnet18(), n_out)


def _train_step(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    model.train()
    x, y = torch.randn(4, 3, 64, 64), torch.randint(0, 3, (4,))
    nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
    optimizer.zero_grad()


def test_group_lrs():
    assert group_lrs(slice(1e-5, 1e-3), 3) == pytest.approx([1e-5, 1e-4, 1e-3])
    assert group_lrs(slice(1e-3), 3) == pytest.approx([1e-4, 1e-4, 1e-3])
    assert group_lrs(2e-3, 2) == [2e-3, 2e-3]
    assert group_lrs([1, 2, 3], 3) == [1.0, 2.0, 3.0]
    assert group_lrs(1.0, 4, layer_decay=0.5) == [0.125, 0.25, 0.5, 1.0]
    with pytest.raises(ValueError, match=r"lr has 2 values but the model has 3 layer groups \(a, b, c\)"):
        group_lrs([1, 2], 3, names=["a", "b", "c"])
    with pytest.raises(ValueError, match="layer_decay"):
        group_lrs(slice(1, 2), 3, layer_decay=0.5)
    with pytest.raises(ValueError, match="finite"):
        group_lrs([1.0, math.nan], 2)


def test_param_groups_discriminative_no_decay_and_names():
    model = _resnet()
    groups = param_groups(model, lr=slice(1e-5, 1e-3), weight_decay=0.05)
    assert [g["lr"] for g in groups] == pytest.approx([1e-5, 1e-5, 1e-4, 1e-4, 1e-3, 1e-3])
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0] * 3
    named = [pair for g in groups for pair in g["params"]]
    assert sorted(n for n, _ in named) == sorted(n for n, _ in model.named_parameters())
    for group in groups:
        for name, p in group["params"]:
            module = model.get_submodule(name.rpartition(".")[0])
            exempt = p.ndim <= 1 or is_norm(module)
            assert (group["weight_decay"] == 0.0) == exempt, name
    optimizer = torch.optim.AdamW(groups)
    assert optimizer.param_groups[4]["param_names"] == ["head.1.weight"]
    _train_step(model, optimizer)


def test_equal_settings_merge_and_plain_tensors():
    model = _resnet()
    groups = param_groups(model, lr=1e-3, names=False)
    assert len(groups) == 2 and "weight_decay" not in groups[0] and groups[1]["weight_decay"] == 0.0
    assert all(isinstance(p, torch.Tensor) for g in groups for p in g["params"])
    optimizer = torch.optim.SGD(groups, momentum=0.9, weight_decay=1e-4)
    assert optimizer.param_groups[0]["weight_decay"] == 1e-4  # the optimizer's default applies
    assert len(param_groups(model, lr=1e-3, no_decay=False)) == 1


def test_embeddings_and_tokens_get_no_decay():
    vit = build_model("vit_b_16")
    exempt = decay_exempt(vit)
    assert {"class_token", "encoder.pos_embedding"} <= exempt
    assert "encoder.layers.encoder_layer_0.mlp.0.weight" not in exempt
    text = nn.Sequential(nn.Embedding(100, 8), nn.Linear(8, 2))
    assert decay_exempt(text) == {"0.weight", "1.bias"}


@pytest.mark.parametrize("pct_start", [0.25, 0.5])
def test_one_cycle_follows_each_groups_maximum(pct_start):
    model = _resnet()
    optimizer = torch.optim.AdamW(param_groups(model, lr=slice(1e-4, 1e-2), weight_decay=0.01))
    maxima = [g["lr"] for g in optimizer.param_groups]
    total = 20
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=maxima, total_steps=total, pct_start=pct_start)
    end_warmup = pct_start * total - 1

    def expected(peak: float, step: int) -> float:
        start, low = peak / 25, peak / 25 / 1e4
        if step <= end_warmup:
            a, b, pct = start, peak, step / end_warmup
        else:
            a, b, pct = peak, low, (step - end_warmup) / (total - 1 - end_warmup)
        return b + (a - b) / 2 * (math.cos(math.pi * pct) + 1)

    for step in range(total):
        if step in (0, 2, 4, 9, 14, 19):
            got = [g["lr"] for g in optimizer.param_groups]
            assert got == pytest.approx([expected(peak, step) for peak in maxima], rel=1e-9)
        optimizer.step()
        scheduler.step()
    assert len({round(m, 12) for m in maxima}) == 3  # three distinct rates, one per layer group


def test_replacing_the_head_layer_is_caught_then_synced_keeping_adam_state():
    model = _resnet()
    optimizer = torch.optim.Adam(param_groups(model, lr=slice(1e-5, 1e-3)))
    watch_optimizer(optimizer, model)
    _train_step(model, optimizer)
    kept = {n: {k: v.clone() for k, v in optimizer.state[p].items()} for n, p in model.named_parameters()}
    model.head[1] = nn.Linear(512, 3)

    report = check_optimizer(optimizer, model)
    assert report.missing == ("head.1.weight", "head.1.bias")
    assert report.removed == ("head.1.weight", "head.1.bias")  # the old tensors, by their recorded names
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    with pytest.raises(StaleOptimizerError, match=r"head\.1\.weight, head\.1\.bias.*sync_optimizer"):
        optimizer.step()
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters()), "the stale step did not run"
    optimizer.zero_grad()

    sync = sync_optimizer(optimizer, model)
    head_groups = [k for k, g in enumerate(optimizer.param_groups) if g["lr"] == pytest.approx(1e-3)]
    assert set(sync.added) == {"head.1.weight", "head.1.bias"}
    assert set(sync.added.values()) == set(head_groups) and sync.new_groups == []
    assert len(sync.removed) == 2 and not check_optimizer(optimizer, model).stale
    for n, p in model.named_parameters():
        if not n.startswith("head."):
            assert all(torch.equal(kept[n][k], v) for k, v in optimizer.state[p].items()), n
    new_weight = model.head[1].weight.detach().clone()
    _train_step(model, optimizer)
    assert not torch.equal(new_weight, model.head[1].weight)


def test_unfreeze_with_an_optimizer_of_trainable_parameters_only():
    model = _resnet()
    freeze(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    _train_step(model, optimizer)
    unfreeze(model)
    assert len(check_optimizer(optimizer, model).missing) == len(list(model.body.parameters()))
    report = sync_optimizer(optimizer, model)
    assert set(report.added.values()) == {0}  # one group: everything joins it
    assert not check_optimizer(optimizer, model).stale


def test_missing_groups_are_created_with_the_given_settings():
    model = _resnet()
    freeze(model)
    head_only = [g for g in param_groups(model, lr=slice(1e-5, 1e-3)) if g["params"][0][0].startswith("head.")]
    optimizer = torch.optim.AdamW(head_only)
    unfreeze(model)
    with pytest.warns(UserWarning, match="rebuild any LR scheduler"):
        report = sync_optimizer(optimizer, model, lr=slice(1e-5, 1e-3), weight_decay=0.02)
    assert len(report.new_groups) == 4
    lrs = sorted({round(optimizer.param_groups[k]["lr"], 12) for k in report.new_groups})
    assert lrs == pytest.approx([1e-5, 1e-4])
    assert {optimizer.param_groups[k]["weight_decay"] for k in report.new_groups} == {0.0, 0.02}
    assert not check_optimizer(optimizer, model).stale


def test_frozen_parameters_stay_in_the_optimizer_and_need_no_sync():
    model = _resnet()
    freeze(model)
    optimizer = torch.optim.AdamW(param_groups(model, lr=1e-3))
    assert not check_optimizer(optimizer, model).stale
    unfreeze(model)
    report = sync_optimizer(optimizer, model)
    assert report.added == {} and report.removed == []
    assert "already in sync" in str(report)


def test_sync_after_a_checkpoint_round_trip_uses_recorded_names():
    model = _resnet()
    optimizer = torch.optim.AdamW(param_groups(model, lr=slice(1e-5, 1e-3)))
    _train_step(model, optimizer)
    state = optimizer.state_dict()
    restored = torch.optim.AdamW(param_groups(model, lr=slice(1e-5, 1e-3)))
    restored.load_state_dict(state)
    model.head = nn.Sequential(nn.Flatten(), nn.Linear(512, 4))  # the whole head replaced
    report = sync_optimizer(restored, model)
    head_group = {k for k, g in enumerate(restored.param_groups) if g["lr"] == pytest.approx(1e-3)}
    assert set(report.added.values()) <= head_group and report.new_groups == []
    assert restored.param_groups[next(iter(report.added.values()))]["param_names"][-1].startswith("head.1.")


def test_param_groups_follow_user_rules_and_layer_groups():
    model = build_model("resnet50")
    layer_groups(model, rules={"early": ["conv1", "bn1", "layer1"], "late": "layer{2..4}"})
    groups = param_groups(model, lr=[1e-5, 1e-4, 1e-3], names=True)
    lrs = {name: g["lr"] for g in groups for name, _ in g["params"]}
    assert lrs["layer1.0.conv1.weight"] == 1e-5 and lrs["layer4.2.conv3.weight"] == 1e-4 and lrs["fc.weight"] == 1e-3
