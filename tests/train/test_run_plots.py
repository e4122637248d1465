"""The plots that explain a run's recipe: the per-step training loss the Learner records (each step's own loss,
kept across a resume, so a resumed run's curve is whole), ``loss.png`` with integer epoch ticks and each stage's
start marked, and ``lr.png`` under the plan's layer-group names with the same marks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from torchgraft import graft
from torchgraft.train.callbacks import LambdaCallback
from torchgraft.train.learner import Learner
from torchgraft.train.plots import RunAxis, history_figure, lrs_figure, smoothed, stage_name
from torchgraft.train.runstate import read_state
from torchgraft.tune.groups import layer_groups

sklearn_datasets = pytest.importorskip("sklearn.datasets")
pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    data = sklearn_datasets.load_digits()
    return torch.tensor(data.images, dtype=torch.float32)[:, None] / 16, torch.tensor(data.target)


def _loaders(digits, *, drop_last: bool = False, n: int = 1400) -> tuple[DataLoader, DataLoader]:
    x, y = digits
    train = DataLoader(TensorDataset(x[:n], y[:n]), batch_size=64, shuffle=True, drop_last=drop_last)
    return train, DataLoader(TensorDataset(x[1400:], y[1400:]), batch_size=256)


def _cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )


@pytest.mark.parametrize("accumulate", [1, 3])
def test_loss_history_holds_each_steps_loss(digits, accumulate):
    learner = Learner(_cnn(), *_loaders(digits, drop_last=True, n=600), quiet=True, accumulate=accumulate)
    learner.fit_one_cycle(2, 3e-3)
    per_epoch = 9 // accumulate  # 9 batches of 64; a step sums `accumulate` of them
    assert len(learner.loss_history) == 2 * per_epoch and learner.epoch_steps == [per_epoch, 2 * per_epoch]
    for row, start in zip(learner.history, (0, per_epoch), strict=True):
        steps = learner.loss_history[start : start + per_epoch]
        # batches of one size: the epoch's loss is the mean of its batches', so of its steps' (each their mean)
        assert sum(steps) / len(steps) == pytest.approx(row["train_loss"], rel=1e-6)
    assert learner.loss_history[-1] < learner.loss_history[0]  # it learned: the records are not a constant


def test_loss_history_of_a_run_resumed_mid_stage_equals_the_uninterrupted_one(digits, tmp_path):
    def learner_for(directory: Path, watch: LambdaCallback | None = None) -> Learner:
        torch.manual_seed(0)
        model = graft(_cnn(), 10, cut="6", input_size=(1, 8, 8))
        callbacks = [watch] if watch else []
        loaders = _loaders(digits, n=320)  # 5 steps an epoch
        return Learner(model, *loaders, quiet=True, checkpoint_dir=directory, callbacks=callbacks)

    straight = learner_for(tmp_path / "a")
    straight.fine_tune(2, 1e-2, freeze_epochs=2)

    def stop(learner: Learner) -> None:
        if learner.stage == "unfrozen" and learner.epoch == 1 and learner.step == 5 + 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        learner_for(tmp_path / "b", LambdaCallback(on_step_end=stop)).fine_tune(2, 1e-2, freeze_epochs=2)
    saved = read_state(tmp_path / "b" / "last.pt")
    assert len(saved["loss_history"]) == saved["epoch_steps"][-1] == 15  # three epochs of 5 steps were saved
    resumed = learner_for(tmp_path / "b")
    resumed.fine_tune(2, 1e-2, freeze_epochs=2, resume=tmp_path / "b" / "last.pt")
    assert resumed.epoch_steps == straight.epoch_steps == [5, 10, 15, 20]
    assert resumed.loss_history == straight.loss_history  # the same steps, bit for bit: the curve is whole
    run = RunAxis.of(resumed.history, resumed.epoch_steps, len(resumed.loss_history))
    stages = [stage_name(resumed.history[0]), stage_name(resumed.history[2])]  # frozen, unfrozen (or phase 0, 1)
    assert run.per_step and run.stages == [(0.5, stages[0]), (10.5, stages[1])]

    figure = lrs_figure(resumed.layer_lr_history, history=resumed.history, epoch_steps=resumed.epoch_steps)
    axis = figure.axes[0]
    names = [group.name for group in layer_groups(resumed.model)]
    labels = [text.get_text() for text in axis.get_legend().get_texts()]
    assert [label.split(":")[0] for label in labels] == names and names[-1] == "head"
    assert not any("group" in label for label in labels)  # the plan's names, not optimizer groups
    assert [line.get_xdata()[0] for line in axis.get_lines()[len(names) :]] == [10.5]  # the stage boundary
    assert [t.get_text() for t in axis.child_axes[0].get_xticklabels()] == ["1", "2", "3", "4"]


def _history() -> list[dict]:
    return [
        {"phase": 0, "stage": "frozen", "epoch": 1, "train_loss": 1.0, "valid_loss": 0.9, "accuracy": 0.6},
        {"phase": 1, "stage": "unfrozen", "epoch": 1, "train_loss": 0.7, "valid_loss": 0.6, "accuracy": 0.8},
        {"phase": 1, "stage": "unfrozen", "epoch": 2, "train_loss": 0.5, "valid_loss": 0.5, "accuracy": 0.85},
    ]


def test_loss_png_draws_each_step_and_marks_epochs_and_stages():
    losses = [1.2 - 0.02 * i + (0.1 if i % 2 else -0.1) for i in range(30)]
    figure = history_figure(_history(), step_losses=losses, epoch_steps=[10, 20, 30])
    loss_axis, metric_axis = figure.axes[:2]
    raw, average, valid = loss_axis.get_lines()[:3]
    assert list(raw.get_xdata()) == list(range(1, 31)) and list(raw.get_ydata()) == losses
    assert list(average.get_ydata()) == pytest.approx(smoothed(losses, span=3))
    assert list(valid.get_xdata()) == [10, 20, 30] and list(valid.get_ydata()) == [0.9, 0.6, 0.5]
    for axis in (loss_axis, metric_axis):
        assert [t.get_text() for t in axis.texts] == [" frozen", " unfrozen"]
        boundaries = [line.get_xdata()[0] for line in axis.get_lines() if line.get_linestyle() == "--"]
        assert boundaries == [10.5]  # unfrozen begins after step 10
        top = axis.child_axes[0]
        assert list(top.get_xticks()) == [10, 20, 30]
        assert [t.get_text() for t in top.get_xticklabels()] == ["1", "2", "3"]  # whole epochs, not 1.25
    accuracy = metric_axis.get_lines()[0]
    assert list(accuracy.get_xdata()) == [10, 20, 30] and list(accuracy.get_ydata()) == [0.6, 0.8, 0.85]


def test_loss_png_without_step_records_counts_whole_epochs():
    history = [{k: v for k, v in row.items() if k != "stage"} for row in _history()]
    figure = history_figure(history, step_losses=[0.5] * 7, epoch_steps=[2])  # records that do not fit: epochs
    axis = figure.axes[0]
    assert list(axis.get_xticks()) == [1, 2, 3] and [t.get_text() for t in axis.get_xticklabels()] == ["1", "2", "3"]
    assert [t.get_text() for t in axis.texts] == [" phase 0", " phase 1"]
    assert stage_name({"phase": 2}) == "phase 2" and stage_name({"phase": 0, "stage": "top2"}) == "top2"


def test_smoothed_is_a_bias_corrected_moving_average():
    assert smoothed([2.0, 2.0, 2.0], span=10) == pytest.approx([2.0, 2.0, 2.0])  # no pull towards 0 at the start
    beta = 1 - 2 / 4
    assert smoothed([1.0, 3.0], span=3)[1] == pytest.approx((beta * 1 * (1 - beta) + 3 * (1 - beta)) / (1 - beta**2))
    assert smoothed([1.0, float("nan"), 1.0], span=3) == pytest.approx([1.0, 1.0, 1.0])
