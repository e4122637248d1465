"""The task inferred from the first batch when none is given, and the user's own loss respected: a real
DeepLabV3 (torchvision, outputs (N, 21, H, W)) and a regression net train with ``loss=`` and no ``task=``."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from torchgraft import Learner
from torchgraft.tasks import Classification, Multilabel, Regression, Segmentation, Task
from torchgraft.tasks.infer import TaskInferenceError, infer_task


def _loader(x: torch.Tensor, y: torch.Tensor, *, batch: int = 8, shuffle: bool = False) -> DataLoader:
    return DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=shuffle)


@pytest.mark.parametrize(
    ("outputs", "targets", "expected"),
    [
        (torch.randn(4, 3), torch.tensor([0, 2, 1, 0]), Classification),
        (torch.randn(4, 4), torch.tensor([0, 3, 1, 2]), Classification),  # batch == classes: still class ids
        (torch.randn(4, 3), torch.tensor([[0, 1, 1], [1, 0, 0], [0, 0, 0], [1, 1, 1]]).float(), Multilabel),
        (torch.randn(4, 3), torch.tensor([[0, 1, 1], [1, 0, 0], [0, 0, 0], [1, 1, 1]]), Multilabel),
        (torch.randn(4, 3), torch.softmax(torch.randn(4, 3), dim=1), Classification),  # soft labels (mixup)
        (torch.randn(4, 1), torch.randn(4, 1), Regression),
        (torch.randn(4, 1), torch.randn(4), Regression),
        (torch.randn(4, 2), torch.randn(4, 2) * 5, Regression),
        (torch.randn(2, 21, 8, 8), torch.randint(0, 21, (2, 8, 8)), Segmentation),
    ],
)
def test_each_task_is_told_from_outputs_and_targets(outputs, targets, expected):
    task, reason = infer_task(outputs, targets, target_key="y")
    assert type(task) is expected and task.target_key == "y" and reason


@pytest.mark.parametrize(
    ("outputs", "targets", "seen"),
    [
        (torch.randn(4, 1), torch.tensor([0, 1, 1, 0]), r"outputs \(4, 1\) and integer targets of shape \(4,\)"),
        (torch.randn(4, 3), torch.randn(4), r"float targets of shape \(4,\) \(regression\?\)"),
        (torch.randn(4, 3), torch.tensor([[0, 5, 1]] * 4), r"integer targets of shape \(4, 3\)"),
        (torch.randn(2, 21, 8, 8), torch.rand(2, 8, 8), r"float targets of shape \(2, 8, 8\)"),
        (torch.randn(4, 3, 7), torch.randn(4, 3, 7), r"outputs \(4, 3, 7\)"),
    ],
)
def test_what_cannot_be_told_apart_is_refused_naming_task(outputs, targets, seen):
    with pytest.raises(TaskInferenceError, match=rf"{seen}.*pass task='classify', 'multilabel', 'regression'"):
        infer_task(outputs, targets)


def test_deeplabv3_trains_with_its_own_loss_and_no_task(capsys):
    segmentation = pytest.importorskip("torchvision.models.segmentation")
    model = segmentation.deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=21)
    x = torch.randn(8, 3, 64, 64)
    masks = (x[:, 0] > 0).long() * 3 + (x[:, 1] > 0.5).long()  # classes 0, 1, 3, 4 read from the pixels
    learner = Learner(model, _loader(x, masks, batch=4), loss=nn.CrossEntropyLoss(), metrics=None, progress=False)
    history = learner.fit(4, 3e-3)
    assert isinstance(learner.task, Segmentation)  # (N, 21, H, W) logits and (N, H, W) masks
    assert history[-1]["train_loss"] < 0.7 * history[0]["train_loss"]
    said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("task:")]
    assert said == [
        "task: segment, inferred from the first batch (integer masks, one class per pixel); pass task= to choose"
    ]


def _regression_data() -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(64, 5)
    return x, (x @ torch.tensor([[1.0], [-2.0], [0.5], [0.0], [3.0]]) + 0.1).float()  # float (N, 1) targets


def test_a_regression_net_trains_with_mse_and_no_task():
    x, y = _regression_data()
    net = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 1))
    learner = Learner(net, _loader(x, y, shuffle=True), _loader(x, y), loss=nn.MSELoss(), metrics=None, quiet=True)
    history = learner.fit(5, 1e-2)
    assert isinstance(learner.task, Regression)
    assert history[-1]["valid_loss"] < 0.3 * history[0]["valid_loss"]
    assert set(history[-1]) == {"stage", "phase", "epoch", "train_loss", "valid_loss", "seconds"}  # metrics=None: none


def test_without_a_loss_the_inferred_task_brings_its_loss_and_metrics():
    x, y = _regression_data()
    learner = Learner(nn.Linear(5, 1), _loader(x, y), _loader(x, y), quiet=True)
    history = learner.fit(2, 1e-2)
    assert isinstance(learner.task, Regression) and {"mae", "rmse", "r2"} <= set(history[-1])


def test_outputs_that_fit_no_task_train_under_the_users_loss_without_metrics(capsys):
    x, y = torch.randn(16, 6), torch.randn(16, 2, 3)  # a (N, 2, 3) output: no task's shape

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(6, 6)

        def forward(self, inputs: torch.Tensor) -> torch.Tensor:
            return self.linear(inputs).view(-1, 2, 3)

    learner = Learner(Net(), _loader(x, y), loss=nn.MSELoss(), metrics=None)
    learner.fit(1, 1e-2)
    assert type(learner.task) is Task
    assert "task: none, inferred from the first batch (outputs (8, 2, 3) fit no task" in capsys.readouterr().err
    with pytest.raises(TaskInferenceError, match=r"outputs \(8, 2, 3\).*pass task="):
        Learner(Net(), _loader(x, y), loss=nn.MSELoss(), quiet=True).fit(1)  # default metrics need a task


def test_an_ambiguous_batch_stops_the_fit_naming_task():
    x = torch.randn(16, 5)
    learner = Learner(nn.Linear(5, 1), _loader(x, torch.randint(0, 2, (16,))), quiet=True)
    with pytest.raises(TaskInferenceError, match=r"integer targets of shape \(8,\).*pass task="):
        learner.fit(1)
    with pytest.raises(ValueError, match="unknown metric 'acc' for any task"):
        Learner(nn.Linear(5, 1), _loader(x, torch.randn(16)), metrics=["acc"])


def test_inferring_draws_nothing_from_any_random_generator():
    x, y = torch.randn(48, 5), torch.randint(0, 3, (48,))
    runs = []
    for task in (None, "classify"):
        torch.manual_seed(1)
        net = nn.Sequential(nn.Linear(5, 8), nn.Dropout(0.5), nn.Linear(8, 3))
        learner = Learner(net, _loader(x, y, shuffle=True), quiet=True, task=task)
        learner.fine_tune(1, 1e-2, freeze_epochs=1)
        runs.append(torch.cat([p.detach().flatten() for p in net.parameters()]))
    assert torch.equal(runs[0], runs[1])  # the same shuffles, the same dropout masks
