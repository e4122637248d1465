"""The README's standalone predictor (scripts/predict_onnx.py: numpy, Pillow/tokenizers, ONNX Runtime; the
README shows the file verbatim) gives ``torchgraft predict``'s outputs to 1e-4 for every task that exports, on
24 real images of odd sizes and aspect ratios (Fashion-MNIST garments upscaled, scikit-image photos
cropped; JPEG and PNG) and on real BBC News texts. The resize inside the exported graph is also checked
against validation's resize directly, on odd sizes, reducing and enlarging."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from torchgraft import Multilabel, Regression, Segmentation, export_model, graft, load_exported, predict_images
from torchgraft.data.decode import decode_rgb
from torchgraft.data.preprocess import Preprocessing, preprocessing_for
from torchgraft.data.resize import resize_image, resize_matrices
from torchgraft.grafting.dense import graft_dense
from torchgraft.ship.deploy import deploy
from torchgraft.ship.predict import predict_masks
from torchgraft.weights.zoo import build_model

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
skimage_data = pytest.importorskip("skimage.data")
ROOT = Path(__file__).parents[2]
SCRIPT = ROOT / "scripts" / "predict_onnx.py"
FASHION = ROOT / "src" / "torchgraft" / "demo" / "fashion_mnist.npz"
TOLERANCE = 1e-4


def _script():
    spec = importlib.util.spec_from_file_location("predict_onnx", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[str]:
    """24 real images: 12 garments upscaled to odd sizes (gray PNGs and RGB JPEGs), 12 photo crops."""
    folder = tmp_path_factory.mktemp("odd")
    rng = np.random.default_rng(0)
    garments = np.load(FASHION)["valid_images"]
    paths = []
    for i in range(12):
        width, height = (int(v) for v in rng.integers(29, 301, size=2))
        image = Image.fromarray(garments[i]).resize((width, height), Image.Resampling.BICUBIC)
        path = folder / (f"garment{i}.png" if i % 2 else f"garment{i}.jpg")
        (image if i % 2 else image.convert("RGB")).save(path)
        paths.append(str(path))
    photos = [getattr(skimage_data, name)() for name in ("chelsea", "coffee", "astronaut", "rocket")]
    for i in range(12):
        photo = photos[i % 4]
        height, width = int(rng.integers(41, photo.shape[0] // 2)), int(rng.integers(41, photo.shape[1] // 2))
        top, left = int(rng.integers(0, photo.shape[0] - height)), int(rng.integers(0, photo.shape[1] - width))
        path = folder / (f"photo{i}.jpg" if i % 3 else f"photo{i}.png")
        Image.fromarray(photo[top : top + height, left : left + width]).save(path, quality=90)
        paths.append(str(path))
    return paths


def _export(directory: Path, task=None, n: int = 4, architecture: str = "resnet18") -> Path:
    prep = preprocessing_for(architecture, size=64)
    model = graft(build_model(architecture, device="cpu"), n, input_size=(3, 64, 64), head="linear").eval()
    with torch.no_grad():  # outputs spread far apart: a wrong resize shows in the probabilities
        model.head[-1].weight.mul_(20)
    export_model(directory, model, architecture=architecture, classes=[f"c{i}" for i in range(n)], preprocessing=prep,
                 task=task)  # fmt: skip
    return directory


def _predicted(exported, path: str) -> np.ndarray:
    """``torchgraft predict``'s decoded output for one image (every class, not only the top k)."""
    prediction = predict_images(exported, [path], top_k=len(exported.classes))[0]
    if prediction.values:
        return np.array([prediction.values[name] for name in exported.classes])
    decoded = exported.task.decode(torch.tensor(prediction.logits)[None])[exported.task.output]
    return decoded[0].numpy()


@pytest.mark.parametrize(
    "task",
    [None, pytest.param(Multilabel(threshold=0.4), marks=pytest.mark.slow),
     pytest.param(Regression(mean=[2.0, -3.0], std=[1.0, 0.5]), marks=pytest.mark.slow)],
    ids=["classify", "multilabel", "regression"],
)  # fmt: skip
def test_the_standalone_predictor_gives_predicts_outputs_on_odd_sizes(task, images, tmp_path):
    run = _export(tmp_path, task, n=2 if isinstance(task, Regression) else 4)
    report = deploy(run, check=images[:3])
    assert report.checked == "3 images"
    script, exported = _script(), load_exported(run)
    worst = 0.0
    for path in images:
        got, _ = script.predict(run, path)
        worst = max(worst, float(np.abs(got - _predicted(exported, path)).max()))
    assert worst <= TOLERANCE, worst


def test_the_readme_shows_the_script_and_it_runs_as_written(images, tmp_path):
    block = re.search(r"<!-- standalone predictor: scripts/predict_onnx.py -->\n```python\n(.*?)```",
                      (ROOT / "README.md").read_text(), re.S)  # fmt: skip
    assert block, "README lost its standalone predictor"
    assert block.group(1) == SCRIPT.read_text(), "README's predictor differs from scripts/predict_onnx.py"
    imports = re.findall(r"^\s*(?:import|from) (\w+)", block.group(1), re.M)
    assert set(imports) <= {"json", "sys", "numpy", "onnxruntime", "PIL", "tokenizers"}
    run = _export(tmp_path)
    deploy(run, check=images[:2])
    out = subprocess.run([sys.executable, str(SCRIPT), str(run), *images[:5]], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    for line, path in zip(out.stdout.splitlines(), images[:5], strict=True):
        item, *pairs = line.split()
        printed = dict(zip(pairs[::2], map(float, pairs[1::2]), strict=True))
        expected = dict(predict_images(load_exported(run), [path], top_k=4)[0].top)
        assert item == path and list(printed) == list(expected)
        np.testing.assert_allclose(list(printed.values()), list(expected.values()), atol=TOLERANCE)


@pytest.mark.slow
def test_the_standalone_segmenter_gives_predict_masks_at_the_images_size(images, tmp_path):
    prep = Preprocessing(64, 64, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bicubic")
    model = graft_dense(build_model("resnet18", device="cpu"), 3, decoder="fpn", input_size=(3, 64, 64)).eval()
    export_model(tmp_path, model, architecture="resnet18", classes=["a", "b", "c"], preprocessing=prep,
                 task=Segmentation())  # fmt: skip
    deploy(tmp_path, check=images[:2])
    exported, script = load_exported(tmp_path), _script()
    transform = exported.preprocessing.dense_transform()
    for path in images[::2]:  # 12 images, both kinds
        got, _ = script.predict(tmp_path, path)
        image = decode_rgb(path)
        assert got.shape == (3, *image.shape[-2:])
        with torch.no_grad():  # predict_masks's steps, kept to the probabilities
            logits = exported.model(transform(image)[None])
            resized = torch.nn.functional.interpolate(logits, size=tuple(image.shape[-2:]), mode="bilinear")
        np.testing.assert_allclose(got, resized.softmax(dim=1)[0].numpy(), atol=TOLERANCE)
        labels = predict_masks(exported, [path])[0].labels
        assert (got.argmax(axis=0) == labels).mean() >= 0.999  # equal but for near ties


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize(("size", "target"), [((375, 500), (232, 309)), ((31, 47), (66, 66)), ((601, 457), (70, 71))])
def test_the_graphs_resize_matrices_are_validations_resize(interpolation, size, target):
    pixels = torch.from_numpy(skimage_data.astronaut()[: size[0], : size[1]].copy()).permute(2, 0, 1)
    if pixels.shape[1:] != size:  # enlarge the photo when it is smaller than the size asked
        pixels = (resize_image(pixels, size, interpolation) * 255).round().to(torch.uint8)
    rows, columns = resize_matrices(size[0], size[1], target, interpolation)
    by_matrices = (rows @ pixels.float() @ columns.T).clamp(0, 255) / 255
    validation = resize_image(pixels, target, interpolation)
    assert validation.shape == (3, *target) and (by_matrices - validation).abs().max() <= 2e-6


@pytest.mark.slow
def test_the_standalone_predictor_of_a_text_run_gives_predict_texts(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("tokenizers")
    from conftest import bbc_news_root, minilm_folder
    from torchgraft.data.tokens import TextPreprocessing
    from torchgraft.ship.predict import predict_texts
    from torchgraft.weights.hf import hf_text_model

    encoder, tokenizer, _ = hf_text_model(f"hf/{minilm_folder()}")
    model = graft(encoder, 5, head="linear", pool="mean").eval()
    with torch.no_grad():
        model.head[-1].weight.mul_(20)
    tokenizer.save_pretrained(str(tmp_path / "hf"))
    encoder.config.save_pretrained(str(tmp_path / "hf"))
    export_model(tmp_path, model, architecture=f"hf/{minilm_folder()}", classes=[f"c{i}" for i in range(5)],
                 preprocessing=TextPreprocessing("hf", 96))  # fmt: skip
    files = sorted(bbc_news_root().rglob("*.txt"))[::100][:20]  # 20 articles across the topics, long and short
    texts = [p.read_text(encoding="utf-8", errors="replace") for p in files] + ["Short one.", "Rates rose."]
    deploy(tmp_path, check=texts[:3])
    script = _script()
    predictions = predict_texts(load_exported(tmp_path), texts, top_k=5)
    for text, prediction in zip(texts, predictions, strict=True):
        got, prep = script.predict(tmp_path, text)
        expected = dict(prediction.top)
        np.testing.assert_allclose([got[prep["classes"].index(c)] for c in expected], list(expected.values()),
                                   atol=TOLERANCE)  # fmt: skip
