"""A graft's record rebuilds it: ``replay_graft`` on a fresh source network gives the same modules under the same
names (strict ``load_state_dict``), the same record and bit-equal outputs, for every graft method, without a
dry run."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from torchgraft import GraftInfo, graft, graft_dense, replay_graft
from torchgraft.grafting import GraftRecordError, channels, dryrun, surgery
from torchgraft.weights.zoo import build_model

SIZE = (3, 64, 64)
# (architecture, graft options, the method the graft uses)
CASES = [
    ("resnet18", {}, "classifier"),
    ("googlenet", {}, "classifier"),  # train-only auxiliary heads dropped
    ("mobilenet_v3_small", {"pool": "avg", "head": "mlp", "hidden": [24]}, "unpooled"),  # cut before pooling, pruned
    ("resnet18", {"cut": "layer3", "head": "mlp", "dropout": 0.2, "batch_norm": False}, "cut"),
    ("resnet18", {"cut": -2, "y_range": (0.0, 2.0)}, "cut"),
    ("resnet18", {"in_chans": 4}, "classifier"),
    ("timm/efficientnet_lite0", {}, "timm"),
    ("timm/efficientnet_lite0", {"pool": "max"}, "timm-features"),
]


def _no_dry_run(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("the replay ran a dry run")

    for module in (dryrun, surgery, channels):
        monkeypatch.setattr(module, "trace", refuse)


def _perturbed(model: nn.Module) -> nn.Module:
    """Every float tensor moved off its initialisation, as training would (BatchNorm statistics too)."""
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(torch.rand_like(tensor) * 0.01)
    return model.eval()


def _replayed(architecture: str, model: nn.Module, monkeypatch: pytest.MonkeyPatch) -> nn.Module:
    record = json.loads(json.dumps(model.info.record()))  # through JSON, as model.json stores it
    fresh = build_model(architecture, device="cpu")
    with monkeypatch.context() as patch:
        _no_dry_run(patch)
        rebuilt = replay_graft(fresh, record)
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    return rebuilt.eval()


@pytest.mark.parametrize(("architecture", "options", "method"), CASES, ids=[f"{c[0]}-{c[2]}" for c in CASES])
def test_every_graft_method_replays_bit_equal_without_a_dry_run(architecture, options, method, monkeypatch):
    if architecture.startswith("timm/"):
        pytest.importorskip("timm")
    model = _perturbed(graft(build_model(architecture, device="cpu"), 3, input_size=SIZE, **options))
    assert model.info.method == method
    rebuilt = _replayed(architecture, model, monkeypatch)
    assert rebuilt.info == model.info and GraftInfo.from_record(model.info.record()).n_out == 3
    assert repr(rebuilt) == repr(model)
    x = torch.randn(2, options.get("in_chans", 3), *SIZE[1:])
    with torch.no_grad():
        assert torch.equal(model(x), rebuilt(x))


@pytest.mark.parametrize(
    ("architecture", "options"),
    [("resnet18", {"decoder": "fpn"}), ("deeplabv3_mobilenet_v3_large", {"aux": "replace"}),
     ("deeplabv3_mobilenet_v3_large", {"aux": "drop"})],
    ids=["fpn", "resegment-aux-replace", "resegment-aux-drop"],
)  # fmt: skip
def test_dense_and_new_classifier_grafts_replay_bit_equal(architecture, options, monkeypatch):
    model = _perturbed(graft_dense(build_model(architecture, device="cpu"), 4, input_size=SIZE, **options))
    rebuilt = _replayed(architecture, model, monkeypatch)
    assert rebuilt.info == model.info and repr(rebuilt) == repr(model)
    x = torch.randn(2, 3, 64, 72)
    with torch.no_grad():
        assert torch.equal(model(x), rebuilt(x))


def test_what_a_record_cannot_rebuild_is_refused():
    by_hand = graft(build_model("resnet18", device="cpu"), 2, head=nn.Linear(512, 2), input_size=SIZE)
    with pytest.raises(GraftRecordError, match=r"the head is your own module .*rebuild it in your code"):
        replay_graft(build_model("resnet18", device="cpu"), by_hand.info.record())
    cut_by_code = graft(
        build_model("resnet18", device="cpu"), 2, cut=lambda m: nn.Sequential(*list(m.children())[:-2]), pool="avg"
    )
    with pytest.raises(GraftRecordError, match=r"cut by your own callable"):
        replay_graft(build_model("resnet18", device="cpu"), cut_by_code.info)
    record = graft(build_model("resnet18", device="cpu"), 2, input_size=SIZE).info.record()
    with pytest.raises(GraftRecordError, match=r"record version 0; this torchgraft reads version 1"):
        replay_graft(build_model("resnet18", device="cpu"), {**record, "record": 0})
    with pytest.raises(GraftRecordError, match=r"unknown fields \['kind'\]"):
        replay_graft(build_model("resnet18", device="cpu"), {**record, "kind": "dense"})
    with pytest.raises(GraftRecordError, match=r"grafts a ResNet, not a MobileNetV2"):
        replay_graft(build_model("mobilenet_v2", device="cpu"), record)
