"""Write the demo's packaged dataset: 2,000 train / 500 valid / 10 held-out Fashion-MNIST images (MIT licence,
Zalando Research) from Debian's ``dataset-fashion-mnist`` package, as one compressed ``.npz`` of uint8 arrays.

Train: the first 2,000 images of the training set; valid: the first 500 of the test set; held-out: the next 10
test images (never seen in training or validation; the demo predicts them).

Run: apt-get install dataset-fashion-mnist && python scripts/make_demo_data.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from fashion_folder import CLASSES, read_idx  # the benchmark's reader of the Debian files

TARGET = Path(__file__).resolve().parents[1] / "src" / "torchgraft" / "demo" / "fashion_mnist.npz"


def main() -> None:
    train_x, train_y = read_idx("train")
    test_x, test_y = read_idx("t10k")
    TARGET.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        TARGET,
        classes=np.array(CLASSES),
        train_images=train_x[:2000],
        train_labels=train_y[:2000],
        valid_images=test_x[:500],
        valid_labels=test_y[:500],
        heldout_images=test_x[500:510],
        heldout_labels=test_y[500:510],
    )
    print(f"{TARGET}: {TARGET.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
