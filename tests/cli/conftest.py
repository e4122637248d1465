"""Fixtures shared by the CLI tests: a tiny folder of coloured images and a run trained on it."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from torchgraft.cli.main import main


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``train/`` (6 images per class) and ``valid/`` (2 per class) of plain red and blue images of a few
    sizes; one per test module, which may write beside them."""
    root = tmp_path_factory.mktemp("colours")
    for split, count in (("train", 6), ("valid", 2)):
        for name, colour in (("red", (200, 30, 30)), ("blue", (30, 30, 200))):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (36 + i, 40), (colour[0] + i, colour[1], colour[2] - i)).save(
                    root / split / name / f"{i}.png"
                )
    return root


@pytest.fixture(scope="module")
def run_dir(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder trained on :func:`folder` for one unfrozen epoch (resnet18 without weights, 32 px, CPU)."""
    out = tmp_path_factory.mktemp("run") / "run"
    tiny = ["--model", "resnet18", "--weights", "none", "--size", "32", "--workers", "0", "--device", "cpu"]
    argv = ["train", str(folder), *tiny, "--epochs", "1", "--freeze-epochs", "0", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    return out
