"""Deployment exports: ONNX (checked with ONNX Runtime) and torch.export programs of exported runs, for each
task's final step and several graft kinds, on real photos; the standalone README predictor; exporter failures
naming the module."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from torchgraft import Multilabel, Regression, export_model, graft, load_exported, preprocessing_for
from torchgraft.ship.deploy import deploy
from torchgraft.ship.program import DeployError, export_program, find_culprit
from torchgraft.weights.zoo import build_model

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
skimage_data = pytest.importorskip("skimage.data")
README = Path(__file__).parents[2] / "README.md"


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[str]:
    """Four real photos of different sizes and aspect ratios, as JPEG and PNG files."""
    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for name in ("chelsea", "coffee", "astronaut", "rocket"):
        image = Image.fromarray(getattr(skimage_data, name)())
        image = image.resize((image.width // 3, image.height // 3))
        path = folder / (f"{name}.jpg" if name != "rocket" else f"{name}.png")
        image.save(path)
        paths.append(str(path))
    return paths


def _export(directory: Path, architecture: str, options: dict, photos: list[str], task=None, n: int = 3) -> Path:
    size = 224 if "vit" in architecture else 64  # a ViT's position embeddings fix its input size
    prep = preprocessing_for(architecture, size=size)
    model = graft(build_model(architecture, device="cpu"), n, input_size=(3, size, size), **options).eval()
    classes = [f"class{i}" for i in range(n)]
    extra = {"examples": photos}
    export_model(
        directory, model, architecture=architecture, classes=classes, preprocessing=prep,
        task=task, extra=extra,
    )  # fmt: skip
    return directory


def _pixels(path: str) -> np.ndarray:
    """What the deployed file takes: decoded uint8 RGB ``(1, H, W, 3)``."""
    return np.asarray(Image.open(path).convert("RGB"))[None]


def _probabilities(run: Path, photos: list[str]) -> torch.Tensor:
    """The softmax of the model as loaded (not the traceable copy ``deploy`` exports)."""
    exported = load_exported(run)
    transform = exported.preprocessing.eval_transform()
    with torch.no_grad():
        return exported.model(torch.stack([transform(Image.open(p).convert("RGB")) for p in photos])).softmax(-1)


# linear head (model pooling kept), concat-pool MLP head, token pooling on a timm ViT
CASES = [
    ("resnet18", {"head": "linear"}),
    ("mobilenet_v3_small", {"head": "mlp", "pool": "concat"}),
    ("timm/vit_tiny_patch16_224", {"head": "linear", "pool": "token"}),
]


@pytest.mark.parametrize(("architecture", "options"), CASES, ids=[c[0] for c in CASES])
def test_onnx_runtime_matches_the_model_on_real_photos(architecture, options, photos, tmp_path):
    if architecture.startswith("timm/"):
        pytest.importorskip("timm")
    run = _export(tmp_path, architecture, options, photos)
    report = deploy(run)
    assert report.path == run / "model.onnx" and report.checked == "4 images" and report.max_difference <= 1e-4
    prep = json.loads(report.preprocessing.read_text())
    assert prep["inputs"] == ["image"] and prep["output"] == "probabilities"
    assert prep["image"]["in_graph"]["center_crop"] in (64, 224)
    session = ort.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == ["batch", "height", "width", 3]
    expected = _probabilities(run, photos)
    for i, photo in enumerate(photos):  # each at its own size
        got = session.run(None, {"image": _pixels(photo)})[0]
        np.testing.assert_allclose(got, expected[i : i + 1].numpy(), atol=1e-4)
        np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)
    twice = np.concatenate([_pixels(photos[0])] * 2)  # the batch axis is dynamic
    np.testing.assert_allclose(session.run(None, {"image": twice})[0], expected[[0, 0]].numpy(), atol=1e-4)


def test_pt2_program_matches_and_static_shapes_are_fixed(photos, tmp_path):
    run = _export(tmp_path, "resnet18", {"head": "linear"}, photos)
    report = deploy(run, format="pt2")
    program = torch.export.load(str(report.path)).module()
    expected = _probabilities(run, photos)
    with torch.no_grad():
        for i, photo in enumerate(photos[:3]):
            got = program(torch.from_numpy(_pixels(photo)))
            torch.testing.assert_close(got, expected[i : i + 1], atol=1e-4, rtol=0)
    static = deploy(run, dynamic=False, check=photos[:1], out=tmp_path / "static" / "fixed.onnx")
    session = ort.InferenceSession(str(static.path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == list(_pixels(photos[0]).shape)


def test_export_program_of_a_float_batch_takes_other_sizes_with_dynamic_size(photos, tmp_path):
    model = graft(build_model("resnet18", device="cpu"), 3, input_size=(3, 64, 64), head="linear").eval()
    path = tmp_path / "float.onnx"
    export_program(model, (torch.randn(2, 3, 64, 64),), path, dynamic_size=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == ["batch", 3, "height", "width"]
    for size in (64, 96, 120):
        batch = torch.randn(2, 3, size, size)
        with torch.no_grad():
            expected = model(batch).numpy()
        np.testing.assert_allclose(session.run(None, {"image": batch.numpy()})[0], expected, atol=1e-4)


def test_multilabel_and_regression_export_their_final_step(photos, tmp_path):
    multi = _export(tmp_path / "multi", "resnet18", {}, photos, task=Multilabel(threshold=0.3), n=4)
    deploy(multi)
    record = json.loads((multi / "preprocessing.json").read_text())
    assert record["task"] == "multilabel" and record["threshold"] == 0.3 and record["output"] == "probabilities"
    exported = load_exported(multi)
    transform = exported.preprocessing.eval_transform()
    batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in photos])
    with torch.no_grad():
        sigmoid = exported.model(batch).sigmoid().numpy()
    session = ort.InferenceSession(str(multi / "model.onnx"), providers=["CPUExecutionProvider"])
    got = np.concatenate([session.run(None, {"image": _pixels(p)})[0] for p in photos])
    np.testing.assert_allclose(got, sigmoid, atol=1e-4)

    regression = _export(tmp_path / "reg", "resnet18", {}, photos, task=Regression(mean=[50.0], std=[10.0]), n=1)
    deploy(regression)
    exported = load_exported(regression)
    with torch.no_grad():
        values = exported.model(batch).numpy() * 10.0 + 50.0  # back in the targets' units
    session = ort.InferenceSession(str(regression / "model.onnx"), providers=["CPUExecutionProvider"])
    assert json.loads((regression / "preprocessing.json").read_text())["output"] == "values"
    got = np.concatenate([session.run(None, {"image": _pixels(p)})[0] for p in photos])
    np.testing.assert_allclose(got, values, atol=1e-3)


class Gate(nn.Module):
    """Data-dependent Python control flow: torch.export cannot trace it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.mean() > 0:
            return x * 2
        return x


def test_an_untraceable_module_is_named_with_the_fallbacks(tmp_path):
    net = nn.Sequential()
    net.add_module("stem", nn.Conv2d(3, 4, 3))
    net.add_module("block", nn.Sequential(nn.ReLU(), Gate()))
    net.add_module("pool", nn.Flatten())
    net.eval()
    inputs = (torch.randn(2, 3, 16, 16),)
    assert find_culprit(net, inputs) == "block.1"
    for format in ("onnx", "pt2"):
        path = tmp_path / f"net.{format}"
        with pytest.raises(
            DeployError, match=r"export failed in module 'block\.1' \(Gate\).*x\.mean\(\) > 0.*torch\.cond"
        ):
            export_program(net, inputs, path, format=format)
        assert not path.exists()


def test_deploy_errors(photos, tmp_path):
    run = _export(tmp_path, "resnet18", {}, photos)
    with pytest.raises(DeployError, match="format 'tflite'"):
        deploy(run, format="tflite")
    with pytest.raises(FileNotFoundError, match=r"missing\.jpg does not exist"):
        deploy(run, check=[str(tmp_path / "missing.jpg")])
    with pytest.raises(FileNotFoundError, match="not an exported model"):
        deploy(tmp_path / "nothing")
