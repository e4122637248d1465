"""What a run says about its data before it trains, and ``--balance``: the class-imbalance warning with the
counts, balanced class weights in the loss (exact under data parallelism), and the announcement of a
validation split made at random — on real Fashion-MNIST images and real texts."""

from __future__ import annotations

import csv
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from torchgraft.app.prepare import make_task, report, split_line
from torchgraft.app.settings import TrainSettings
from torchgraft.cli.main import main
from torchgraft.data.folders import image_data
from torchgraft.data.samples import DataError
from torchgraft.data.texts import text_data
from torchgraft.tasks import Classification, task_from_record
from torchgraft.tasks.balance import class_counts, imbalance_warning

COUNTS = {"bag": 30, "sneaker": 8, "trouser": 30, "tshirt": 30}  # sneaker: under a third of the median (30)


def _fashion() -> tuple[np.ndarray, np.ndarray, list[str]]:
    with resources.files("torchgraft.demo").joinpath("fashion_mnist.npz").open("rb") as handle:
        arrays = dict(np.load(handle, allow_pickle=False))
    return arrays["train_images"], arrays["train_labels"], [str(c) for c in arrays["classes"]]


@pytest.fixture(scope="module")
def imbalanced(tmp_path_factory) -> Path:
    """Class folders of real Fashion-MNIST items: 30 bags, trousers and T-shirts, 8 sneakers (as 28x28 PNGs)."""
    images, labels, classes = _fashion()
    wanted = {"bag": "bag", "sneaker": "sneaker", "trouser": "trouser", "tshirt": "tshirt_top"}
    root = tmp_path_factory.mktemp("imbalanced")
    for folder, name in wanted.items():
        (root / folder).mkdir()
        picked = np.flatnonzero(labels == classes.index(name))[: COUNTS[folder]]
        for i in picked:
            Image.fromarray(images[i]).convert("RGB").save(root / folder / f"{i}.png")
    return root


def _said(data, settings: TrainSettings) -> list[str]:
    lines: list[str] = []
    report(data, settings, lines.append)
    return lines


def test_a_small_class_is_warned_about_with_the_counts(imbalanced):
    data = image_data(imbalanced, valid_pct=0.25, manifest=False)
    lines = _said(data, TrainSettings())
    warning = next(line for line in lines if "class imbalance" in line)
    train = class_counts((t for _, t in data.train), 4)
    assert train == [22, 6, 22, 22]  # 25% of each class to validation
    assert warning == (
        "  warning: class imbalance: 'sneaker' has 6 training images, the median class 22 (under a third of it); "
        "such a class is rarely predicted. --balance weighs the loss by class (balance=True), or add images. "
        "Counts: bag 22, sneaker 6, trouser 22, tshirt 22"
    )
    assert not any("class imbalance" in line for line in _said(data, TrainSettings(balance=True)))
    assert imbalance_warning([22, 8, 22, 22], data.classes) == ""  # 8 is not under a third of 22: no warning


def test_balance_weighs_each_class_the_same_and_stays_exact_across_batches(imbalanced):
    data = image_data(imbalanced, valid_pct=0.25, manifest=False)
    task = make_task(data, TrainSettings(balance=True))
    assert isinstance(task, Classification) and task.class_weights is not None
    counts = torch.tensor(class_counts((t for _, t in data.train), 4), dtype=torch.float32)
    expected = counts.sum() / (4 * counts)  # N / (C * n_c)
    torch.testing.assert_close(task.class_weights, expected)
    assert (task.class_weights * counts).tolist() == pytest.approx([counts.sum().item() / 4] * 4)  # every class: N / C
    assert ((task.class_weights * counts).sum() / counts.sum()).item() == pytest.approx(1.0)  # mean weight 1
    assert make_task(data, TrainSettings()).class_weights is None  # type: ignore[attr-defined]

    generator = torch.Generator().manual_seed(0)
    outputs, targets = torch.randn(16, 4, generator=generator), torch.randint(0, 4, (16,), generator=generator)
    each = torch.nn.functional.cross_entropy(outputs, targets, reduction="none") * task.class_weights[targets]
    assert task.loss(outputs, targets).item() == pytest.approx(each.mean().item(), rel=1e-6)
    # two processes at batch 8 average their losses (DDP averages gradients): that equals one process at 16
    halves = (task.loss(outputs[:8], targets[:8]) + task.loss(outputs[8:], targets[8:])) / 2
    assert halves.item() == pytest.approx(task.loss(outputs, targets).item(), rel=1e-6)
    assert "weights 0.818, 3, 0.818, 0.818" in task.loss_description()
    rebuilt = task_from_record(task.record())
    torch.testing.assert_close(rebuilt.class_weights, task.class_weights)  # type: ignore[attr-defined]


def test_balance_is_refused_for_tasks_without_classes(tmp_path):
    table = tmp_path / "values.csv"
    with table.open("w", newline="") as handle:
        csv.writer(handle).writerows([["text", "value"], *[[f"article {i} about prices", f"{i}.5"] for i in range(10)]])
    data = text_data(table)
    with pytest.raises(ValueError, match="--balance weighs the classes of single-label classification; this run's"):
        make_task(data, TrainSettings(balance=True))


def test_a_random_validation_split_is_announced_and_a_given_one_is_not(imbalanced, tmp_path):
    data = image_data(imbalanced, valid_pct=0.25, manifest=False)
    assert data.split_off == 0.25
    line = split_line(data, TrainSettings(valid_pct=0.25, seed=3))
    assert line == (
        "validation: 25% of each class split off at random with seed 3 (72 train / 26 valid); --valid-pct and "
        "--seed change it, a valid/ folder (or a train/valid column) fixes it"
    )
    assert line in _said(data, TrainSettings(valid_pct=0.25, seed=3))
    given = tmp_path / "given"
    for split, names in (("train", ["0.png", "1.png"]), ("valid", ["2.png"])):
        for name in names:
            (given / split / "bag").mkdir(parents=True, exist_ok=True)
            Image.open(next((imbalanced / "bag").iterdir())).save(given / split / "bag" / name)
    assert image_data(given, manifest=False).split_off is None
    assert split_line(image_data(given, manifest=False), TrainSettings()) == ""
    table = tmp_path / "texts.csv"
    rows = [["text", "label", "split"], *[[f"a text about topic {i % 2}", f"t{i % 2}", "train"] for i in range(8)]]
    rows += [["a text about topic 0", "t0", "valid"], ["a text about topic 1", "t1", "valid"]]
    with table.open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    assert text_data(table).split_off is None
    unsplit = tmp_path / "unsplit.csv"
    with unsplit.open("w", newline="") as handle:
        csv.writer(handle).writerows([row[:2] for row in rows])
    assert text_data(unsplit, valid_pct=0.2).split_off == 0.2


def test_the_cli_announces_the_split_warns_and_balances(imbalanced, tmp_path, capsys):
    pytest.importorskip("timm")
    model = ["--model", "timm/efficientnet_lite0", "--weights", "none", "--size", "32", "--workers", "0"]
    args = ["train", str(imbalanced), *model, "--epochs", "1", "--freeze-epochs", "0", "--augment", "none"]
    assert main([*args, "--out", str(tmp_path / "plain")]) == 0
    out = capsys.readouterr().out
    assert "warning: class imbalance: 'sneaker' has 6 training images, the median class 24" in out
    assert "validation: 20% of each class split off at random with seed 0 (" in out
    assert "loss: cross-entropy weighted" not in out
    assert main([*args, "--balance", "--out", str(tmp_path / "balanced")]) == 0
    out = capsys.readouterr().out
    assert "class imbalance" not in out and "loss: cross-entropy weighted by class (--balance" in out
    assert "loss: cross-entropy weighted by class" in (tmp_path / "balanced" / "plan.txt").read_text()


def test_whole_number_targets_with_a_y_range_are_regression_not_classes(tmp_path):
    """``--y-range`` without ``--task``: the README's ``ages.csv`` of whole-number ages reads as regression
    values (before, each age was a class and an age seen only in validation was refused)."""
    from torchgraft.app.inputs import read_options

    images, _, _ = _fashion()
    rows = ["path,age,split"]
    for i in range(12):
        Image.fromarray(images[i]).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,{20 + 3 * i},{'valid' if i % 4 == 0 else 'train'}")  # every age once
    (tmp_path / "ages.csv").write_text("\n".join(rows) + "\n")
    settings = TrainSettings(y_col="age", y_range=(0.0, 100.0))
    data = image_data(tmp_path / "ages.csv", **read_options(settings))
    assert data.task == "regression" and data.classes == ["age"] and len(data.valid) == 3
    assert sorted(float(target[0]) for _, target in data.valid) == [20.0, 32.0, 44.0]
    with pytest.raises(DataError, match="have no training images"):  # without it: whole numbers are classes
        image_data(tmp_path / "ages.csv", **read_options(TrainSettings(y_col="age")))
