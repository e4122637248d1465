"""The report after training reads the exported epoch's validation outputs, kept as that epoch validated (no
second pass): the kept batches give the same report as a fresh pass of the final model over the validation
set, for each built-in task that reports (confusion matrix, multi-label threshold, per-class IoU); the epoch kept
is the one ``best.pt`` holds; epochs whose validation is not the model's own forward are not kept, with why."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from torchgraft import Learner, Multilabel, Segmentation, freeze, graft
from torchgraft.app.run import validation_batches
from torchgraft.train.callbacks import Callback


def _images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 8, 8, generator=generator)
    return x, (x.mean(dim=(1, 2, 3)) > 0).long() + (x[:, 0].mean(dim=(1, 2)) > 0).long()  # 3 classes


def _loaders(x: torch.Tensor, y: torch.Tensor) -> tuple[DataLoader, DataLoader]:
    train = DataLoader(TensorDataset(x[:96], y[:96]), batch_size=16, shuffle=True)
    return train, DataLoader(TensorDataset(x[96:], y[96:]), batch_size=20)  # 64 valid: the last batch is short


def _classifier(outputs: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, outputs)
    )


def _fresh(learner: Learner, classes: list[str]) -> object:
    batches = validation_batches(learner.model, learner.full_valid_dl, device=learner.device, task=learner.task)
    return learner.task.report(batches, classes)


class Tamper(Callback):
    """After the second epoch, the head predicts one class whatever the input: the best epoch (the one kept and
    exported) is an earlier one."""

    def on_epoch_begin(self, learner) -> None:
        if len(learner.history) == 2:
            with torch.no_grad():
                head = learner.model[-1]
                head.weight.zero_()
                head.bias.copy_(torch.tensor([0.0, 0.0, 30.0]))


@pytest.mark.parametrize("tamper", [False, True])
def test_classification_report_from_the_kept_outputs_equals_a_fresh_pass(tmp_path, tamper):
    learner = Learner(
        _classifier(3), *_loaders(*_images(160, 0)), checkpoint_dir=tmp_path, callbacks=[Tamper()] if tamper else ()
    )
    learner.fit(3, 3e-2)
    best = learner.load_best()
    index = next(i for i, r in enumerate(learner.history) if r["epoch"] == best["epoch"])
    assert index == learner.best_epoch["index"]
    assert (index < len(learner.history) - 1) == tamper  # tampered: an earlier epoch is the one exported
    batches, why = learner.kept.outputs_of(index)
    assert batches is not None, why
    assert sum(len(t) for _, t in batches) == 64
    classes = ["a", "b", "c"]
    reused = learner.task.report(batches, classes)
    assert reused.confusion == _fresh(learner, classes).confusion
    assert sum(map(sum, reused.confusion)) == 64
    assert learner.kept.outputs_of(len(learner.history) - 1)[0] is None or index == len(learner.history) - 1


def test_multilabel_threshold_from_the_kept_outputs_equals_a_fresh_pass(tmp_path):
    x, y = _images(160, 1)
    labels = torch.stack([y == 0, y == 1, y >= 1, x[:, 1].mean(dim=(1, 2)) > 0], dim=1).float()
    learner = Learner(
        _classifier(4), *_loaders(x, labels), task=Multilabel(choose_threshold=True), checkpoint_dir=tmp_path
    )
    learner.fit(2, 3e-2)
    best = learner.load_best()
    batches, why = learner.kept.outputs_of(learner.best_epoch["index"])
    assert batches is not None and best["epoch"] == learner.history[learner.best_epoch["index"]]["epoch"], why
    classes = ["p", "q", "r", "s"]
    reused = learner.task.report(batches, classes)
    learner.task.choose_threshold = True  # the report chose and fixed it: choose again, from a fresh pass
    assert reused.final == _fresh(learner, classes).final
    assert "threshold" in reused.final


class TinySegmenter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def test_segmentation_keeps_one_byte_labels_and_reports_the_same_iou(tmp_path):
    x, _ = _images(160, 2)
    masks = (x[:, 0] > 0.5).long() + (x[:, 1] > 0.5).long()  # (N, 8, 8) in 0..2
    masks[:, 0, 0] = 255  # ignored pixels stay ignored in the kept masks
    learner = Learner(TinySegmenter(), *_loaders(x, masks), task=Segmentation(), checkpoint_dir=tmp_path)
    learner.fit(2, 3e-2)
    learner.load_best()
    batches, why = learner.kept.outputs_of(learner.best_epoch["index"])
    assert batches is not None, why
    assert all(o.dtype == torch.uint8 and o.shape == t.shape == (len(t), 8, 8) for o, t in batches)
    classes = ["bg", "one", "two"]
    assert learner.task.report(batches, classes).final == _fresh(learner, classes).final


@pytest.mark.parametrize("dtype", [None, torch.float32])
def test_validation_on_cached_features_is_kept_only_when_they_are_stored_exactly(tmp_path, dtype):
    model = graft(_classifier(3), 3, input_size=(3, 8, 8))
    freeze(model)
    learner = Learner(
        model,
        *_loaders(*_images(160, 4)),
        checkpoint_dir=tmp_path / "run",
        cache_features=True,
        cache_dir=tmp_path / "cache",
        cache_dtype=dtype,
    )
    learner.fit(2, 3e-2)
    learner.load_best()
    batches, why = learner.kept.outputs_of(learner.best_epoch["index"])
    if dtype is None:  # fp16 features: the outputs are not the model's own, a fresh pass is needed
        assert batches is None and why.startswith("validated on cached features stored at reduced precision")
        return
    assert batches is not None, why
    classes = ["a", "b", "c"]
    assert learner.task.report(batches, classes).confusion == _fresh(learner, classes).confusion


def test_validation_under_mixed_precision_is_not_kept_and_says_why(tmp_path):
    loaders = _loaders(*_images(160, 3))
    learner = Learner(_classifier(3), *loaders, amp="bf16", checkpoint_dir=tmp_path)
    learner.fit(1, 1e-2)
    batches, why = learner.kept.outputs_of(0)
    assert batches is None and why == "validated under mixed precision"


@pytest.mark.slow  # two torchrun processes: ~25 s of CPU
def test_under_torchrun_rank_0_keeps_the_whole_validation_set_in_order(tmp_path):
    script = Path(__file__).parents[1] / "scripts" / "ddp_kept.py"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)]
    done = subprocess.run([*command, str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "kept.json").read_text())
    assert result["samples"] == 70 and result["targets_in_order"] and result["outputs_close"]
    assert result["kept"] == result["fresh"]
