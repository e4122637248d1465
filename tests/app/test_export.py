"""Exported models rebuild from model.safetensors + model.json alone, across architectures and graft kinds."""

from __future__ import annotations

import json

import pytest
import torch

from torchgraft import ExportError, export_model, graft, load_exported, preprocessing_for
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
    export_model(tmp_path, model, architecture=architecture, classes=classes, preprocessing=prep, graft_options=options)
    exported = load_exported(tmp_path)
    assert exported.classes == classes and exported.preprocessing == prep
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), exported.model(x))
    config = json.loads((tmp_path / "model.json").read_text())
    assert config["graft"] == {"n_out": 4, **options} and config["torchgraft_version"]


def test_export_errors(tmp_path):
    prep = preprocessing_for("resnet18", size=64)
    model = graft(build_model("resnet18", device="cpu"), 2, input_size=(3, 64, 64))
    with pytest.raises(ExportError, match=r"graft options \['guard'\] cannot be stored"):
        export_model(
            tmp_path,
            model,
            architecture="resnet18",
            classes=["a", "b"],
            preprocessing=prep,
            graft_options={"guard": False},
        )
    with pytest.raises(FileNotFoundError, match="not an exported model"):
        load_exported(tmp_path / "nothing")
    export_model(tmp_path, model, architecture="resnet18", classes=["a", "b"], preprocessing=prep)
    config = json.loads((tmp_path / "model.json").read_text())
    (tmp_path / "model.json").write_text(json.dumps({**config, "format": "torchgraft-export/99"}))
    with pytest.raises(ExportError, match="torchgraft-export/99"):
        load_exported(tmp_path)
    (tmp_path / "model.json").write_text(json.dumps({**config, "architecture": "resnet34"}))
    with pytest.raises(ExportError, match=r"does not fit resnet34 .*missing in the checkpoint: body\.model\.layer1\.2"):
        load_exported(tmp_path)
