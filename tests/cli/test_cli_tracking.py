"""``torchgraft train --log tensorboard,mlflow``: the run read back with TensorBoard's own event reader and MLflow's
client (steps, losses against history.csv, settings, plan, the exported model as an artifact); a missing library
or an unknown tool is one line and exit 2, before any data is read."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from torchgraft.cli.main import main
from torchgraft.train.track_mlflow import ALLOW_FILE_STORE

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
mlflow_tracking = pytest.importorskip("mlflow.tracking")

TINY = ["--model", "resnet18", "--weights", "none", "--size", "32", "--workers", "0", "--device", "cpu"]
BATCH = 4  # 12 training images (the folder fixture): 3 steps an epoch, every batch full


@pytest.fixture(scope="module")
def logged(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run of one frozen and one unfrozen epoch logged to both tools, with torchgraft's default stores."""
    out = tmp_path_factory.mktemp("logged") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.delenv(ALLOW_FILE_STORE, raising=False)
        args = [*TINY, "--batch-size", str(BATCH), "--epochs", "1", "--freeze-epochs", "1", "--quiet"]
        assert main(["train", str(folder), *args, "--log", "tensorboard,mlflow", "--out", str(out)]) == 0
        assert ALLOW_FILE_STORE not in os.environ  # set only around torchgraft's calls to its own store
    return out


def _history(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "history.csv").open() as handle:
        return list(csv.DictReader(handle))


def _step_losses_match_history(losses: list[float], history: list[dict[str, str]]) -> None:
    steps = len(losses) // len(history)
    for epoch, row in enumerate(history):  # full batches: the mean of an epoch's steps is its training loss
        mean = sum(losses[epoch * steps : (epoch + 1) * steps]) / steps
        assert mean == pytest.approx(float(row["train_loss"]), rel=1e-5), epoch


def test_tensorboard_holds_every_step_and_epoch_of_the_run(logged):
    history = _history(logged)
    reader = event_accumulator.EventAccumulator(str(logged / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    reader.Reload()
    loss = reader.Scalars("train/loss")
    assert [e.step for e in loss] == list(range(1, 7))  # 2 epochs of 12 / 4 steps
    _step_losses_match_history([e.value for e in loss], history)
    valid = reader.Scalars("epoch/valid_loss")
    assert [e.step for e in valid] == [3, 6]
    assert [e.value for e in valid] == pytest.approx([float(r["valid_loss"]) for r in history], rel=1e-6)
    assert {"lr/head", "lr/body0"} <= set(reader.Tags()["scalars"])
    texts = {tag: reader.Tensors(tag)[-1].tensor_proto.string_val[0].decode() for tag in reader.Tags()["tensors"]}
    assert "| model | resnet18 |" in texts["params/run/text_summary"]
    assert (logged / "plan.txt").read_text().strip() in texts["plan/text_summary"]


def test_mlflow_holds_the_run_its_settings_and_the_exported_model(logged, monkeypatch, tmp_path):
    history = _history(logged)
    monkeypatch.setenv(ALLOW_FILE_STORE, "true")  # MLflow 3 reads its file store back only with the opt-in
    client = mlflow_tracking.MlflowClient((logged / "mlruns").resolve().as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("torchgraft").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "run"  # named after the RUN_DIR
    run_id = run.info.run_id
    losses = [m.value for m in client.get_metric_history(run_id, "train/loss")]
    assert len(losses) == 6
    _step_losses_match_history(losses, history)
    for name in ("train_loss", "valid_loss", "accuracy"):
        logged_values = [m.value for m in client.get_metric_history(run_id, f"epoch/{name}")]
        assert logged_values == [float(r[name]) for r in history], name  # history.csv's repr: exactly equal
    params = run.data.params
    assert params["model"] == "resnet18" and params["batch_size"] == str(BATCH) and params["weights"] == "none"
    assert params["fit1.stage"] == "frozen" and params["fit2.stage"] == "unfrozen"
    model = {a.path: a.file_size for a in client.list_artifacts(run_id, "model")}
    assert model == {f"model/{name}": (logged / name).stat().st_size for name in ("model.json", "model.safetensors")}
    top = {a.path for a in client.list_artifacts(run_id)}
    assert {"plan.txt", "history.csv", "history.json", "model"} <= top
    plan = Path(client.download_artifacts(run_id, "plan.txt", str(tmp_path))).read_text()
    assert plan == (logged / "plan.txt").read_text()


def test_a_missing_tracking_library_is_one_line_and_exit_2_before_the_data_is_read(folder, tmp_path):
    argv = ["train", str(folder), *TINY, "--log", "tensorboard", "--out", str(tmp_path / "r")]
    code = (
        "import sys\nsys.modules['tensorboard'] = None  # as where it is not installed\n"
        f"from torchgraft.cli.main import main\nsys.exit(main({argv!r}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines() == [
        "torchgraft train: error: --log tensorboard needs tensorboard, which is not installed (import of "
        "tensorboard halted; None in sys.modules); install it with: pip install 'torchgraft[tensorboard]'"
    ]
    assert not (tmp_path / "r").exists()  # nothing read, nothing written


def test_an_unknown_tool_is_a_usage_error(folder, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", str(folder), *TINY, "--log", "tensorboard,wandb", "--out", str(tmp_path / "r")])
    assert exit_.value.code == 2
    assert "argument --log: 'tensorboard,wandb': choose from tensorboard, mlflow" in capsys.readouterr().err
