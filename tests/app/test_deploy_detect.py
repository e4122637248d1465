"""deploy() of a detection run: one ONNX file, any batch and image size, checked against the PyTorch detector."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
skdata = pytest.importorskip("skimage.data")

import torchgraft  # noqa: E402
from torchgraft.data.preprocess import preprocessing_for  # noqa: E402
from torchgraft.ship.deploy import DeployError, deploy  # noqa: E402
from torchgraft.ship.detect_deploy import DetectionDeployable, compare_detections  # noqa: E402
from torchgraft.ship.export import load_exported  # noqa: E402
from torchgraft.tasks import TASKS  # noqa: E402

ARCH, CLASSES, THRESHOLD = "timm/efficientnet_lite0", ["a", "b"], 0.1


def _image(name: str, size: tuple[int, int] | None = None) -> torch.Tensor:
    """A bundled scikit-image photo as uint8 ``(1, H, W, 3)``, resized to ``size`` ``(W, H)`` with PIL."""
    from PIL import Image

    picture = Image.fromarray(getattr(skdata, name)()).convert("RGB")
    if size is not None:
        picture = picture.resize(size, Image.BILINEAR)
    return torch.from_numpy(np.asarray(picture).copy())[None]


def _exported_run(directory, head: str) -> torch.nn.Module:
    """A random-head detector on the pretrained backbone, exported with a low threshold (detections exist)."""
    torch.manual_seed(0)
    model = torchgraft.pretrained_model(ARCH)[0]
    detector = torchgraft.graft_detector(model, CLASSES, head=head, detector_options={"score_thresh": 0.05}).eval()
    task = TASKS["detect"](score_threshold=THRESHOLD)
    torchgraft.export_model(
        directory, detector, architecture=ARCH, classes=CLASSES, preprocessing=preprocessing_for(ARCH), task=task
    )
    return detector


@pytest.fixture(scope="module")
def fcos_run(tmp_path_factory):
    directory = tmp_path_factory.mktemp("fcos")
    return directory, _exported_run(directory, "fcos")


def _wrapped(detector: torch.nn.Module) -> DetectionDeployable:
    return DetectionDeployable(detector, label_offset=0, score_threshold=THRESHOLD).eval()


def test_load_exported_gives_the_same_detections_bit_for_bit(fcos_run):
    directory, detector = fcos_run
    image = _image("chelsea")
    with torch.no_grad():
        before = _wrapped(detector)(image)
        after = _wrapped(load_exported(directory).model)(image)
    assert int((before[1] > 0).sum()) > 0, "no detection above the threshold: nothing compared"
    for a, b in zip(before, after, strict=True):
        assert torch.equal(a, b)


def test_padding_marks_what_is_under_the_threshold(fcos_run):
    _, detector = fcos_run
    with torch.no_grad():
        boxes, scores, labels = _wrapped(detector)(torch.cat([_image("coffee")] * 2))
    k = detector.detections_per_img
    assert boxes.shape == (2, k, 4) and scores.shape == (2, k) and labels.dtype == torch.int64
    valid = labels >= 0
    assert torch.all(scores[valid] >= THRESHOLD) and torch.all(scores[~valid] == 0) and torch.all(boxes[~valid] == 0)
    assert torch.all(valid[:, :-1] >= valid[:, 1:])  # the valid ones first


def test_compare_detections_accepts_a_reorder_and_refuses_a_moved_box():
    boxes = np.array([[[0, 0, 10, 10], [5, 5, 20, 20], [0, 0, 0, 0]]], dtype=np.float32)
    scores, labels = np.array([[0.9, 0.9, 0.0]], np.float32), np.array([[0, 1, -1]])
    swapped = (boxes[:, [1, 0, 2]], scores[:, [1, 0, 2]], labels[:, [1, 0, 2]])
    assert compare_detections(swapped, (boxes, scores, labels), tolerance=1e-4, threshold=0.5, side=20) == 0.0
    moved = boxes.copy()
    moved[0, 0, 0] += 0.1
    with pytest.raises(DeployError, match="no detection within"):
        compare_detections((moved, scores, labels), (boxes, scores, labels), tolerance=1e-4, threshold=0.5, side=20)


def test_pt2_is_refused_naming_onnx(fcos_run):
    directory, _ = fcos_run
    with pytest.raises(DeployError, match="use format='onnx'"):
        deploy(directory, format="pt2")


def _onnx_matches(session, detector, image: torch.Tensor, offset: int = 0) -> float:
    with torch.no_grad():
        expected = [
            x.numpy() for x in DetectionDeployable(detector, label_offset=offset, score_threshold=THRESHOLD)(image)
        ]
    got = session.run(None, {"image": image.numpy()})
    assert [g.shape for g in got] == [e.shape for e in expected]
    assert int((expected[2] >= 0).sum(1).min()) > 0, "an image without detections above the threshold"
    assert np.array_equal((got[2] >= 0).sum(1), (expected[2] >= 0).sum(1))  # the same count per image
    side = float(max(image.shape[1], image.shape[2]))
    return compare_detections(got, expected, tolerance=1e-4, threshold=THRESHOLD, side=side)


@pytest.mark.slow
def test_deploy_fcos_onnx_runs_any_batch_and_size(fcos_run):
    import onnxruntime

    directory, detector = fcos_run
    start = time.perf_counter()
    report = deploy(directory)
    print(f"\ndeploy: {report.line()} ({time.perf_counter() - start:.1f} s)")
    record = json.loads(report.preprocessing.read_text())
    assert record["output_names"] == ["boxes", "scores", "labels"] and record["score_threshold"] == THRESHOLD
    session = onnxruntime.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    names = ["chelsea", "astronaut", "coffee", "rocket"]
    calls = {
        "batch 1, 300x451": _image("chelsea"),
        "batch 1, 512x512": _image("astronaut"),
        "batch 4, 320x480": torch.cat([_image(n, (480, 320)) for n in names]),
        "batch 4, 416x288": torch.cat([_image(n, (288, 416)) for n in names]),
    }
    for what, image in calls.items():
        print(f"{what}: largest difference {_onnx_matches(session, detector, image):.2e}")


def test_compare_detections_takes_a_tie_at_the_cut_and_nothing_else():
    boxes = np.array([[[0, 0, 10, 10], [5, 5, 20, 20]]], dtype=np.float32)
    scores, labels = np.array([[0.9, 0.3]], np.float32), np.array([[0, 0]])
    other = boxes.copy()
    other[0, 1] = [6, 2, 18, 22]  # the last kept box, swapped for another of the same score
    compare_detections((other, scores, labels), (boxes, scores, labels), tolerance=1e-4, threshold=0.1, side=20)
    lower = scores.copy()
    lower[0, 1] -= 1e-3  # not a tie
    with pytest.raises(DeployError, match="no detection within"):
        compare_detections((other, lower, labels), (boxes, scores, labels), tolerance=1e-4, threshold=0.1, side=20)
    padded = (np.concatenate([boxes, np.zeros((1, 1, 4), np.float32)], 1), np.array([[0.9, 0.3, 0]], np.float32))
    cut = np.array([[0, 0, -1]])  # a row left: nothing was cut, a different box is a different detection
    with pytest.raises(DeployError, match="no detection within"):
        moved = (np.concatenate([other, np.zeros((1, 1, 4), np.float32)], 1), padded[1], cut)
        compare_detections(moved, (*padded, cut), tolerance=1e-4, threshold=0.1, side=20)
