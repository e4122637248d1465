"""``fine_tune(keep_frozen=k)``: the first k layer groups never train (not in the frozen epochs, not after),
the others do; the feature cache reads a mask dataset's unaugmented version while the backbone is frozen."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from torchgraft import Learner, graft, graft_dense, layer_groups
from torchgraft.data.masks import MaskDataset, mask_transforms
from torchgraft.train.cache import FeatureCacheError, cached_loader
from torchgraft.train.callbacks import LambdaCallback
from torchgraft.tune.freeze import freeze

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _loaders() -> tuple[DataLoader, DataLoader]:
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 3, 32, 32, generator=generator), torch.randint(0, 3, (32,), generator=generator)
    return DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True), DataLoader(TensorDataset(x, y), batch_size=16)


def test_the_first_groups_stay_frozen_through_every_stage():
    model = graft(torchvision.models.resnet18(weights=None), 3, input_size=(3, 32, 32))
    groups = layer_groups(model)
    first = {id(p): p.detach().clone() for p in groups.groups[0].params}
    second = {id(p): p.detach().clone() for p in groups.groups[1].params}
    learner = Learner(model, *_loaders(), quiet=True, device="cpu")
    learner.fine_tune(1, 1e-2, freeze_epochs=1, keep_frozen=1)
    assert all(torch.equal(p, first[id(p)]) for p in groups.groups[0].params)
    assert not all(torch.equal(p, second[id(p)]) for p in groups.groups[1].params)
    with pytest.raises(ValueError, match="keep_frozen=9"):
        learner.fine_tune(1, 1e-2, keep_frozen=9)


def test_minus_one_keeps_the_whole_body_frozen_and_trains_on_cached_features():
    model = graft(torchvision.models.resnet18(weights=None), 3, input_size=(3, 32, 32))
    body = {n: p.detach().clone() for n, p in model.body.named_parameters()}
    head = {n: p.detach().clone() for n, p in model.head.named_parameters()}
    cached: list[bool] = []
    watch = LambdaCallback(on_epoch_end=lambda learner, record: cached.append(learner.cache is not None))
    learner = Learner(model, *_loaders(), quiet=True, device="cpu", cache_features=True, callbacks=[watch])
    learner.fine_tune(1, 1e-2, freeze_epochs=1, keep_frozen=-1)
    assert all(torch.equal(p, body[n]) for n, p in model.body.named_parameters())
    assert not all(torch.equal(p, head[n]) for n, p in model.head.named_parameters())
    assert [row["phase"] for row in learner.history] == [0, 1]
    assert cached == [True, True]  # both stages trained the head on cached body features


def _pairs(root) -> list[tuple[str, str]]:
    pairs = []
    rng = np.random.default_rng(0)
    for i in range(4):
        image, mask = root / f"{i}.jpg", root / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(image)
        Image.fromarray(rng.integers(0, 2, (40, 48), dtype=np.uint8)).save(mask)
        pairs.append((str(image), str(mask)))
    return pairs


def test_the_cache_reads_the_unaugmented_pairs(tmp_path):
    model = graft_dense(torchvision.models.resnet18(weights=None), 2, input_size=(3, 32, 32))
    freeze(model)
    augmented, plain = mask_transforms(32, MEAN, STD, train=True), mask_transforms(32, MEAN, STD, train=False)
    pairs = _pairs(tmp_path)

    def prepare(batch):
        return batch[0], batch[1]

    with pytest.raises(FeatureCacheError, match="augmented randomly"):
        cached_loader(model, DataLoader(MaskDataset(pairs, augmented), batch_size=2), prepare=prepare, train=True)
    dataset = MaskDataset(pairs, augmented, plain=plain)
    loader = cached_loader(
        model, DataLoader(dataset, batch_size=2), prepare=prepare, train=True, cache_dtype=torch.float32
    )
    features, masks = loader.dataset.read(range(len(loader.dataset)))  # the feature store, exact (float32)
    expected = torch.stack([MaskDataset(pairs, plain)[i][1] for i in range(4)])
    assert torch.equal(masks, expected)  # the plain (resized, not cropped) masks
    with torch.no_grad():
        model.eval()
        assert torch.allclose(features[:1], model.features(dataset.unaugmented()[0][0][None]), atol=1e-5)
