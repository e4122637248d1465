"""Contract: every torchvision classification builder grafts, keeps its pretrained tensors, gets a new head."""

from __future__ import annotations

import warnings

import pytest
import torch
import torchvision
from torch import nn

from torchgraft import graft
from torchgraft.weights.zoo import build_model, torchvision_classifiers

BUILDERS = torchvision_classifiers()
META_ONLY = {"vit_h_14", "regnet_y_128gf"}  # 600M+ parameters: checked on the meta device
SLOW = {
    "vit_l_16",
    "vit_l_32",
    "regnet_y_32gf",
    "regnet_x_32gf",
    "regnet_y_16gf",
    "regnet_x_16gf",
    "efficientnet_v2_l",
    "efficientnet_b7",
    "efficientnet_b6",
    "convnext_large",
    "convnext_base",
    "swin_v2_b",
    "swin_b",
    "vgg19_bn",
    "vgg19",
    "vgg16_bn",
    "vgg16",
    "resnext101_64x4d",
    "resnext101_32x8d",
    "wide_resnet101_2",
    "densenet161",
}


def min_size(name: str) -> tuple[int, int]:
    """The smallest input the builder's default weights declare (ViT needs exactly 224)."""
    weights = torchvision.models.get_model_weights(name).DEFAULT
    return tuple(weights.meta["min_size"])


def build(name: str, device: str) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # googlenet/inception init notice
        return build_model(name, device=device)


def test_every_builder_is_covered():
    assert len(BUILDERS) >= 78


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW | META_ONLY else n for n in BUILDERS]
)
def test_graft_contract(name):
    device = "meta" if name in META_ONLY else "cpu"
    model = build(name, device)
    source = {k: v.clone() for k, v in model.state_dict().items()}
    classifier_shapes = {n: p.shape for n, p in model.named_parameters()}
    fixed = getattr(model, "image_size", None)  # ViT: the random-weight model takes exactly this size
    size = (3, fixed, fixed) if fixed else (3, *min_size(name))

    grafted = graft(model, 7, input_size=size)

    # the removed classifier is reported and produced the 1000 ImageNet classes
    info = grafted.info
    assert info.classifier, "no classifier reported"
    removed_weight = f"{info.classifier[0]}.weight"
    assert removed_weight in classifier_shapes
    assert classifier_shapes[removed_weight][0] == 1000
    assert info.removed_params > 0
    # every body tensor is the source tensor, bit for bit, under the same name
    body_state = grafted.body.model.state_dict()
    assert set(body_state) <= set(source)
    for key, tensor in body_state.items():
        assert tensor.shape == source[key].shape, key
        if device == "cpu":
            assert torch.equal(tensor, source[key]), f"{key} changed by graft"
    assert removed_weight not in body_state
    # the head is new: its parameters are recorded as new and are not any source tensor
    head_params = dict(grafted.head.named_parameters())
    assert set(info.new) == {f"head.{n}" for n in head_params}
    assert set(info.pretrained) == {f"body.{n}" for n, _ in grafted.body.named_parameters()}
    assert grafted.head[-1].out_features == 7
    if device == "cpu":
        source_values = [v for v in source.values() if v.is_floating_point()]
        for param in head_params.values():
            assert not any(v.shape == param.shape and torch.equal(v, param) for v in source_values)
    # forward at the minimum input size, in both modes
    x = torch.randn(2, *size, device=device)
    grafted.eval()
    with torch.no_grad():
        assert grafted(x).shape == (2, 7)
        grafted.train()
        assert grafted(x).shape == (2, 7)
