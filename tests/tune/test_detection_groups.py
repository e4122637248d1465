"""Layer groups of detectors: every torchvision detection builder and graft_detector's output split into the
backbone's own groups, then neck, proposal network, box heads and class layers, each parameter in exactly one
group; freeze trains the new groups only, and a frozen body holds its BatchNorm statistics."""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision
from torch import nn
from torchvision.models import get_model, list_models

from torchgraft import LayerGroups, freeze, graft_detector, layer_groups, regraft_detection, unfreeze
from torchgraft.grafting.redetect import class_layers
from torchgraft.tune.names import under

BUILDERS = list_models(module=torchvision.models.detection)


def _meta(name: str) -> nn.Module:
    with torch.device("meta"):
        return get_model(name, weights=None, weights_backbone=None)


def _check_cover(model: nn.Module, groups: LayerGroups) -> None:
    names = [name for group in groups for name in group.names]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())  # every parameter, exactly once
    assert len(set(names)) == len(names) and groups.unassigned == ()


@pytest.mark.parametrize("name", BUILDERS)
def test_every_builder_splits_body_neck_rpn_box_heads_head(name: str) -> None:
    model = _meta(name)
    groups = layer_groups(model)
    _check_cover(model, groups)
    order = [g.name for g in groups]
    body = [g for g in order if g.startswith("body")]
    assert len(body) >= 2 and order[: len(body)] == [f"body{i}" for i in range(len(body))]
    expected = ["neck", "rpn", "box_heads", "head"] if "rcnn" in name else ["neck", "box_heads", "head"]
    assert order[len(body) :] == expected
    backbone = "backbone.features" if name.startswith("ssd") else "backbone.body"
    assert all(n.startswith(f"{backbone}.") for g in groups[: len(body)] for n in g.names)
    if "resnet50" in name:  # the ResNet inside torchvision's IntermediateLayerGetter splits as a ResNet
        assert len(body) == 2 and groups[1].names[0] == "backbone.body.layer3.0.conv1.weight"
    assert set(groups[-1].names) == {
        n for n, _ in model.named_parameters() if under(n, [layer for layer, _ in class_layers(model)])
    }
    if "rcnn" in name:
        assert all(n.startswith("rpn.") for n in groups[-3].names)
        assert all(n.startswith("roi_heads.") for n in groups[-2].names)  # no longer lumped with the predictor
    assert groups.n_new == 1  # a pretrained detector: freeze trains its class layers


def test_graft_detector_groups_split_the_backbone_as_it_splits_alone() -> None:
    detector = graft_detector(torchvision.models.resnet18(), 3, head="fasterrcnn")
    groups = layer_groups(detector)
    _check_cover(detector, groups)
    assert [g.name for g in groups] == ["body0", "body1", "neck", "rpn", "box_heads", "head"]
    assert "family resnet" in groups.spec.method  # fastai's resnet split: layer3 starts the second group
    assert groups[1].names[0] == "backbone.body.model.layer3.0.conv1.weight"
    assert groups.n_new == 4  # all of neck, rpn, box heads and class layers are new
    timm_groups = layer_groups(graft_detector(timm.create_model("convnext_atto", pretrained=False), 3))
    assert "timm group_matcher" in timm_groups.spec.method
    assert [g.name for g in timm_groups][-3:] == ["neck", "box_heads", "head"]


def test_n_counts_all_groups_and_blocks_split_the_body_per_block() -> None:
    model = _meta("fasterrcnn_mobilenet_v3_large_fpn")
    assert [g.name for g in layer_groups(model, n=6)] == ["body0", "body1", "neck", "rpn", "box_heads", "head"]
    blocks = layer_groups(model, n="blocks")
    assert sum(g.name.startswith("body") for g in blocks) > 5
    with pytest.raises(ValueError, match=r"n=4 leaves no body group .* pass n >= 5"):
        layer_groups(model, n=4)
    with pytest.raises(ValueError, match="n must be an int"):
        layer_groups(model, n="stages")


def test_freeze_trains_the_new_groups_and_the_split_follows_a_rehead() -> None:
    model = get_model("retinanet_resnet50_fpn", weights=None, weights_backbone=None)
    freeze(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"head.classification_head.cls_logits.weight", "head.classification_head.cls_logits.bias"}
    regraft_detection(model, 2)  # new class layers: the stored rules name them, they land in the head group
    groups = layer_groups(model)
    assert groups[-1].names == (
        "head.classification_head.cls_logits.weight",
        "head.classification_head.cls_logits.bias",
    )
    unfreeze(model)
    assert all(p.requires_grad for p in model.parameters())
    detector = graft_detector(torchvision.models.resnet18(), 3)
    freeze(detector)
    for name, param in detector.named_parameters():
        assert param.requires_grad is not name.startswith("backbone.body.")


def test_freezing_the_body_holds_its_batchnorm_statistics() -> None:
    torch.manual_seed(0)
    detector = graft_detector(torchvision.models.resnet18(), 2, batch_norm="train", min_size=64)
    freeze(detector)
    bns = [m for m in detector.backbone.body.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns
    before = [bn.running_mean.clone() for bn in bns]
    detector.train()
    images = [torch.rand(3, 64, 64)]
    targets = [{"boxes": torch.tensor([[4.0, 4.0, 40.0, 40.0]]), "labels": torch.tensor([1])}]
    detector(images, targets)
    assert all(torch.equal(bn.running_mean, old) for bn, old in zip(bns, before, strict=True))
    unfreeze(detector)  # trainable again: the statistics move
    detector.train()
    detector(images, targets)
    assert not all(torch.equal(bn.running_mean, old) for bn, old in zip(bns, before, strict=True))
    # the default: FrozenBatchNorm2d, whose statistics are buffers that never move, frozen or not
    frozen = graft_detector(torchvision.models.resnet18(), 2)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in frozen.backbone.body.modules())


def test_describe_shows_the_detector_its_class_layers_and_groups() -> None:
    from torchgraft import describe

    text = describe(graft_detector(torchvision.models.resnet18(), 3, head="fasterrcnn"))
    assert "ResNet grafted -> a FasterRCNN for 3 classes" in text
    assert "roi_heads.box_predictor.cls_score Linear(in_features=1024, out_features=4" in text
    assert "tap 'layer4': stride 32, 512 channels" in text and "box_heads" in text
    model = get_model("ssdlite320_mobilenet_v3_large", weights=None, weights_backbone=None)
    text = describe(regraft_detection(model, ["dog"]))
    assert "SSD grafted -> a SSD for 1 classes" in text and "rows kept from the old head: dog" in text
