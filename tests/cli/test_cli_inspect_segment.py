"""``torchgraft inspect ARCH --task segment``: the taps the dry run finds, the decoder and the groups, on the meta
device; options that do not apply to a dense graft are refused in one line."""

from __future__ import annotations

import json

from torchgraft.cli.main import main


def test_inspect_shows_taps_decoder_and_groups(capsys):
    assert main(["inspect", "resnet50", "--task", "segment", "--n-out", "21", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert [(t["name"], t["stride"]) for t in record["taps"]] == [
        ("relu", 2), ("layer1", 4), ("layer2", 8), ("layer3", 16), ("layer4", 32)
    ]  # fmt: skip
    assert record["method"] == "dense" and record["decoder"] == "unet" and record["removed"] == ["fc"]
    assert [g["name"] for g in record["groups"]][-2:] == ["decoder", "head"]
    assert main(["inspect", "mobilenet_v3_large", "--task", "segment", "--decoder", "fpn"]) == 0
    text = capsys.readouterr().out
    assert "a fpn decoder reads the taps" in text and "tap 'features.1': stride 2" in text
    assert "decoder  decoder" in text  # the decoder's own layer group


def test_options_of_a_classification_head_are_refused(capsys):
    assert main(["inspect", "resnet50", "--task", "segment", "--pool", "avg", "--head", "mlp"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.endswith("--pool, --head do not apply.") and len(error.splitlines()) == 1


def test_inspect_a_network_that_already_segments(capsys):
    assert main(["inspect", "deeplabv3_resnet50", "--task", "segment", "--n-out", "5", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["method"] == "resegment" and record["removed"] == ["aux_classifier"]
    assert [g["name"] for g in record["groups"]][-2:] == ["decoder", "head"]
