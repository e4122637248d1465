"""Dense grafts: multi-scale taps found by the dry run on every torchvision builder and a timm sample (CNNs,
channels-last Swin, token ViTs), U-Net and FPN decoders giving (N, classes, H, W) at any input size, layer
groups backbone / decoder / head, the seed case (MobileNetV2, 1x/10x, an init loop caught by the guard),
and training with the frozen backbone's multi-scale features cached."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import torchgraft
from torchgraft import Learner, layer_groups, param_groups
from torchgraft.grafting.dense import Segmenter, graft_dense
from torchgraft.tasks import Segmentation
from torchgraft.train.callbacks import LambdaCallback
from torchgraft.weights.zoo import build_model, torchvision_classifiers

FIXED = ("vit_", "swin", "maxvit")  # networks that take exactly their own input size


def _size(name: str) -> tuple[int, int, int]:
    if name.startswith(FIXED) or any(f"/{kind}" in name for kind in ("vit", "swin", "deit")):
        return (3, 224, 224)
    return (3, 299, 299) if name == "inception_v3" else (3, 232, 200)  # not a multiple of 32


BIG = ("efficientnet_b5", "efficientnet_b6", "efficientnet_b7", "efficientnet_v2_m", "efficientnet_v2_l", "densenet161",
       "densenet169", "densenet201", "regnet_y_16gf", "regnet_y_32gf", "regnet_y_128gf", "regnet_x_16gf",
       "regnet_x_32gf", "vit_l_16", "vit_l_32", "vit_h_14", "convnext_base", "convnext_large", "swin_b",
       "swin_v2_b", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn", "resnext101_32x8d", "resnext101_64x4d",
       "wide_resnet101_2")  # fmt: skip


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in BIG else n for n in torchvision_classifiers()]
)
def test_every_torchvision_builder_gets_a_dense_graft(name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model = build_model(name)  # meta device: shapes only
    size = _size(name)
    segmenter = graft_dense(model, 5, input_size=size)
    strides = [tap.stride for tap in segmenter.taps]
    assert strides == sorted(set(strides)) and strides[-1] >= 8, segmenter.taps
    with torch.no_grad():
        assert segmenter(torch.empty(2, *size, device="meta")).shape == (2, 5, *size[1:])
    assert [g.name for g in layer_groups(segmenter)][-2:] == ["decoder", "head"]


TIMM = [
    ("timm/resnet18", [2, 4, 8, 16, 32], "nchw"),
    ("timm/convnext_atto", [4, 8, 16, 32], "nchw"),
    ("timm/efficientnet_lite0", [2, 4, 8, 16, 32], "nchw"),
    ("timm/swin_tiny_patch4_window7_224", [4, 8, 16, 32], "nhwc"),
    ("timm/vit_tiny_patch16_224", [16], "nlc"),
    ("timm/deit_tiny_distilled_patch16_224", [16], "nlc"),
]


@pytest.mark.parametrize(("name", "strides", "layout"), TIMM, ids=[t[0] for t in TIMM])
def test_timm_sample_taps_and_output(name, strides, layout):
    pytest.importorskip("timm")
    size = _size(name)
    segmenter = graft_dense(build_model(name), 3, input_size=size, decoder="fpn" if "convnext" in name else "unet")
    assert [t.stride for t in segmenter.taps] == strides
    assert segmenter.taps[0].layout == layout
    if layout == "nlc":
        assert segmenter.taps[-1].prefix == (2 if "distilled" in name else 1)  # class (and distillation) tokens
    with torch.no_grad():
        assert segmenter(torch.empty(1, *size, device="meta")).shape == (1, 3, *size[1:])


@pytest.mark.parametrize("decoder", ["unet", "fpn"])
def test_real_forward_at_odd_sizes(decoder):
    segmenter = graft_dense(torchvision.models.resnet18(), 4, decoder=decoder, input_size=(3, 64, 64)).eval()
    for height, width in ((64, 64), (70, 53), (33, 97)):
        with torch.no_grad():
            out = segmenter(torch.randn(2, 3, height, width))
        assert out.shape == (2, 4, height, width) and torch.isfinite(out).all()


def test_the_seed_case_mobilenet_v2_one_x_ten_x_and_the_init_loop():
    segmenter = graft_dense(torchvision.models.mobilenet_v2(), 21, input_size=(3, 96, 96))
    groups = layer_groups(segmenter)
    names = [g.name for g in groups]
    assert names[-2:] == ["decoder", "head"]
    # the backbone at 1x, the decoder and classifier at 10x: one line
    rates = [1e-3] * (len(names) - 2) + [1e-2, 1e-2]
    optimizer = torch.optim.SGD(param_groups(segmenter, lr=rates, weight_decay=0.0), momentum=0.9)
    by_lr = {g["lr"]: sum(p.numel() for p in g["params"]) for g in optimizer.param_groups}
    backbone = sum(p.numel() for p in segmenter.body.parameters())
    assert by_lr[1e-3] == backbone and by_lr[1e-2] == sum(p.numel() for p in segmenter.parameters()) - backbone
    torchgraft.freeze(segmenter)
    assert not any(p.requires_grad for p in segmenter.body.parameters())
    assert all(p.requires_grad for p in segmenter.decoder.parameters())
    torchgraft.unfreeze(segmenter)
    for module in segmenter.modules():  # the seed's _init_weight: meant for the decoder, walks the backbone too
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight)
        elif isinstance(module, nn.BatchNorm2d):
            module.weight.data.fill_(1)
            module.bias.data.zero_()
    with pytest.raises(torchgraft.PretrainedWeightsChangedError, match=r"body\.model\.features\.0\.0\.weight"):
        torchgraft.check_pretrained(segmenter)


def test_no_spatial_features_is_refused():
    with pytest.raises(ValueError, match="no spatial feature map"):
        graft_dense(nn.Sequential(nn.Flatten(), nn.Linear(12, 4)), 3, input_size=(3, 2, 2))
    with pytest.raises(ValueError, match="decoder='segformer'"):
        graft_dense(torchvision.models.resnet18(), 3, decoder="segformer")


def _coins(count: int, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Crops of scikit-image's coins photo, and their coin/background masks (Otsu's threshold)."""
    data = pytest.importorskip("skimage.data")
    filters = pytest.importorskip("skimage.filters")
    photo = data.coins()
    mask = photo > filters.threshold_otsu(photo)
    rng = np.random.default_rng(0)
    images, masks = [], []
    for _ in range(count):
        top, left = rng.integers(0, photo.shape[0] - size), rng.integers(0, photo.shape[1] - size)
        crop = photo[top : top + size, left : left + size].astype(np.float32) / 255
        images.append(np.repeat(crop[None], 3, axis=0))
        masks.append(mask[top : top + size, left : left + size])
    return torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(masks)).long()


def test_training_with_the_multiscale_feature_cache(lite0):
    images, masks = _coins(48)
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    images = (images - mean) / std
    train = DataLoader(TensorDataset(images[:32], masks[:32]), batch_size=8, shuffle=True)
    valid = DataLoader(TensorDataset(images[32:], masks[32:]), batch_size=8)
    segmenter = graft_dense(lite0, 2, input_size=(3, 64, 64))
    assert isinstance(segmenter, Segmenter)
    cached: list[bool] = []
    learner = Learner(segmenter, train, valid, task=Segmentation(), cache_features=True, quiet=True)
    learner.add_callback(LambdaCallback(on_step_begin=lambda lrn: cached.append(lrn.cache is not None)))
    history = learner.fine_tune(2, 1e-3, freeze_epochs=2, frozen_lr=3e-3, keep_frozen=0)  # not the recipe's -1
    steps = len(train)
    assert cached[: 2 * steps] == [True] * (2 * steps) and not any(cached[2 * steps :])
    assert history[-1]["miou"] > 0.7 and history[-1]["miou"] >= history[0]["miou"] - 0.02
    assert {"miou", "dice", "pixel_accuracy"} <= set(history[-1])  # what the README promises


def test_a_copy_runs_on_its_own_taps():
    import copy

    segmenter = graft_dense(torchvision.models.resnet18(), 3, input_size=(3, 64, 64)).eval()
    twin = copy.deepcopy(segmenter)
    with torch.no_grad():
        twin.decoder.blocks[0][0][0].weight.mul_(2)  # the copy's decoder differs; its taps are its own
        x = torch.randn(1, 3, 64, 64)
        assert not torch.allclose(twin(x), segmenter(x))
        for original, copied in zip(segmenter.maps(x), twin.maps(x), strict=True):
            assert torch.equal(original, copied)
