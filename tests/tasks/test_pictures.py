"""Each task's pictures and per-class table, from validation outputs as a run keeps them: the files are real PNGs
of a sane size, what they show is right where it can be read back (the confusion matrix's counts, the worst
samples really the highest-loss ones, in order, with their own files; the threshold marked; the scatter's points),
and ``per_class.csv`` holds torchmetrics' per-class values. The drawn figures are read back by a spy on
:func:`torchgraft.tasks.pictures.save_figure` that records each figure before the real function writes it."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics import classification as tmc
from torchmetrics import regression as tmr

from torchgraft.app.pictures import loader_order, write_per_class, write_pictures
from torchgraft.data.tokens import LengthGroupedBatches
from torchgraft.tasks import Classification, Multilabel, Regression, Segmentation
from torchgraft.tasks import pictures as pictures_module
from torchgraft.tasks.pictures import ValidationInputs

pytest.importorskip("matplotlib")
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def drawn(monkeypatch) -> dict[str, Any]:
    """Every figure a task saves, by file name: its axes' titles, texts, lines and scatter points."""
    seen: dict[str, Any] = {}
    real = pictures_module.save_figure

    def spy(figure: Any, path: str | Path) -> Path:
        axes = figure.axes
        seen[Path(path).name] = {
            "titles": [axis.get_title() for axis in axes],
            "texts": [[t.get_text() for t in axis.texts] for axis in axes],
            "lines": [[line.get_label() for line in axis.get_lines()] for axis in axes],
            "points": [[np.asarray(c.get_offsets()).copy() for c in axis.collections] for axis in axes],
        }
        return real(figure, path)

    monkeypatch.setattr(pictures_module, "save_figure", spy)
    return seen


def _batches(outputs: torch.Tensor, targets: torch.Tensor, size: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(outputs[i : i + size], targets[i : i + size]) for i in range(0, len(outputs), size)]


def _images(folder: Path, n: int) -> list[str]:
    """``n`` small distinct RGB files, as a folder of validation images."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        pixels = np.full((20, 24, 3), (10 * i % 250, 80, 200 - 5 * i % 200), dtype=np.uint8)
        pixels[i % 20, :, :] = 255
        paths.append(str(folder / f"{i:02d}.png"))
        Image.fromarray(pixels).save(paths[-1])
    return paths


def _load(path: str) -> Image.Image:
    return Image.open(path).convert("RGB")


def _is_png(path: Path, *, wider_than: int = 200) -> None:
    assert path.read_bytes()[:8] == PNG, path
    image = Image.open(path)
    assert image.size[0] > wider_than and image.size[1] > 100, (path, image.size)
    assert np.asarray(image.convert("L")).std() > 1, f"{path} is blank"


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def _classification(n: int = 30, classes: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    targets = torch.randint(0, classes, (n,), generator=generator)
    outputs = torch.randn(n, classes, generator=generator) + 1.5 * torch.nn.functional.one_hot(targets, classes)
    return outputs, targets


def test_classification_confusion_worst_images_and_per_class(tmp_path, drawn):
    outputs, targets = _classification()
    classes = ["ant", "bee", "cat", "dog"]
    paths = _images(tmp_path / "valid", len(targets))
    task = Classification()
    batches = _batches(outputs, targets)
    inputs = ValidationInputs("image", paths, load=_load)
    files = task.pictures(batches, classes, tmp_path / "pictures", inputs=inputs, count=5)
    assert [f.name for f in files] == ["confusion.png", "worst.png"]
    for path in files:
        _is_png(path)
    counts = torch.zeros(4, 4, dtype=torch.long)
    for t, p in zip(targets.tolist(), outputs.argmax(1).tolist(), strict=True):
        counts[t, p] += 1
    assert drawn["confusion.png"]["texts"][0] == [str(int(c)) for c in counts.flatten()]  # row by row, every cell
    losses = torch.nn.functional.cross_entropy(outputs, targets, reduction="none")
    expected = losses.argsort(descending=True)[:5].tolist()
    titles = [t for t in drawn["worst.png"]["titles"] if t]
    assert [title.split("\n")[0] for title in titles] == [Path(paths[i]).name for i in expected]
    for title, i in zip(titles, expected, strict=True):
        assert f"true {classes[int(targets[i])]}" in title
        assert f"predicted {classes[int(outputs[i].argmax())]}" in title and f"loss {float(losses[i]):.2f}" in title

    table = write_per_class(task.per_class(batches, classes), tmp_path / "per_class.csv")
    rows = _read_csv(table)
    assert [r["class"] for r in rows] == classes and [int(r["support"]) for r in rows] == counts.sum(1).tolist()
    for name, metric in (("precision", tmc.MulticlassPrecision), ("recall", tmc.MulticlassRecall)):
        reference = metric(4, average=None)(outputs, targets)
        assert [float(r[name]) for r in rows] == pytest.approx(reference.tolist(), abs=1e-6)
    reference = tmc.MulticlassF1Score(4, average=None)(outputs, targets)
    assert [float(r["f1"]) for r in rows] == pytest.approx(reference.tolist(), abs=1e-6)


def test_classification_pictures_without_inputs_and_on_texts(tmp_path):
    outputs, targets = _classification(n=12, classes=3)
    classes = ["a", "b", "c"]
    task = Classification()
    plain = task.pictures(_batches(outputs, targets), classes, tmp_path / "plain")
    assert [f.name for f in plain] == ["confusion.png"]  # nothing known of the inputs: no worst samples
    wrong = ValidationInputs("image", ["x.png"] * 5, load=_load)  # other samples than the outputs': not drawn
    assert [f.name for f in task.pictures(_batches(outputs, targets), classes, tmp_path / "w", inputs=wrong)] == [
        "confusion.png"
    ]
    texts = [f"text number {i} " + "word " * i for i in range(12)]
    files = task.pictures(
        _batches(outputs, targets), classes, tmp_path / "texts", inputs=ValidationInputs("text", texts), count=4
    )
    assert [f.name for f in files] == ["confusion.png", "worst_texts.png", "worst_texts.csv"]
    _is_png(files[1])
    rows = _read_csv(files[2])
    losses = torch.nn.functional.cross_entropy(outputs, targets, reduction="none")
    expected = losses.argsort(descending=True)[:4].tolist()
    assert [r["text"] for r in rows] == [texts[i] for i in expected]  # whole texts, worst first
    assert [float(r["loss"]) for r in rows] == pytest.approx([float(losses[i]) for i in expected], abs=1e-4)
    probability = outputs.softmax(1)
    assert [float(r["p(true)"]) for r in rows] == pytest.approx(
        [float(probability[i, targets[i]]) for i in expected], abs=1e-4
    )


def test_multilabel_f1_bars_threshold_curve_and_per_class(tmp_path, drawn):
    generator = torch.Generator().manual_seed(2)
    targets = (torch.rand(40, 5, generator=generator) < 0.35).float()
    outputs = torch.randn(40, 5, generator=generator) + 2 * targets - 1
    classes = [f"label{i}" for i in range(5)]
    task = Multilabel(threshold=0.35)
    batches = _batches(outputs, targets)
    paths = _images(tmp_path / "valid", 40)
    files = task.pictures(batches, classes, tmp_path / "pictures", inputs=ValidationInputs("image", paths, load=_load))
    assert [f.name for f in files] == ["per_class_f1.png", "threshold.png", "worst.png"]
    for path in files:
        _is_png(path)
    assert "chosen 0.35" in drawn["threshold.png"]["lines"][0]
    rows = task.per_class(batches, classes)
    for name, metric in (
        ("precision", tmc.MultilabelPrecision),
        ("recall", tmc.MultilabelRecall),
        ("f1", tmc.MultilabelF1Score),
    ):
        reference = metric(5, threshold=0.35, average=None)(outputs, targets.long())
        assert [r[name] for r in rows] == pytest.approx(reference.tolist(), abs=1e-6)
    assert [r["support"] for r in rows] == targets.sum(0).long().tolist()
    assert drawn["per_class_f1.png"]["texts"][0] == [f"{r['f1']:.2f}" for r in rows]
    losses = torch.nn.functional.binary_cross_entropy_with_logits(outputs, targets, reduction="none").mean(1)
    titles = [t for t in drawn["worst.png"]["titles"] if t]
    assert [t.split("\n")[0] for t in titles] == [Path(paths[i]).name for i in losses.argsort(descending=True)[:8]]


def test_regression_scatter_worst_and_per_target(tmp_path, drawn):
    generator = torch.Generator().manual_seed(3)
    truth = torch.randn(25, 2, generator=generator) * torch.tensor([3.0, 10.0]) + torch.tensor([1.0, 50.0])
    task = Regression().fit_scale(truth)
    standardised = (truth - task.mean) / task.std
    outputs = standardised + 0.3 * torch.randn(25, 2, generator=generator)  # what the model outputs
    batches = _batches(outputs, truth)
    names = ["width", "height"]
    paths = _images(tmp_path / "valid", 25)
    files = task.pictures(batches, names, tmp_path / "pictures", inputs=ValidationInputs("image", paths, load=_load))
    assert [f.name for f in files] == ["scatter.png", "worst.png"]
    for path in files:
        _is_png(path)
    predicted = outputs * task.std + task.mean
    for k in range(2):
        points = drawn["scatter.png"]["points"][k][0]
        assert np.allclose(points, torch.stack([truth[:, k], predicted[:, k]], 1).numpy(), atol=1e-4)
    errors = (((predicted - truth) / task.std) ** 2).sum(1)
    titles = [t for t in drawn["worst.png"]["titles"] if t]
    assert [t.split("\n")[0] for t in titles] == [Path(paths[i]).name for i in errors.argsort(descending=True)[:8]]
    rows = task.per_class(batches, names)
    for k, row in enumerate(rows):
        assert row["class"] == names[k] and row["support"] == 25
        assert row["mae"] == pytest.approx(float(tmr.MeanAbsoluteError()(predicted[:, k], truth[:, k])), rel=1e-5)
        rmse = tmr.MeanSquaredError(squared=False)(predicted[:, k], truth[:, k])
        assert row["rmse"] == pytest.approx(float(rmse), rel=1e-5)
        assert row["r2"] == pytest.approx(float(tmr.R2Score()(predicted[:, k], truth[:, k])), rel=1e-5)


def test_segmentation_worst_masks_iou_bars_and_per_class(tmp_path, drawn):
    generator = torch.Generator().manual_seed(4)
    masks = torch.randint(0, 3, (10, 16, 16), generator=generator)
    masks[:, :2] = 255  # an ignored border
    predicted = masks.clone()
    wrong = torch.rand(10, 16, 16, generator=generator) < torch.linspace(0.05, 0.6, 10)[:, None, None]
    predicted[wrong] = (predicted[wrong] + 1) % 3
    predicted[predicted == 255] = 0
    task = Segmentation()
    batches = [task.kept(torch.nn.functional.one_hot(p.long(), 3).permute(0, 3, 1, 2).float(), m) for p, m in
               _batches(predicted, masks, 4)]  # fmt: skip
    classes = ["background", "cat", "dog"]
    paths = _images(tmp_path / "valid", 10)
    colours = [(0, 0, 0), (255, 0, 0), (0, 255, 0)]
    inputs = ValidationInputs("image", paths, load=_load, colours=colours)
    files = task.pictures(batches, classes, tmp_path / "pictures", inputs=inputs, count=3)
    assert [f.name for f in files] == ["per_class_iou.png", "worst_masks.png"]
    for path in files:
        _is_png(path)
    counted = masks != 255
    accuracy = ((predicted == masks) & counted).flatten(1).sum(1) / counted.flatten(1).sum(1)
    expected = accuracy.argsort()[:3].tolist()  # lowest pixel accuracy first
    firsts = [t for t in drawn["worst_masks.png"]["titles"] if t.startswith("image")]
    assert [t.split("\n")[1].split(":")[0] for t in firsts] == [Path(paths[i]).name for i in expected]
    rows = task.per_class(batches, classes)
    jaccard = tmc.MulticlassJaccardIndex(3, average=None, ignore_index=255)(predicted, masks)
    assert [r["iou"] for r in rows] == pytest.approx(jaccard.tolist(), abs=1e-6)
    assert [r["support"] for r in rows] == [int((masks == c).sum()) for c in range(3)]
    dice = tmc.MulticlassF1Score(3, average=None, ignore_index=255, multidim_average="global")
    assert [r["dice"] for r in rows] == pytest.approx(dice(predicted, masks).tolist(), abs=1e-6)


def test_loader_order_is_the_order_outputs_come_in():
    lengths = [3, 9, 1, 9, 5, 7]
    sorted_batches = LengthGroupedBatches(lengths, 4, shuffle=False)
    loader = DataLoader(TensorDataset(torch.arange(6)), batch_sampler=sorted_batches)
    order = loader_order(loader, 6)
    assert order == [i for (batch,) in loader for i in batch.tolist()] == [1, 3, 5, 4, 0, 2]
    plain = DataLoader(TensorDataset(torch.arange(5)), batch_size=2)
    assert loader_order(plain, 5) == [0, 1, 2, 3, 4]
    assert loader_order(DataLoader(TensorDataset(torch.arange(5)), shuffle=True), 5) is None
    assert loader_order(plain, 4) is None  # not the samples the inputs name


def test_write_pictures_puts_texts_in_the_loader_order(tmp_path):
    texts = ["short", "a much longer text than the others", "mid length", "tiny"]
    loader = DataLoader(
        TensorDataset(torch.arange(4)), batch_sampler=LengthGroupedBatches([1, 7, 2, 1], 2, shuffle=False)
    )
    order = [i for (batch,) in loader for i in batch.tolist()]
    targets = torch.tensor([0, 1, 0, 1])  # outputs and targets come in the loader's order
    outputs = torch.tensor([[3.0, 0.0], [0.0, 3.0], [0.0, 3.0], [3.0, 0.0]])  # the last two are wrong
    inputs = ValidationInputs("text", texts)
    files = write_pictures(Classification(), [(outputs, targets)], ["x", "y"], tmp_path, inputs=inputs, loader=loader)
    assert {f.name for f in files} == {"per_class.csv", "confusion.png", "worst_texts.png", "worst_texts.csv"}
    rows = _read_csv(tmp_path / "pictures" / "worst_texts.csv")
    assert [r["text"] for r in rows[:2]] == [texts[order[2]], texts[order[3]]]


def test_write_pictures_without_matplotlib_writes_the_table(tmp_path, monkeypatch, capsys):
    import sys

    outputs, targets = _classification(n=10, classes=3)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    files = write_pictures(Classification(), _batches(outputs, targets), ["a", "b", "c"], tmp_path, inputs=None,
                           loader=None)  # fmt: skip
    assert [f.name for f in files] == ["per_class.csv"]
    assert "pictures skipped: plots need matplotlib: pip install matplotlib" in capsys.readouterr().err
