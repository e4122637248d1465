"""Checkpoints of the full network into truncated copies (timm ``features_only`` encoders, the encoders
segmentation libraries build) and the reverse, by structure; a checkpoint whose keys all carry one extra
prefix, with one tensor of another shape, also beside head keys of their own; ambiguity still refused."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from conftest import efficientnet_lite0_checkpoint
from torchgraft import load_weights

timm = pytest.importorskip("timm")


def test_lite0_checkpoint_into_a_features_only_encoder():
    checkpoint = efficientnet_lite0_checkpoint()  # lukemelas names: _conv_stem, _blocks.N._depthwise_conv, _fc
    encoder = timm.create_model("efficientnet_lite0", features_only=True)  # 288 tensors, no conv_head/bn2/classifier
    report = load_weights(encoder, checkpoint)
    assert len(report.loaded) == len(encoder.state_dict()) == 288 and not report.ambiguous
    assert {m.how for m in report.loaded} == {"structure"} and len(report.unexpected) == 8
    assert sorted(report.unexpected)[:2] == ["_bn1.bias", "_bn1.num_batches_tracked"]
    full = timm.create_model("efficientnet_lite0")
    assert len(load_weights(full, checkpoint).loaded) == 296
    reference = full.state_dict()
    for name, tensor in encoder.state_dict().items():  # each tensor went where the full model put it
        assert torch.equal(tensor, reference[name]), name
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        assert torch.equal(encoder.eval()(x)[-1], full.eval().blocks(full.bn1(full.conv_stem(x))))


def test_a_truncated_checkpoint_into_the_full_network():
    saved = torch.load(efficientnet_lite0_checkpoint(), weights_only=True)
    truncated = {k: v for k, v in saved.items() if not k.startswith(("_conv_head", "_bn1", "_fc"))}
    full = timm.create_model("efficientnet_lite0")
    report = load_weights(full, truncated)
    assert len(report.loaded) == len(truncated) == 288 and not report.ambiguous and not report.unexpected
    assert sorted(report.missing) == sorted(
        ["conv_head.weight", *(f"bn2.{n}" for n in ("weight", "bias", "running_mean", "running_var")),
         "bn2.num_batches_tracked", "classifier.weight", "classifier.bias"]
    )  # fmt: skip


def test_one_layer_that_fits_three_places_is_ambiguous_not_guessed():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = load_weights(model, {"proj.weight": torch.randn(4, 4), "proj.bias": torch.randn(4)})
    assert not report.loaded
    assert report.ambiguous == {
        "proj.weight": ["0.weight", "1.weight", "2.weight"],
        "proj.bias": ["0.bias", "1.bias", "2.bias"],
    }
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_extra_prefix_aligns_by_name_and_reports_the_one_wrong_shape():
    source = torchvision.models.mobilenet_v2().features
    source[0][0] = nn.Conv2d(4, 32, 3, 2, 1, bias=False)  # a 4-channel stem: the one tensor that cannot load
    checkpoint = {f"classifier.{k}": v for k, v in source.state_dict().items()}
    model = torchvision.models.mobilenet_v2().features  # keys are indices only: 0.0.weight, 0.1.running_mean, ...
    report = load_weights(model, checkpoint)
    assert report.mismatched == [("classifier.0.0.weight", "0.0.weight", (32, 4, 3, 3), (32, 3, 3, 3))]
    assert len(report.loaded) == len(checkpoint) - 1 and {m.how for m in report.loaded} == {"prefix"}
    assert not report.ambiguous and not report.unexpected
    stem_bn = {k: v for k, v in model.state_dict().items() if k.startswith("0.1.")}
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in stem_bn.items())  # the stem's BatchNorm loaded


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
def test_a_prefixed_backbone_beside_projector_keys_loads_all_but_the_wrong_shaped_stem(arch):
    """The seed's checkpoint: the network under ``classifier.`` (mobilenet_v2's own head becomes
    ``classifier.classifier.1.weight``), an SSL projector under ``projector.``, a 4-channel stem."""
    torch.manual_seed(0)
    source = getattr(torchvision.models, arch)()
    stem = "conv1" if arch == "resnet18" else "features.0.0"
    parent, _, leaf = stem.rpartition(".")
    old = source.get_submodule(stem)
    setattr(
        source.get_submodule(parent),
        leaf,
        nn.Conv2d(4, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False),
    )
    features = [m for m in source.modules() if isinstance(m, nn.Linear)][-1].in_features
    projector = nn.Sequential(nn.Linear(features, 256), nn.ReLU(), nn.Linear(256, 128))
    checkpoint = {f"classifier.{k}": v for k, v in source.state_dict().items()}
    checkpoint |= {f"projector.{k}": v for k, v in projector.state_dict().items()}
    model = getattr(torchvision.models, arch)(weights=None)
    stem_before = model.get_submodule(stem).weight.clone()
    report = load_weights(model, checkpoint)
    saved_stem, model_stem = (old.out_channels, 4, *old.kernel_size), tuple(stem_before.shape)
    assert report.mismatched == [(f"classifier.{stem}.weight", f"{stem}.weight", saved_stem, model_stem)]
    assert not report.ambiguous and not report.missing
    assert report.unexpected == ["projector.0.weight", "projector.0.bias", "projector.2.weight", "projector.2.bias"]
    state = model.state_dict()
    assert len(report.loaded) == len(state) - 1 and {m.how for m in report.loaded} == {"prefix"}
    for name, tensor in source.state_dict().items():  # the stem's BatchNorm and every other tensor loaded
        if name != f"{stem}.weight":
            assert torch.equal(state[name], tensor), name
    assert torch.equal(model.get_submodule(stem).weight, stem_before)  # the stem keeps its own values
