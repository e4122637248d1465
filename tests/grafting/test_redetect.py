"""regraft_detection on every torchvision detection builder (weights=None, nothing downloaded): new class
layers of the right shapes with the background convention, COCO's rows kept by name (read from torchvision's
weights metadata), a forward in training and evaluation mode, the meta device, the record and its replay."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torchvision.models import get_model, list_models
from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights

from torchgraft import label_offset, regraft_detection, replay_graft
from torchgraft.grafting.redetect import class_layers, is_detector

BUILDERS = list_models(module=torchvision.models.detection)
COCO = FasterRCNN_ResNet50_FPN_Weights.DEFAULT.meta["categories"]
BACKGROUND = ("fasterrcnn", "maskrcnn", "keypointrcnn", "ssd")  # index 0 is the background


def _build(name: str, **kwargs: object) -> torch.nn.Module:
    return get_model(name, weights=None, weights_backbone=None, **kwargs)


def _anchor_major(weight: torch.Tensor, classes: int, per_class: int) -> torch.Tensor:
    """``(anchors, classes, per_class, ...)``: torchvision's layout of a class layer's outputs."""
    return weight.reshape(-1, classes, per_class, *weight.shape[1:])


def test_every_torchvision_detection_builder_is_covered() -> None:
    assert len(BUILDERS) >= 12 and all(
        any(name.startswith(b) for b in (*BACKGROUND, "retinanet", "fcos")) for name in BUILDERS
    )


@pytest.mark.parametrize("name", BUILDERS)
def test_new_heads_have_the_right_shapes_and_keep_cocos_rows_by_name(name: str) -> None:
    torch.manual_seed(0)
    model = _build(name)
    layers = class_layers(model)
    old_count = 2 if name.startswith("keypointrcnn") else len(COCO)
    old = {layer: (model.get_submodule(layer).weight.detach().clone(), model.get_submodule(layer).bias.detach().clone())
           for layer, _ in layers}  # fmt: skip
    classes = ["dog", "person", "unicorn"]
    regraft_detection(model, classes)
    background = name.startswith(BACKGROUND)
    offset = label_offset(model)
    assert offset == int(background)
    total = len(classes) + offset
    names = ["no person", "person"] if old_count == 2 else COCO
    kept = [c for c in classes if c in names]
    assert model.info.options["kept"] == tuple(kept)
    for layer, per_class in layers:
        new = model.get_submodule(layer)
        old_weight, old_bias = old[layer]
        assert new.weight.shape[0] * old_count == old_weight.shape[0] * total  # anchors x classes x per_class
        new_w, old_w = _anchor_major(new.weight, total, per_class), _anchor_major(old_weight, old_count, per_class)
        new_b, old_b = _anchor_major(new.bias, total, per_class), _anchor_major(old_bias, old_count, per_class)
        for j, cls in enumerate(classes):
            if cls in names:
                i = names.index(cls)
                assert torch.equal(new_w[:, j + offset], old_w[:, i]) and torch.equal(new_b[:, j + offset], old_b[:, i])
            else:
                assert not torch.equal(new_w[:, j + offset], old_w[:, min(j + offset, old_count - 1)])
        if background:
            assert torch.equal(new_w[:, 0], old_w[:, 0])
    assert set(model.info.new) == {
        n for n, _ in model.named_parameters() if any(n.startswith(f"{layer}.") for layer, _ in layers)
    }
    assert set(model.guard.records) == set(model.info.pretrained)


@pytest.mark.parametrize("name", BUILDERS)
def test_reheading_on_the_meta_device(name: str) -> None:
    with torch.device("meta"):
        model = _build(name)
    regraft_detection(model, 7)
    for layer, _ in class_layers(model):
        assert model.get_submodule(layer).weight.is_meta
    if name.startswith(("retinanet", "fcos")):
        assert model.head.classification_head.num_classes == 7
    elif name.startswith("ssd"):
        assert model.head.classification_head.num_columns == 8
    else:
        assert model.roi_heads.box_predictor.cls_score.out_features == 8
        assert model.roi_heads.box_predictor.bbox_pred.out_features == 32


FORWARD = [
    "fasterrcnn_mobilenet_v3_large_320_fpn",
    "ssdlite320_mobilenet_v3_large",
    "retinanet_resnet50_fpn",
    "fcos_resnet50_fpn",
    "maskrcnn_resnet50_fpn",
]  # each 1-3 s at 64 px on an idle 2-core CPU


@pytest.mark.parametrize("name", FORWARD)
def test_a_reheaded_detector_trains_and_predicts(name: str) -> None:
    torch.manual_seed(0)
    sizes = {} if name.startswith("ssd") else {"min_size": 64, "max_size": 96}
    model = regraft_detection(_build(name, **sizes), ["cat", "dog"])
    if name.startswith("ssd"):  # SSD resizes to its own size: a smaller one keeps the test fast
        model.transform.fixed_size, model.transform.min_size, model.transform.max_size = (128, 128), (128,), 128
    offset = label_offset(model)
    images = [torch.rand(3, 64, 80), torch.rand(3, 80, 64)]
    targets = []
    for i in range(2):
        target = {"boxes": torch.tensor([[4.0, 4.0, 40.0, 44.0]]), "labels": torch.tensor([i + offset])}
        if name.startswith("maskrcnn"):
            mask = torch.zeros(1, *images[i].shape[1:], dtype=torch.uint8)
            mask[:, 4:44, 4:40] = 1
            target["masks"] = mask
        targets.append(target)
    model.train()
    losses = model(images, targets)
    assert losses and all(torch.isfinite(v) for v in losses.values())
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2 and out[0]["boxes"].shape[-1] == 4
    labels = torch.cat([o["labels"] for o in out])
    assert ((labels >= offset) & (labels < 2 + offset)).all()


@pytest.mark.parametrize("kind", ["retinanet", "fcos"])
def test_a_reheaded_retinanet_or_fcos_trains_and_predicts(kind: str) -> None:
    """torchvision's RetinaNet / FCOS classes on a ResNet-18 FPN: a head of COCO's size that no builder made."""
    from torchvision.models.detection import FCOS, RetinaNet
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    torch.manual_seed(0)
    backbone = resnet_fpn_backbone(
        backbone_name="resnet18", weights=None, trainable_layers=5, returned_layers=[2, 3, 4],
        extra_blocks=LastLevelP6P7(256, 256),
    )  # fmt: skip
    model = (RetinaNet if kind == "retinanet" else FCOS)(backbone, 91, min_size=64, max_size=96)
    old = model.head.classification_head.cls_logits.weight.detach().clone()
    regraft_detection(model, ["cat", "dog"])
    new = _anchor_major(model.head.classification_head.cls_logits.weight, 2, 1)
    assert torch.equal(new[:, 0], _anchor_major(old, 91, 1)[:, COCO.index("cat")])
    images = [torch.rand(3, 64, 80), torch.rand(3, 80, 64)]
    targets = [{"boxes": torch.tensor([[4.0, 4.0, 40.0, 44.0]]), "labels": torch.tensor([i])} for i in range(2)]
    model.train()
    losses = model(images, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    model.eval()
    with torch.no_grad():
        labels = torch.cat([o["labels"] for o in model(images)])
    assert ((labels >= 0) & (labels < 2)).all()


def test_class_subset_keeps_those_coco_classes() -> None:
    model = _build("retinanet_resnet50_fpn")
    old = model.head.classification_head.cls_logits.weight.detach().clone()
    regraft_detection(model, class_subset=["cat", "dog"])
    assert model.head.classification_head.num_classes == 2 and model.info.options["classes"] == ("cat", "dog")
    new = _anchor_major(model.head.classification_head.cls_logits.weight, 2, 1)
    assert torch.equal(new[:, 1], _anchor_major(old, 91, 1)[:, COCO.index("dog")])
    # with classes given, only the subset keeps its rows
    model = _build("fasterrcnn_mobilenet_v3_large_320_fpn")
    regraft_detection(model, ["cat", "dog", "bird"], class_subset=["dog"])
    assert model.info.options["kept"] == ("dog",)


def test_an_int_keeps_only_the_background_and_old_classes_name_the_rows() -> None:
    model = _build("fasterrcnn_mobilenet_v3_large_320_fpn")
    old = model.roi_heads.box_predictor.cls_score.weight.detach().clone()
    regraft_detection(model, 4)
    assert model.info.options["kept"] == () and model.roi_heads.box_predictor.cls_score.out_features == 5
    assert torch.equal(model.roi_heads.box_predictor.cls_score.weight[0], old[0])
    # a head of your own classes: old_classes names its outputs (background left out)
    model = regraft_detection(_build("fcos_resnet50_fpn"), ["a", "b", "c"])
    logits = model.head.classification_head.cls_logits.weight.detach().clone()
    regraft_detection(model, ["c", "a"])  # the names recorded by the first regraft
    assert model.info.options["kept"] == ("c", "a")
    assert torch.equal(model.head.classification_head.cls_logits.weight[0], logits[2])


def test_a_graft_of_ours_is_never_taken_for_coco() -> None:
    from torchgraft import graft_detector

    detector = graft_detector(torchvision.models.resnet18(), 90, head="fasterrcnn")  # 91 outputs, unnamed
    regraft_detection(detector, ["person", "dog"])
    assert detector.info.options["kept"] == ()
    assert detector.info.method == "detector" and detector.info.n_out == 2  # still graft_detector's record
    assert detector.roi_heads.box_predictor.cls_score.out_features == 3


def test_replay_rebuilds_a_reheaded_detector() -> None:
    model = regraft_detection(_build("ssdlite320_mobilenet_v3_large"), ["cat", "dog"])
    rebuilt = replay_graft(_build("ssdlite320_mobilenet_v3_large"), model.info.record())
    state = model.state_dict()
    rebuilt.load_state_dict(state, strict=True)
    assert rebuilt.head.classification_head.num_columns == 3 and rebuilt.info.options["classes"] == ("cat", "dog")


def test_errors_say_what_was_wrong() -> None:
    assert not is_detector(torchvision.models.resnet18())
    with pytest.raises(TypeError, match=r"ResNet is not a torchvision detector .*graft_detector"):
        regraft_detection(torchvision.models.resnet18(), 3)
    model = _build("fasterrcnn_mobilenet_v3_large_320_fpn")
    with pytest.raises(ValueError, match="give classes"):
        regraft_detection(model)
    with pytest.raises(ValueError, match="positive int, got 0"):
        regraft_detection(model, 0)
    with pytest.raises(ValueError, match=r"class_subset names \['helmet'\], which the old head does not have"):
        regraft_detection(model, class_subset=["dog", "helmet"])
    with pytest.raises(ValueError, match="old_classes has 3 names but the old head has 91 outputs"):
        regraft_detection(model, ["dog"], old_classes=["a", "b", "c"])
    with pytest.raises(TypeError, match="label_offset: ResNet is not a torchvision or Hugging Face detector"):
        label_offset(torchvision.models.resnet18())
