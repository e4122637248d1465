"""regraft_detection on Hugging Face DETR-style detectors built from small configs (nothing downloaded): DETR
and YOLOS keep their last "no object" output, Conditional DETR has none; rows kept by the config's names, the
config's labels rewritten, the loss computed for the new classes, the record replayed."""

from __future__ import annotations

import pytest
import torch

from torchgraft import label_offset, regraft_detection, replay_graft

transformers = pytest.importorskip("transformers")

LABELS = {0: "cat", 1: "dog", 2: "car"}
SMALL = {"d_model": 32, "encoder_layers": 1, "decoder_layers": 1, "encoder_ffn_dim": 32, "decoder_ffn_dim": 32,
         "num_queries": 10, "encoder_attention_heads": 2, "decoder_attention_heads": 2}  # fmt: skip


def _detr() -> torch.nn.Module:
    config = transformers.DetrConfig(
        use_timm_backbone=True, use_pretrained_backbone=False, backbone="resnet18", id2label=LABELS, **SMALL
    )
    return transformers.DetrForObjectDetection(config)


def _conditional_detr() -> torch.nn.Module:
    config = transformers.ConditionalDetrConfig(
        use_timm_backbone=True, use_pretrained_backbone=False, backbone="resnet18", id2label=LABELS, **SMALL
    )
    return transformers.ConditionalDetrForObjectDetection(config)


def _yolos() -> torch.nn.Module:
    config = transformers.YolosConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, image_size=[64, 64],
        num_detection_tokens=5, id2label=LABELS,
    )  # fmt: skip
    return transformers.YolosForObjectDetection(config)


CASES = [("detr", _detr, "class_labels_classifier", True),
         ("conditional_detr", _conditional_detr, "class_labels_classifier", False),
         ("yolos", _yolos, "class_labels_classifier.layers.2", True)]  # fmt: skip


@pytest.mark.parametrize(("name", "make", "layer", "no_object"), CASES, ids=[c[0] for c in CASES])
def test_hugging_face_detectors_keep_rows_by_the_configs_names(name, make, layer, no_object) -> None:
    torch.manual_seed(0)
    model = make()
    old = model.get_submodule(layer).weight.detach().clone()
    regraft_detection(model, ["dog", "zebra"])
    new = model.get_submodule(layer)
    assert new.out_features == 2 + int(no_object) and label_offset(model) == 0
    assert torch.equal(new.weight[0], old[1])  # dog keeps its row
    assert not torch.equal(new.weight[1], old[2])
    if no_object:  # "no object" stays the last output
        assert torch.equal(new.weight[-1], old[-1])
    assert model.config.id2label == {0: "dog", 1: "zebra"} and model.config.num_labels == 2
    assert model.info.options["kept"] == ("dog",) and model.info.options["no_object"] is no_object
    model.train()
    labels = [{"class_labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.3, 0.4]])}]
    out = model(pixel_values=torch.rand(1, 3, 64, 64), labels=labels)
    assert torch.isfinite(out.loss) and out.logits.shape[-1] == 2 + int(no_object)
    rebuilt = replay_graft(make(), model.info.record())
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    assert rebuilt.config.id2label == {0: "dog", 1: "zebra"}


def test_old_classes_name_a_hugging_face_head_without_its_no_object_output() -> None:
    model = _detr()
    old = model.class_labels_classifier.weight.detach().clone()
    regraft_detection(model, ["truck"], old_classes=["bus", "truck", "van"])
    assert torch.equal(model.class_labels_classifier.weight[0], old[1])
    assert torch.equal(model.class_labels_classifier.weight[1], old[3])  # "no object"
