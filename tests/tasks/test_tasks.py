"""The Task contract: batches of any shape, whole-set metrics, targets of the wrong kind refused."""

from __future__ import annotations

import pytest
import torch
import torchmetrics
from torch import nn

from torchgraft import Learner, TargetError, accuracy, get_task
from torchgraft.tasks import Classification
from torchgraft.tasks.batch import BatchError, call_model, move, output_tensor, split_batch
from torchgraft.tasks.metrics import MetricSet


def test_split_batch_tuples_dicts_and_batch_encodings():
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    assert split_batch((x, y))[0] is x and split_batch([x, y, "extra"])[1] is y
    inputs, targets = split_batch({"input_ids": x, "attention_mask": y, "labels": y})
    assert set(inputs) == {"input_ids", "attention_mask"} and targets is y
    inputs, targets = split_batch({"pixels": x, "target": y}, target_key="target")
    assert set(inputs) == {"pixels"} and targets is y
    transformers = pytest.importorskip("transformers")
    encoding = transformers.BatchEncoding({"input_ids": x, "labels": y})
    assert split_batch(encoding)[1] is y
    with pytest.raises(BatchError, match=r"no target key 'labels'.*target_key="):
        split_batch({"input_ids": x})
    with pytest.raises(BatchError, match="need \\(inputs, targets\\)"):
        split_batch((x,))
    with pytest.raises(BatchError, match="got a Tensor"):
        split_batch(x)


def test_move_and_call_reach_nested_tensors_and_keyword_arguments():
    batch = {"a": torch.zeros(2, 3, 4, 4), "b": [torch.ones(2)], "c": "text"}
    moved = move(batch, torch.device("cpu"), channels_last=True)
    assert moved["a"].is_contiguous(memory_format=torch.channels_last) and moved["c"] == "text"

    class TwoInputs(nn.Module):
        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"loss": None, "logits": input_ids * attention_mask}

    out = call_model(TwoInputs(), {"input_ids": torch.ones(2), "attention_mask": torch.tensor([1.0, 0.0])})
    assert torch.equal(output_tensor(out), torch.tensor([1.0, 0.0]))
    assert torch.equal(output_tensor((torch.ones(1), torch.zeros(1))), torch.ones(1))


def _batches(outputs: torch.Tensor, targets: torch.Tensor, sizes: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    pieces, start = [], 0
    for size in sizes:
        pieces.append((outputs[start : start + size], targets[start : start + size]))
        start += size
    return pieces


@pytest.mark.parametrize("name", ["accuracy", "balanced_accuracy", "f1", "precision", "recall", "top3", "error_rate"])
def test_metrics_accumulated_equal_metrics_on_the_concatenated_outputs(name):
    generator = torch.Generator().manual_seed(0)
    outputs = torch.randn(103, 6, generator=generator)
    targets = torch.randint(0, 6, (103,), generator=generator)
    targets[:30] = 2  # unbalanced classes: per-batch means of F1 differ from the whole-set value
    metrics = MetricSet(Classification(), [name])
    for out, tgt in _batches(outputs, targets, [7, 50, 1, 33, 12]):
        metrics.update(out, tgt)
    whole = MetricSet(Classification(), [name])
    whole.update(outputs, targets)
    assert metrics.compute()[name] == pytest.approx(whole.compute()[name], abs=1e-6)
    if name == "accuracy":
        assert metrics.compute()[name] == pytest.approx((outputs.argmax(1) == targets).float().mean().item())
    if name == "f1":  # and not the mean of per-batch F1 values
        per_batch = [
            torchmetrics.functional.f1_score(o, t, task="multiclass", num_classes=6, average="macro")
            for o, t in _batches(outputs, targets, [7, 50, 1, 33, 12])
        ]
        assert abs(float(torch.stack(per_batch).mean()) - metrics.compute()[name]) > 1e-3


def test_accuracy_refuses_multilabel_and_regression_targets():
    outputs = torch.randn(4, 4)
    multilabel = torch.tensor([[0, 1, 0, 1]] * 4).float()  # batch size == classes: once silently "worked"
    with pytest.raises(TargetError, match=r"0/1 targets of shape \(4, 4\) \(multi-label\?\)"):
        accuracy(outputs, multilabel)
    with pytest.raises(TargetError, match=r"float targets of shape \(4,\) \(regression\?\)"):
        accuracy(outputs, torch.randn(4))
    with pytest.raises(TargetError, match=r"must lie in \[0, 4\), got values from 0 to 7"):
        accuracy(outputs, torch.tensor([0, 1, 2, 7]))
    metrics = MetricSet(Classification(), ["accuracy"])
    with pytest.raises(TargetError, match="multi-label"):
        metrics.update(outputs, multilabel)


def test_learner_refuses_regression_targets_with_the_default_metric():
    x, y = torch.randn(16, 5), torch.randn(16)  # a regression target
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    learner = Learner(nn.Linear(5, 3), loader, loader, quiet=True)
    with pytest.raises(TargetError, match=r"regression\?"):
        learner.fit(1)


def test_soft_labels_train_but_multilabel_rows_are_refused():
    x = torch.randn(16, 5)
    soft = torch.softmax(torch.randn(16, 3), dim=1)  # mixup-style class probabilities
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, soft), batch_size=8)
    Learner(nn.Linear(5, 3), loader, quiet=True, metrics=None).fit(1)
    multilabel = torch.randint(0, 2, (16, 3)).float()
    multilabel[:, 0] = 1  # at least one label per row, several in most
    multilabel[0] = torch.tensor([1.0, 1.0, 0.0])
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, multilabel), batch_size=8)
    with pytest.raises(TargetError, match="multi-label 0/1 rows"):  # with no task= they are multi-label
        Learner(nn.Linear(5, 3), loader, quiet=True, metrics=None, task="classify").fit(1)


def test_metric_names_are_checked_against_the_task():
    with pytest.raises(ValueError, match=r"unknown metric 'miou' for the classify task. Choose from accuracy"):
        MetricSet(Classification(), ["miou"])
    with pytest.raises(ValueError, match="unknown task 'segmentation'"):
        get_task("segmentation")
    with pytest.raises(TypeError, match="is not a metric"):
        MetricSet(Classification(), [3])


def test_the_metrics_the_readme_names_are_the_ones_runs_write():
    import re
    from pathlib import Path

    from torchgraft.tasks import Multilabel, Regression, Segmentation

    readme = " ".join((Path(__file__).parents[2] / "README.md").read_text().split())
    passages = {
        Regression: r"targets standardised on the training set, metrics (`\w+`(?:/`\w+`)*) in the targets'",
        Multilabel: r"binary cross-entropy, metrics (`\w+`(?: micro)?(?:/`\w+`)*)",
        Segmentation: r"reports (`\w+`(?:, `\w+`)*) from one confusion matrix",
    }
    for task, pattern in passages.items():
        found = re.search(pattern, readme)
        assert found, f"README lost the {task.name} metrics passage"
        named = re.findall(r"`(\w+)`", found.group(1))
        assert set(named) == set(task.default_metrics), (task.name, named)  # a run writes every one, no more
