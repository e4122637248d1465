"""The rates a fine-tune records and plots: per layer group (the plan's names), the rate each step used,
for the whole run (frozen steps recorded as ``None``, drawn as gaps), with each group's planned peak."""

from __future__ import annotations

import pytest
import torch
from sklearn import datasets as sklearn_datasets
from torch.utils.data import DataLoader, TensorDataset

from torchgraft import graft
from torchgraft.train.learner import Learner
from torchgraft.tune.groups import layer_groups
from torchgraft.tune.optim import group_lrs
from torchgraft.weights.zoo import build_model


def _loaders() -> tuple[DataLoader, DataLoader]:
    data = sklearn_datasets.load_digits()
    x = torch.tensor(data.images[:320], dtype=torch.float32)[:, None].expand(-1, 3, -1, -1) / 16
    x = torch.nn.functional.interpolate(x, size=32)
    y = torch.tensor(data.target[:320])
    train = DataLoader(TensorDataset(x[:256], y[:256]), batch_size=32, shuffle=True, drop_last=True)
    return train, DataLoader(TensorDataset(x[256:], y[256:]), batch_size=64)


def test_fine_tune_records_the_rate_each_step_used_per_layer_group(tmp_path):
    pytest.importorskip("matplotlib")
    model = graft(build_model("resnet18", device="cpu"), 10, input_size=(3, 32, 32))
    train, valid = _loaders()
    learner = Learner(model, train, valid, quiet=True)
    lr, lr_mult, frozen_lr = 1e-3, 10.0, 3e-2
    learner.fine_tune(1, lr, freeze_epochs=1, lr_mult=lr_mult, frozen_lr=frozen_lr)
    steps = 2 * len(train)  # 8 frozen + 8 unfrozen; warmup 25% of 8: the peak is step 2's rate exactly
    names = [group.name for group in layer_groups(model)]
    assert len(names) >= 3 and names[-1] == "head"
    rows = learner.layer_lr_history
    assert len(rows) == steps == len(learner.lr_history) and all(list(row) == names for row in rows)
    planned = dict(zip(names, group_lrs(slice(lr / lr_mult, lr), len(names), names=names), strict=True))
    head = [row["head"] for row in rows]
    assert head[0] == pytest.approx(frozen_lr / 25, rel=1e-9)  # the first step's rate: the warm-up's start
    assert max(head[: len(train)]) == pytest.approx(frozen_lr, rel=1e-9)  # labelled by its own peak
    assert max(head[len(train) :]) == pytest.approx(planned["head"], rel=1e-9)
    for name in names[:-1]:
        series = [row[name] for row in rows]
        assert series[: len(train)] == [None] * len(train)  # frozen: a gap, not the head's rate
        assert series[len(train)] == pytest.approx(planned[name] / 25, rel=1e-9)
        assert max(series[len(train) :]) == pytest.approx(planned[name], rel=1e-9)
    assert head[-1] < head[-2]  # the last rate is one the last step used, not the schedule's next
    files = learner.plot(tmp_path)
    assert (tmp_path / "lr.png") in files and (tmp_path / "lr.png").stat().st_size > 0
