"""Multi-label and regression tasks: losses, whole-set metrics against scikit-learn, decoding, thresholds,
target scaling, and the Learner on real images (sklearn digits)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchgraft import Learner, Multilabel, Regression, TargetError, best_threshold
from torchgraft.tasks import task_from_record
from torchgraft.tasks.metrics import MetricSet

sklearn_metrics = pytest.importorskip("sklearn.metrics")
sklearn_datasets = pytest.importorskip("sklearn.datasets")


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    data = sklearn_datasets.load_digits()
    return torch.tensor(data.images, dtype=torch.float32)[:, None] / 16, torch.tensor(data.target)


def _pairs(digits, n: int, *, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two real digit images side by side (8x16); the target is the set of their classes (1 or 2 labels)."""
    x, y = digits
    generator = torch.Generator().manual_seed(seed)
    left, right = (
        torch.randint(0, len(x), (n,), generator=generator),
        torch.randint(0, len(x), (n,), generator=generator),
    )
    images = torch.cat([x[left], x[right]], dim=3)
    targets = torch.zeros(n, 10)
    targets[torch.arange(n), y[left]] = 1
    targets[torch.arange(n), y[right]] = 1
    return images, targets


def _cnn(n_out: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d((2, 4)),
        nn.Flatten(),
        nn.Linear(512, n_out),
    )


def _batches(outputs: torch.Tensor, targets: torch.Tensor, size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(outputs[i : i + size], targets[i : i + size]) for i in range(0, len(outputs), size)]


def test_multilabel_metrics_equal_scikit_learn_on_the_whole_set():
    generator = torch.Generator().manual_seed(0)
    targets = (torch.rand(90, 6, generator=generator) < 0.3).float()
    targets[:, 0] = 1  # one label present everywhere, as average precision needs a positive per label
    outputs = torch.randn(90, 6, generator=generator) + 2 * targets  # informative logits
    metrics = MetricSet(Multilabel(threshold=0.4), ["f1", "f1_macro", "map", "accuracy"])
    for out, tgt in _batches(outputs, targets, 13):
        metrics.update(out, tgt)
    result = metrics.compute()
    predicted = (outputs.sigmoid() >= 0.4).int().numpy()
    truth = targets.int().numpy()
    assert result["f1"] == pytest.approx(sklearn_metrics.f1_score(truth, predicted, average="micro"), abs=1e-6)
    assert result["f1_macro"] == pytest.approx(sklearn_metrics.f1_score(truth, predicted, average="macro"), abs=1e-6)
    assert result["accuracy"] == pytest.approx((predicted == truth).mean(), abs=1e-6)
    expected_map = sklearn_metrics.average_precision_score(truth, outputs.sigmoid().numpy(), average="macro")
    assert result["map"] == pytest.approx(expected_map, abs=1e-5)


def test_best_threshold_is_the_best_micro_f1_on_the_grid():
    generator = torch.Generator().manual_seed(1)
    targets = (torch.rand(200, 5, generator=generator) < 0.2).float()
    probabilities = (0.25 * targets + 0.6 * torch.rand(200, 5, generator=generator)).clamp(0, 1)
    threshold, f1 = best_threshold(probabilities, targets)
    truth = targets.int().numpy()
    scores = {
        t: sklearn_metrics.f1_score(truth, (probabilities >= t).int().numpy(), average="micro")
        for t in [round(0.05 * i, 2) for i in range(1, 20)]
    }
    assert f1 == pytest.approx(max(scores.values()), abs=1e-9) and scores[threshold] == pytest.approx(f1)
    assert threshold != 0.5  # the signal sits below 0.5: the default threshold would be worse
    assert Multilabel(threshold=threshold).decode(torch.logit(probabilities.clamp(1e-6, 1 - 1e-6)))["labels"].shape == (
        200,
        5,
    )


def test_the_run_chooses_the_threshold_on_half_the_validation_set_and_reports_on_the_other_half():
    generator = torch.Generator().manual_seed(2)
    targets = (torch.rand(301, 5, generator=generator) < 0.2).float()
    probabilities = (0.25 * targets + 0.6 * torch.rand(301, 5, generator=generator)).clamp(1e-6, 1 - 1e-6)
    logits = torch.logit(probabilities)
    task = Multilabel.for_run()
    batches = [(logits[i : i + 64], targets[i : i + 64]) for i in range(0, 301, 64)]  # as the run keeps them
    report = task.report(batches, [f"l{i}" for i in range(5)])
    chosen, _ = best_threshold(probabilities[0::2], targets[0::2])  # every other sample, in validation order
    held = targets[1::2].int().numpy()
    at = lambda t: sklearn_metrics.f1_score(held, (probabilities[1::2] >= t).int().numpy(), average="micro")  # noqa: E731
    assert task.threshold == report.final["threshold"] == chosen and not task.choose_threshold
    assert report.final["f1_at_threshold"] == pytest.approx(at(chosen), abs=1e-9)  # measured where not chosen
    assert report.final["f1_at_0.5"] == pytest.approx(at(0.5), abs=1e-9)
    assert report.final["threshold_samples"] == {"chosen_on": 151, "reported_on": 150}
    assert "not used to choose it" in report.lines[0]
    assert task.report(batches, []).final == {}  # chosen once: a second report keeps it
    few = Multilabel.for_run().report([(logits[:3], targets[:3])], [])
    assert few.final["threshold_samples"] == {"chosen_on": 3, "reported_on": 3} and "too few" in few.lines[0]


def test_multilabel_learner_on_pairs_of_real_digits(digits):
    torch.manual_seed(0)
    train = torch.utils.data.TensorDataset(*_pairs(digits, 1200, seed=0))
    valid = torch.utils.data.TensorDataset(*_pairs(digits, 300, seed=1))
    learner = Learner(
        _cnn(10),
        torch.utils.data.DataLoader(train, batch_size=64, shuffle=True),
        torch.utils.data.DataLoader(valid, batch_size=300),
        task="multilabel",
        metrics=["f1", "map", "accuracy"],
        quiet=True,
    )
    history = learner.fit_one_cycle(10, 1e-2)
    assert history[-1]["f1"] > 0.75 and history[-1]["map"] > 0.85  # chance F1 is about 0.3


def test_regression_metrics_in_units_equal_scikit_learn():
    generator = torch.Generator().manual_seed(2)
    targets = 50 + 10 * torch.randn(77, 2, generator=generator)
    task = Regression(mean=[50.0, 50.0], std=[10.0, 10.0])
    outputs = (targets - 50) / 10 + 0.3 * torch.randn(77, 2, generator=generator)  # standardised predictions
    metrics = MetricSet(task, ["mae", "rmse", "r2"])
    for out, tgt in _batches(outputs, targets, 10):
        metrics.update(out, tgt)
    result = metrics.compute()
    values = (outputs * 10 + 50).numpy()
    truth = targets.numpy()
    assert result["mae"] == pytest.approx(sklearn_metrics.mean_absolute_error(truth, values), rel=1e-5)
    assert result["rmse"] == pytest.approx(sklearn_metrics.mean_squared_error(truth, values) ** 0.5, rel=1e-5)
    assert result["r2"] == pytest.approx(sklearn_metrics.r2_score(truth, values), rel=1e-5)
    assert not metrics.higher_is_better("mae") and metrics.higher_is_better("r2")


def test_regression_learner_predicts_the_ink_of_real_digits(digits, tmp_path):
    x, _ = digits
    ink = x.sum(dim=(1, 2, 3))  # how much of the 8x8 image is drawn, in pixel units (about 10 to 45)
    task = Regression().fit_scale(ink[:1400])
    torch.manual_seed(0)
    learner = Learner(
        _cnn(1),
        torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[:1400], ink[:1400]), batch_size=64, shuffle=True),
        torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[1400:], ink[1400:]), batch_size=400),
        task=task,
        checkpoint_dir=tmp_path,
        quiet=True,
    )
    history = learner.fit_one_cycle(6, 3e-3)
    baseline = (ink[1400:] - ink[:1400].mean()).abs().mean().item()  # always predicting the training mean
    assert history[-1]["mae"] < 0.25 * baseline and history[-1]["r2"] > 0.9
    best = min(history, key=lambda r: r["mae"])["epoch"]  # best.pt follows mae downwards
    assert torch.load(tmp_path / "best.pt", weights_only=True)["epoch"] == best
    rebuilt = task_from_record(task.record())
    assert torch.equal(rebuilt.mean, task.mean) and torch.equal(rebuilt.std, task.std)


@pytest.mark.parametrize("loss", ["mse", "l1", "huber"])
def test_the_loss_is_on_the_standardised_scale_with_and_without_y_range(loss):
    generator = torch.Generator().manual_seed(3)
    targets = 400 + 21.8 * torch.randn(64, generator=generator)  # raw units: an MSE in units would be ~475
    predictions = targets + 15 * torch.randn(64, generator=generator)  # the same predictions in units, both runs
    standardised = Regression.for_run(y_range=None)
    standardised.loss_name = loss
    standardised.fit_targets(targets.tolist())
    bounded = Regression.for_run(y_range=(300.0, 500.0))
    bounded.loss_name = loss
    bounded.fit_targets(targets.tolist())
    assert bounded.mean.tolist() == [0.0] and bounded.std.tolist() == [1.0]  # the head's outputs stay in units
    assert bounded.loss_scale is not None and bounded.loss_scale.item() == pytest.approx(targets.std().item())
    outputs_standardised = ((predictions - standardised.mean) / standardised.std)[:, None]
    a = standardised.loss(outputs_standardised, targets)
    b = bounded.loss(predictions[:, None], targets)
    assert b.item() == pytest.approx(a.item(), rel=1e-4)
    assert 0.1 < a.item() < 2  # not ~475: the raw units never reach the loss
    assert bounded.decode(predictions[:, None])["values"][:, 0].tolist() == predictions.tolist()
    rebuilt = task_from_record(bounded.record())
    assert torch.equal(rebuilt.loss_scale, bounded.loss_scale)  # type: ignore[attr-defined]
    assert rebuilt.loss(predictions[:, None], targets).item() == pytest.approx(b.item())


def test_the_loss_scale_is_stated():
    targets = torch.tensor([10.0, 20.0, 30.0, 40.0])
    assert Regression().fit_scale(targets).loss_description() == (
        "MSE on standardised targets (std 12.91; 1.0 = always predicting the mean)"
    )
    bounded = Regression.for_run(y_range=(0.0, 50.0)).fit_targets(targets.tolist())
    assert bounded.loss_description() == "MSE on standardised targets (std 12.91; 1.0 = always predicting the mean)"
    assert Regression(loss="l1").loss_description() == "L1 in the targets' units (not standardised)"


def test_targets_of_the_wrong_kind_are_refused():
    with pytest.raises(TargetError, match=r"class indices of shape \(4,\).*task='classify'"):
        Multilabel().check(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]))
    with pytest.raises(TargetError, match="must be 0 or 1"):
        Multilabel().check(torch.randn(4, 3), torch.rand(4, 3))
    with pytest.raises(TargetError, match=r"integer targets.*task='classify'"):
        Regression().check(torch.randn(4, 1), torch.tensor([0, 1, 2, 0]))
    with pytest.raises(TargetError, match=r"outputs \(4, 1\) and targets \(4, 2\) do not match"):
        Regression().check(torch.randn(4, 1), torch.randn(4, 2))
    with pytest.raises(ValueError, match="unknown loss 'mape'"):
        Regression(loss="mape")  # type: ignore[arg-type]
