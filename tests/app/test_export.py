"""Exported models rebuild from model.safetensors + model.json alone, across architectures and graft kinds: the
recorded graft replayed without a dry run, the weights loaded with exact keys, bit-equal to the trained model."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from conftest import minilm_folder
from torchgraft import (
    ExportError,
    Preprocessing,
    Regression,
    Segmentation,
    Segmenter,
    TextPreprocessing,
    export_model,
    graft,
    graft_dense,
    load_exported,
    preprocessing_for,
)
from torchgraft.grafting import channels, dryrun, surgery
from torchgraft.grafting.decoders import UNET_WIDTHS
from torchgraft.weights.hf import hf_text_model
from torchgraft.weights.zoo import build_model

# one of each graft method: classifier replaced in place, conv classifier (squeezenet), aux heads removed
# (googlenet), pooling cut (mlp head), timm's reset_classifier
CASES = [
    ("resnet18", {"head": "linear"}),
    ("mobilenet_v3_small", {"head": "mlp", "pool": "concat"}),
    ("squeezenet1_1", {"head": "linear"}),
    ("googlenet", {"head": "linear"}),
    ("regnet_y_400mf", {"head": "mlp", "hidden": [32], "dropout": 0.0}),
    ("timm/efficientnet_lite0", {"head": "linear"}),
]


@pytest.mark.parametrize(("architecture", "options"), CASES, ids=[c[0] for c in CASES])
def test_export_round_trip_gives_the_same_logits(architecture, options, tmp_path):
    if architecture.startswith("timm/"):
        pytest.importorskip("timm")
    prep = preprocessing_for(architecture, size=64)
    model = graft(build_model(architecture, device="cpu"), 4, input_size=(3, 64, 64), **options).eval()
    classes = ["a", "b", "c", "d"]
    export_model(tmp_path, model, architecture=architecture, classes=classes, preprocessing=prep)
    exported = load_exported(tmp_path)
    assert exported.classes == classes and exported.preprocessing == prep
    _assert_bit_equal(model, exported.model, torch.randn(2, 3, 64, 64))
    config = json.loads((tmp_path / "model.json").read_text())
    assert config["graft"] == model.info.record() and config["torchgraft_version"]
    recorded = {**config["graft"]["options"], "pool": config["graft"]["pool"]}
    assert {k: recorded[k] for k in options} == options


def _assert_bit_equal(model: nn.Module, rebuilt: nn.Module, *inputs, **kwargs) -> None:
    """The same state dict (keys, order, values), the same record and the same outputs."""
    trained, loaded = model.state_dict(), rebuilt.state_dict()
    assert list(trained) == list(loaded)
    for key, tensor in trained.items():
        assert torch.equal(tensor, loaded[key]), key
    assert rebuilt.info == model.info
    model.eval(), rebuilt.eval()
    with torch.no_grad():
        assert torch.equal(model(*inputs, **kwargs), rebuilt(*inputs, **kwargs))


def _trained(model: nn.Module) -> nn.Module:
    """``model`` with every tensor moved away from its initialisation (as after training): a rebuild that
    reinitialised or mismatched any tensor would give other outputs."""
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(torch.rand_like(tensor) * 0.01)
    return model


def test_a_regression_head_with_y_range_and_in_chans_replays_bit_equal(tmp_path):
    prep = preprocessing_for("resnet18", size=64)
    options = {"head": "mlp", "y_range": (-1.0, 4.5), "hidden": (32, 16), "in_chans": 1}
    model = _trained(graft(build_model("resnet18", device="cpu"), 2, input_size=(3, 64, 64), **options))
    export_model(tmp_path, model, architecture="resnet18", classes=["x", "y"], preprocessing=prep, task=Regression())
    exported = load_exported(tmp_path)
    _assert_bit_equal(model, exported.model, torch.randn(3, 1, 64, 64))
    assert exported.model.head[-1].low == -1.0 and exported.model.head[-1].high == 4.5
    assert isinstance(exported.task, Regression)


@pytest.mark.parametrize(("decoder", "widths"), [("unet", UNET_WIDTHS), ("unet", (64, 32, 16)), ("fpn", UNET_WIDTHS)])
def test_a_dense_unet_or_fpn_graft_replays_bit_equal(decoder, widths, tmp_path):
    prep = Preprocessing(64, 64, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    source = build_model("resnet18", device="cpu")
    model = _trained(graft_dense(source, 5, decoder=decoder, widths=widths, input_size=(3, 64, 64)))
    classes = [f"c{i}" for i in range(5)]
    export_model(tmp_path, model, architecture="resnet18", classes=classes, preprocessing=prep, task=Segmentation())
    exported = load_exported(tmp_path)
    assert isinstance(exported.model, Segmenter) and exported.model.taps == model.taps
    _assert_bit_equal(model, exported.model, torch.randn(2, 3, 64, 80))
    assert json.loads((tmp_path / "model.json").read_text())["graft"]["options"]["widths"] == list(widths)


def test_a_minilm_text_graft_replays_bit_equal(tmp_path):
    pytest.importorskip("transformers")
    encoder, tokenizer, _ = hf_text_model(f"hf/{minilm_folder()}")
    model = _trained(graft(encoder, 3, head="linear", pool="mean", y_range=(0.0, 1.0)))
    tokenizer.save_pretrained(str(tmp_path / "hf"))
    encoder.config.save_pretrained(str(tmp_path / "hf"))
    prep = TextPreprocessing("hf", 64)
    export_model(tmp_path, model, architecture=f"hf/{minilm_folder()}", classes=["a", "b", "c"], preprocessing=prep)
    exported = load_exported(tmp_path)
    batch = tokenizer(["a short text", "and a somewhat longer second text to pad the first"], padding=True)
    inputs = {k: torch.tensor(v) for k, v in batch.items()}
    _assert_bit_equal(model, exported.model, **inputs)


def test_the_replay_runs_no_dry_run(tmp_path, monkeypatch):
    prep = preprocessing_for("mobilenet_v3_small", size=64)
    model = graft(build_model("mobilenet_v3_small", device="cpu"), 2, input_size=(3, 64, 64), pool="avg")
    export_model(tmp_path, model, architecture="mobilenet_v3_small", classes=["a", "b"], preprocessing=prep)

    def no_dry_run(*args, **kwargs):
        raise AssertionError("load_exported ran a dry run")

    monkeypatch.setattr(dryrun, "trace", no_dry_run)
    monkeypatch.setattr(surgery, "trace", no_dry_run)
    monkeypatch.setattr(channels, "trace", no_dry_run)
    _assert_bit_equal(model, load_exported(tmp_path).model, torch.randn(2, 3, 64, 64))


def test_a_renamed_key_is_an_error_not_a_fuzzy_match(tmp_path):
    prep = preprocessing_for("resnet18", size=64)
    model = graft(build_model("resnet18", device="cpu"), 2, input_size=(3, 64, 64))
    export_model(tmp_path, model, architecture="resnet18", classes=["a", "b"], preprocessing=prep)
    path = tmp_path / "model.safetensors"
    tensors = load_file(path)
    tensors["body.model.layer1.0.conv1.kernel"] = tensors.pop("body.model.layer1.0.conv1.weight")
    save_file(tensors, path)
    with pytest.raises(
        ExportError,
        match=r"missing in model\.safetensors: body\.model\.layer1\.0\.conv1\.weight; "
        r"unexpected: body\.model\.layer1\.0\.conv1\.kernel\).*exact keys",
    ):
        load_exported(tmp_path)
    tensors["body.model.layer1.0.conv1.weight"] = tensors.pop("body.model.layer1.0.conv1.kernel")[:, :32].contiguous()
    save_file(tensors, path)
    with pytest.raises(ExportError, match=r"size mismatch for body\.model\.layer1\.0\.conv1\.weight"):
        load_exported(tmp_path)


def test_export_errors(tmp_path):
    prep = preprocessing_for("resnet18", size=64)
    model = graft(build_model("resnet18", device="cpu"), 2, input_size=(3, 64, 64))
    with pytest.raises(ExportError, match=r"ResNet was not made by torchgraft\.graft"):
        export_model(tmp_path, build_model("resnet18", device="cpu"), architecture="resnet18", classes=["a", "b"],
                     preprocessing=prep)  # fmt: skip
    own_head = graft(build_model("resnet18", device="cpu"), 2, head=nn.Linear(512, 2), input_size=(3, 64, 64))
    with pytest.raises(ExportError, match=r"the head is your own module .*cannot rebuild it"):
        export_model(tmp_path, own_head, architecture="resnet18", classes=["a", "b"], preprocessing=prep)
    with pytest.raises(ExportError, match=r"classes names 3 classes but the model has 2 outputs"):
        export_model(tmp_path, model, architecture="resnet18", classes=["a", "b", "c"], preprocessing=prep)
    with pytest.raises(FileNotFoundError, match="not an exported model"):
        load_exported(tmp_path / "nothing")
    export_model(tmp_path, model, architecture="resnet18", classes=["a", "b"], preprocessing=prep)
    config = json.loads((tmp_path / "model.json").read_text())
    (tmp_path / "model.json").write_text(json.dumps({**config, "format": "torchgraft-export/1"}))
    with pytest.raises(ExportError, match=r"torchgraft-export/1.*reads 'torchgraft-export/2'; export the model again"):
        load_exported(tmp_path)
    (tmp_path / "model.json").write_text(json.dumps({**config, "architecture": "resnet34"}))
    with pytest.raises(
        ExportError, match=r"does not fit resnet34 .*missing in model\.safetensors: body\.model\.layer1\.2"
    ):
        load_exported(tmp_path)
    (tmp_path / "model.json").write_text(json.dumps({**config, "architecture": "mobilenet_v2"}))
    with pytest.raises(ExportError, match=r"the record grafts a ResNet, not a MobileNetV2"):
        load_exported(tmp_path)
