"""The segmentation task: metrics from one confusion matrix over the whole set (checked against a matrix counted
by hand), ignore_index left out of loss and metrics, the Dice loss, and mask errors that name the fix."""

from __future__ import annotations

import pytest
import torch

from torchgraft.tasks import Segmentation, get_task, task_from_record
from torchgraft.tasks.metrics import TargetError
from torchgraft.tasks.segment import ConfusionMatrix, per_class_dice, per_class_iou


def _logits(labels: torch.Tensor, classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(labels, classes).permute(0, 3, 1, 2).float() * 5


def test_metrics_equal_a_confusion_matrix_counted_by_hand():
    target = torch.tensor([[[0, 0, 1, 1], [2, 2, 255, 1]]])  # one ignored pixel
    predicted = torch.tensor([[[0, 1, 1, 1], [2, 0, 2, 2]]])
    # rows: target, columns: prediction; the ignored pixel (predicted 2) is not counted
    by_hand = torch.tensor([[1, 1, 0], [0, 2, 1], [1, 0, 1]])
    metrics = {name: ConfusionMatrix(3, summary=name) for name in ("miou", "dice", "pixel_accuracy")}
    for half in (slice(0, 2), slice(2, 4)):  # accumulated over two batches, not averaged per batch
        for metric in metrics.values():
            metric.update(_logits(predicted[..., half], 3), target[..., half])
    assert torch.equal(metrics["miou"].matrix, by_hand)
    iou = [1 / (2 + 2 - 1), 2 / (3 + 3 - 2), 1 / (2 + 2 - 1)]  # TP / (row + column - TP)
    dice = [2 * 1 / (2 + 2), 2 * 2 / (3 + 3), 2 * 1 / (2 + 2)]
    torch.testing.assert_close(per_class_iou(by_hand), torch.tensor(iou, dtype=torch.float64))
    torch.testing.assert_close(per_class_dice(by_hand), torch.tensor(dice, dtype=torch.float64))
    assert metrics["miou"].compute().item() == pytest.approx(sum(iou) / 3)
    assert metrics["dice"].compute().item() == pytest.approx(sum(dice) / 3)
    assert metrics["pixel_accuracy"].compute().item() == pytest.approx(4 / 7)


def test_absent_classes_are_left_out_of_the_mean():
    metric = ConfusionMatrix(4, summary="miou")
    labels = torch.tensor([[[0, 0], [1, 1]]])
    metric.update(_logits(labels, 4), labels)  # classes 2 and 3 occur nowhere
    assert metric.compute().item() == 1.0
    assert torch.isnan(per_class_iou(metric.matrix)[2:]).all()


def test_loss_ignores_the_ignore_index_and_adds_dice():
    task = Segmentation()
    logits = torch.randn(2, 3, 4, 4)
    target = torch.randint(0, 3, (2, 4, 4))
    ignored = target.clone()
    ignored[:, 0] = 255
    changed = logits.clone()
    changed[:, :, 0] = 100.0  # the ignored row's logits do not matter
    assert task.loss(logits, ignored).item() == pytest.approx(task.loss(changed, ignored).item())
    perfect = _logits(target, 3) * 10
    with_dice = Segmentation(dice_weight=1.0)
    assert with_dice.loss(perfect, target).item() < 0.01 < with_dice.loss(logits, target).item()
    assert with_dice.loss(logits, target) > task.loss(logits, target)


def test_mask_errors_name_the_fix():
    task = Segmentation()
    outputs = torch.randn(2, 3, 8, 8)
    with pytest.raises(TargetError, match=r"masks must be \(batch, height, width\) = \(2, 8, 8\)"):
        task.check(outputs, torch.zeros(2, 4, 4, dtype=torch.long))
    with pytest.raises(TargetError, match="mask values from 0 to 7 but the model has 3 classes"):
        task.check(outputs, torch.tensor([0, 7]).repeat(64).view(2, 8, 8))
    with pytest.raises(TargetError, match="float masks"):
        task.check(outputs, torch.zeros(2, 8, 8))
    with pytest.raises(TargetError, match="graft_dense"):
        task.check(torch.randn(2, 3), torch.zeros(2, dtype=torch.long))
    task.check(outputs, torch.full((2, 8, 8), 255))  # all ignored is fine


def test_the_task_round_trips_through_its_record():
    task = get_task("segment", ignore_index=0, dice_weight=0.5)
    again = task_from_record(task.record())
    assert isinstance(again, Segmentation) and again.ignore_index == 0 and again.dice_weight == 0.5
    decoded = task.decode(torch.randn(1, 3, 2, 2))
    assert decoded["labels"].shape == (1, 2, 2) and torch.allclose(decoded["probabilities"].sum(1), torch.ones(1, 2, 2))
