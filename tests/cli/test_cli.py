"""The command line: inspect on architectures and checkpoint files, and its error paths."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest
import torch
import torchvision

from torchgraft import describe, graft
from torchgraft.cli.main import main
from torchgraft.weights import CheckpointReadError, read_checkpoint


def test_inspect_torchvision_model(capsys):
    assert main(["inspect", "mobilenet_v2", "--n-out", "7"]) == 0
    out = capsys.readouterr().out
    assert "MobileNetV2 grafted -> 7 outputs" in out
    assert "classifier 'classifier.1' replaced" in out
    assert "body output  (1280,) [nc]" in out


def test_inspect_huge_model_on_meta_device(capsys):
    """regnet_y_128gf (644M parameters) is inspected without allocating its weights."""
    assert main(["inspect", "regnet_y_128gf", "--pool", "concat", "--head", "mlp"]) == 0
    out = capsys.readouterr().out
    assert "cut after 'trunk_output'" in out


def test_inspect_timm_json(capsys):
    pytest.importorskip("timm")
    assert main(["inspect", "timm/convnext_atto", "--json", "--in-chans", "1"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["method"] == "timm"
    assert record["input_size"] == [1, 224, 224]
    assert record["new_parameters"] == 320 * 10 + 10


def test_inspect_checkpoint_file(tmp_path, capsys):
    path = tmp_path / "resnet18.pth"
    torch.save({"state_dict": torchvision.models.resnet18().state_dict()}, path)
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "122 tensors" in out and "likely classifier): fc.weight (1000, 512)" in out


class _Exploit:
    def __reduce__(self) -> tuple:
        return (print, ("code from the checkpoint ran",))


def test_inspect_refuses_a_pickle_that_runs_code(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": _Exploit()}, path)
    result = subprocess.run(
        [sys.executable, "-m", "torchgraft.cli.main", "inspect", str(path)], capture_output=True, text=True
    )
    assert result.returncode == 2 and "refused" in result.stderr and "--trust-pickle" in result.stderr
    assert "trust_pickle=True" not in result.stderr
    assert "code from the checkpoint ran" not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def _truncated_checkpoint() -> bytes:
    buffer = io.BytesIO()
    torch.save(torch.nn.Linear(3, 2).state_dict(), buffer)
    return buffer.getvalue()[:600]


NOT_CHECKPOINTS = {  # file name -> (content, what the one line says the file is)
    "x.pth": (b"hello", "it is a text file (starting 'hello'), not a PyTorch checkpoint"),
    "empty.pth": (b"", "the file is empty"),
    "truncated.pth": (_truncated_checkpoint(), "a damaged or truncated PyTorch checkpoint (a zip archive"),
    "random.safetensors": (bytes(range(200, 0, -1)), "it is binary data (starting c8 c7 c6"),
    "notes.bin": (b"see the README\n", "it is a text file (starting 'see the README'), not a PyTorch checkpoint"),
}


@pytest.mark.parametrize("name", list(NOT_CHECKPOINTS))
def test_inspect_of_a_file_that_is_not_a_checkpoint_exits_2_with_the_librarys_one_line(name, tmp_path, capsys):
    content, what = NOT_CHECKPOINTS[name]
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(CheckpointReadError) as error:
        read_checkpoint(path)
    assert main(["inspect", str(path)]) == 2
    line = capsys.readouterr().err.strip()
    assert line == f"torchgraft inspect: error: {error.value}"
    assert line.startswith(f"torchgraft inspect: error: cannot read checkpoint {path} ({len(content):,} bytes): {what}")


def test_inspect_of_a_text_file_named_pth_prints_no_traceback(tmp_path):
    path = tmp_path / "x.pth"
    path.write_text("hello")
    result = subprocess.run(
        [sys.executable, "-m", "torchgraft.cli.main", "inspect", str(path)], capture_output=True, text=True
    )
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "not a PyTorch checkpoint" in result.stderr and "KeyError" not in result.stderr


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["inspect", "resnt50"], "unknown model 'resnt50' (close names: resnet50"),
        (["inspect", "missing.pth"], "no such checkpoint file: missing.pth"),
        (["inspect", "resnet18", "--cut", "layer9"], "cut='layer9' is not a module of ResNet"),
    ],
)
def test_user_errors_exit_2_with_one_line(argv, message):
    result = subprocess.run([sys.executable, "-m", "torchgraft.cli.main", *argv], capture_output=True, text=True)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_bad_argument_exit_2():
    result = subprocess.run([sys.executable, "-m", "torchgraft.cli.main", "inspect"], capture_output=True, text=True)
    assert result.returncode == 2 and "ARCH_OR_FILE" in result.stderr


def test_describe_table():
    text = describe(graft(torchvision.models.resnet18(), 7, in_chans=1, input_size=(3, 64, 64)))
    assert "in_chans     'conv1': 3 -> 1 channels (sum)" in text
    assert "removed      fc (513,000 parameters)" in text
    body_row = next(line for line in text.splitlines() if line.split()[:1] == ["body"] and "output" not in line)
    assert body_row.split()[2] == "-"  # built by the user, not by a torchgraft loader: pretrained is not known
    with pytest.raises(TypeError, match="not a grafted model"):
        describe(torch.nn.Linear(2, 2))


def test_describe_counts_the_outputs_of_heads_ending_in_a_custom_module():
    regression = graft(torchvision.models.resnet18(), 2, y_range=(0.0, 5.0), input_size=(3, 64, 64))
    assert describe(regression).splitlines()[0] == "torchgraft: ResNet grafted -> 2 outputs"
    custom = graft(torchvision.models.resnet18(), 3, head=torch.nn.Sequential(torch.nn.Linear(512, 3), torch.nn.Tanh()))
    assert describe(custom).splitlines()[0] == "torchgraft: ResNet grafted -> 3 outputs"


def test_inspect_prints_the_group_plan_with_learning_rates(capsys):
    assert main(["inspect", "resnet50", "--lr", "1e-5:1e-3"]) == 0
    out = capsys.readouterr().out
    assert "layer groups" in out
    assert "body0  conv1–layer2     1,444,928  1e-05   trainable" in out
    assert "head   head                20,490  0.001   trainable" in out


def test_inspect_groups_json(capsys):
    assert main(["inspect", "vit_b_16", "--groups", "5", "--lr", "1e-4", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert [g["name"] for g in record["groups"]] == ["body0", "body1", "body2", "body3", "head"]
    assert {g["lr"] for g in record["groups"]} == {1e-4}
    assert record["split"].startswith("auto: 4 body groups")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--groups", "1"], "--groups 1: give an int >= 2"),
        (["--groups", "many"], "--groups many: give an int >= 2"),
        (["--lr", "fast"], "invalid learning rate 'fast'"),
        (["--lr", "1e-5,1e-3"], "lr has 2 values but the model has 3 layer groups (body0, body1, head)"),
    ],
)
def test_inspect_group_errors(args, message, capsys):
    try:
        code = main(["inspect", "resnet18", *args])
    except SystemExit as stop:  # argparse's own errors
        code = stop.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
