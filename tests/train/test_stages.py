"""The plan of a fine-tune as it runs: ``Learner.stages`` lists each stage's frozen groups, trained groups
and rates, epochs and feature cache, and ``fine_tune`` runs exactly that list (checked from inside the fits)."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch.utils.data import DataLoader, TensorDataset

from torchgraft import Learner, graft, layer_groups
from torchgraft.train.callbacks import Callback
from torchgraft.train.stages import plan_text, stage_rates
from torchgraft.tune.describe import describe


def _learner(**options) -> Learner:
    model = graft(torchvision.models.resnet18(weights=None), 3, input_size=(3, 64, 64))
    x, y = torch.randn(16, 3, 64, 64), torch.arange(16) % 3
    loader = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True)
    return Learner(model, loader, DataLoader(TensorDataset(x, y), batch_size=8), quiet=True, **options)


class SeeStages(Callback):
    """What each fit of a fine-tune really trains: per layer group, trainable or not and its peak rate."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, list[tuple[str, bool, float]], bool]] = []

    def on_fit_begin(self, learner) -> None:
        rates = {id(p): g["max_lr"] for g in learner.optimizer.param_groups for p in g["params"]}
        groups = [(g.name, g.state == "trainable", rates[id(g.params[0])]) for g in layer_groups(learner.model)]
        self.seen.append((learner.stage, groups, learner.cache is not None))


def test_the_printed_plan_lists_the_three_stages_with_their_frozen_groups_and_rates():
    learner = _learner(cache_features=True)
    text = plan_text(learner.stages(2, freeze_epochs=1, keep_frozen=1, lr=1e-3, lr_mult=10, frozen_lr=2e-2))
    assert text.splitlines() == [
        "stages (as fine_tune runs them):",
        "  frozen    1 epoch   frozen: body0, body1  trains: head 0.02  features cached",
        "  unfrozen  2 epochs  frozen: body0  trains: body1 0.000316, head 0.001",
    ]
    gradual = plan_text(learner.stages(3, freeze_epochs=1, gradual=True, lr_mult=10))
    assert gradual.splitlines()[2:] == [
        "  top2      1 epoch   frozen: body0  trains: body1 0.000949, head 0.003",
        "  unfrozen  2 epochs  frozen: none  trains: body0 0.0003, body1 0.000949, head 0.003",
    ]


def test_fine_tune_runs_the_stages_it_plans():
    see = SeeStages()
    learner = _learner(cache_features=True, callbacks=[see])
    options = {"freeze_epochs": 1, "keep_frozen": 1, "lr_mult": 10, "frozen_lr": 2e-2}
    planned = learner.stages(2, 1e-3, **options)
    learner.fine_tune(2, 1e-3, **options)
    expected = [(s.name, [(g.name, g.trainable, g.lr) for g in s.groups], s.cached) for s in planned]
    assert [stage for stage, _, _ in see.seen] == ["frozen", "unfrozen"]
    for (name, groups, cached), (_, want, want_cached) in zip(see.seen, expected, strict=True):
        assert cached == want_cached, name
        assert [(n, t) for n, t, _ in groups] == [(n, t) for n, t, _ in want], name
        trained = [(n, r) for n, t, r in groups if t]
        assert trained == [(n, r) for n, t, r in want if t], name  # the rates of the groups that train
    assert [len([r for r in learner.history if r["phase"] == p]) for p in (0, 1)] == [1, 2]


def test_the_plan_table_shows_for_each_stage_the_groups_it_trains_and_their_rates():
    """The layer groups of a run's plan: one column per stage (the rate that stage trains the group at, or
    frozen), not the state before training, where every group still reads trainable."""
    learner = _learner()
    stages = learner.stages(3, freeze_epochs=1, gradual=True, lr_mult=10)
    text = describe(learner.model, stages=stage_rates(stages))
    table = text.split("  layer groups: the rate each stage trains a group at, or frozen\n")[1].splitlines()
    assert table[0].split() == ["group", "modules", "parameters", "frozen", "top2", "unfrozen"]
    cells = {row.split()[0]: row.split()[-3:] for row in table[1:4]}
    assert cells == {
        "body0": ["frozen", "frozen", "0.0003"],
        "body1": ["frozen", "0.000949", "0.000949"],
        "head": ["0.003", "0.003", "0.003"],
    }
    for stage, column in zip(stages, zip(*cells.values(), strict=True), strict=True):  # the stages as planned
        assert [cell != "frozen" for cell in column] == [g.trainable for g in stage.groups], stage.name
    assert "trainable" not in "\n".join(table)
    with pytest.raises(ValueError, match=r"stage .x. has 2 rates but the model has 3 layer groups \(body0, body1"):
        layer_groups(learner.model).table(stages=[("x", [1e-3, None])])
