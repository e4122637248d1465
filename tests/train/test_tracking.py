"""Learner(loggers=...): a fine-tune logged to TensorBoard and MLflow through the libraries themselves, read back
with TensorBoard's own event reader and MLflow's client — every step's loss and rates, every epoch's metrics,
the parameters — equal to what the Learner recorded; rank 0 alone writes under torchrun; a missing library is
one error naming the install command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from sklearn import datasets as sklearn_datasets
from torch.utils.data import DataLoader, TensorDataset

from torchgraft import graft
from torchgraft.train.learner import Learner
from torchgraft.train.track_mlflow import ALLOW_FILE_STORE, MLflowLogger
from torchgraft.train.track_tensorboard import TensorBoardLogger
from torchgraft.weights.zoo import build_model

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
mlflow_tracking = pytest.importorskip("mlflow.tracking")
plugin_data_pb2 = pytest.importorskip("tensorboard.plugins.hparams.plugin_data_pb2")

SCRIPT = Path(__file__).parents[1] / "scripts" / "ddp_tracking.py"


def _loaders() -> tuple[DataLoader, DataLoader]:
    data = sklearn_datasets.load_digits()
    x = torch.tensor(data.images[:160], dtype=torch.float32)[:, None].expand(-1, 3, -1, -1) / 16
    x = torch.nn.functional.interpolate(x, size=32)
    y = torch.tensor(data.target[:160])
    train = DataLoader(TensorDataset(x[:128], y[:128]), batch_size=32, shuffle=True, drop_last=True)
    return train, DataLoader(TensorDataset(x[128:], y[128:]), batch_size=32)


def read_tensorboard(folder: Path) -> event_accumulator.EventAccumulator:
    """Every event under ``folder`` (one run's files), read with TensorBoard's own reader, nothing sampled away."""
    reader = event_accumulator.EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    reader.Reload()
    return reader


def tensorboard_text(reader: event_accumulator.EventAccumulator, tag: str) -> str:
    """The last text summary of ``tag``."""
    return reader.Tensors(f"{tag}/text_summary")[-1].tensor_proto.string_val[0].decode()


@pytest.fixture
def no_mlflow_env(monkeypatch):
    """No tracking URI and no file-store opt-in from the environment: torchgraft's own local store decides."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv(ALLOW_FILE_STORE, raising=False)


def test_fine_tune_logged_to_tensorboard_and_mlflow_equals_the_learners_record(tmp_path, monkeypatch, no_mlflow_env):
    model = graft(build_model("resnet18", device="cpu"), 10, input_size=(3, 32, 32))
    train, valid = _loaders()
    loggers = [TensorBoardLogger(tmp_path / "tb"), MLflowLogger(local_dir=tmp_path / "mlruns", experiment="digits")]
    learner = Learner(model, train, valid, quiet=True, loggers=loggers)
    learner.fine_tune(1, 1e-3, freeze_epochs=1, lr_mult=10)
    learner.close()
    losses = learner.loss_history  # the loss of each optimizer step, as the Learner recorded it
    assert ALLOW_FILE_STORE not in os.environ  # the opt-in lasted only as long as torchgraft's own calls
    steps = len(learner.lr_history)
    assert steps == 2 * len(train) == len(losses)
    ends = [len(train), 2 * len(train)]  # the step each epoch ended at
    for epoch, row in enumerate(learner.history):  # equal batches: the steps' mean is the epoch's training loss
        assert sum(losses[epoch * len(train) : ends[epoch]]) / len(train) == pytest.approx(row["train_loss"], rel=1e-9)

    board = read_tensorboard(tmp_path / "tb")
    loss = board.Scalars("train/loss")
    assert [e.step for e in loss] == list(range(1, steps + 1))
    assert [e.value for e in loss] == pytest.approx(losses, rel=1e-6)  # TensorBoard keeps float32
    head = board.Scalars("lr/head")
    assert [e.value for e in head] == pytest.approx([r["head"] for r in learner.layer_lr_history], rel=1e-6)
    body0 = board.Scalars("lr/body0")  # frozen in the first stage: logged from the first unfrozen step on
    assert [e.step for e in body0] == list(range(len(train) + 1, steps + 1))
    for name in ("train_loss", "valid_loss", "accuracy", "seconds"):
        events = board.Scalars(f"epoch/{name}")
        assert [e.step for e in events] == ends
        assert [e.value for e in events] == pytest.approx([r[name] for r in learner.history], rel=1e-6)
    assert "| optimizer | AdamW |" in tensorboard_text(board, "params/learner")
    assert "| stage | unfrozen |" in tensorboard_text(board, "params/fit2")
    sessions = board.PluginTagToContent("hparams")  # the HParams dashboard's session, written at close
    start = plugin_data_pb2.HParamsPluginData.FromString(sessions["_hparams_/session_start_info"])
    assert start.session_start_info.hparams["learner.optimizer"].string_value == "AdamW"
    assert start.session_start_info.hparams["fit2.stage"].string_value == "unfrozen"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(sessions["_hparams_/experiment"]).experiment
    assert {m.name.tag for m in experiment.metric_infos} == {
        f"epoch/{n}" for n in ("train_loss", "valid_loss", "accuracy", "seconds")
    }
    fits = tensorboard_text(board, "fits").splitlines()
    assert fits[0] == fits[-1] == "```" and len(fits) == 4  # a code block: one line per fit
    assert "fit 1 (frozen): fit_one_cycle, 1 epoch from step 1; trains: head" in fits[1]
    assert "fit 2 (unfrozen)" in fits[2] and f"from step {len(train) + 1}" in fits[2] and "frozen: none" in fits[2]

    monkeypatch.setenv(ALLOW_FILE_STORE, "true")  # reading MLflow's file store back needs the opt-in too
    client = mlflow_tracking.MlflowClient((tmp_path / "mlruns").resolve().as_uri())
    experiment = client.get_experiment_by_name("digits")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in history] == list(range(1, steps + 1))
    assert [m.value for m in history] == pytest.approx(losses, rel=1e-12)
    for name in ("valid_loss", "accuracy"):
        epochs = client.get_metric_history(run.info.run_id, f"epoch/{name}")
        assert [(m.step, m.value) for m in epochs] == [(s, r[name]) for s, r in zip(ends, learner.history, strict=True)]
    params = run.data.params
    assert params["learner.optimizer"] == "AdamW" and params["learner.task"] == "classify"
    assert params["fit1.stage"] == "frozen" and params["fit2.stage"] == "unfrozen"
    assert float(params["fit2.lr.head"]) == pytest.approx(1e-3)
    assert float(params["fit2.lr.body0"]) == pytest.approx(1e-4)  # lr / lr_mult: the first group's
    assert params["fit2.first_step"] == str(len(train) + 1)
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"fits.txt", "stages.txt"}
    stages = client.download_artifacts(run.info.run_id, "stages.txt", str(tmp_path))
    assert Path(stages).read_text().splitlines() == [
        f"row 1: frozen, to step {ends[0]}",
        f"row 2: unfrozen, to step {ends[1]}",
    ]


def test_a_missing_library_is_one_error_with_the_install_command(monkeypatch):
    train, valid = _loaders()
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    for name, package in (("tensorboard", "tensorboard"), ("mlflow", "mlflow-skinny")):
        with monkeypatch.context() as patch:
            patch.setitem(sys.modules, name, None)  # `import name` fails as it does where it is not installed
            with pytest.raises(ImportError, match=rf"needs {package}, .*pip install 'torchgraft\[{name}\]'") as error:
                Learner(model, train, valid, quiet=True, loggers=[name])
            assert "\n" not in str(error.value) and f"loggers=['{name}']" in str(error.value)


def test_unknown_or_repeated_logger_names_are_refused():
    train, valid = _loaders()
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    with pytest.raises(ValueError, match="'wandb' is no logger; choose from tensorboard, mlflow"):
        Learner(model, train, valid, loggers=["wandb"])
    with pytest.raises(ValueError, match="named twice"):
        Learner(model, train, valid, loggers="tensorboard,tensorboard")
    with pytest.raises(TypeError, match="loggers holds a int"):
        Learner(model, train, valid, loggers=[3])  # type: ignore[list-item]


def test_only_rank_0_logs_under_torchrun(tmp_path, monkeypatch):
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", ALLOW_FILE_STORE)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(SCRIPT)]
    done = subprocess.run([*command, str(tmp_path)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["steps"] == ranks[1]["steps"] > 0
    assert ranks[0]["losses"] != ranks[1]["losses"]  # each rank trains on its own shard: the logged loss is rank 0's
    (events,) = list((tmp_path / "runs").glob("*/events.out.tfevents.*"))  # the library's defaults: ./runs, ./mlruns
    board = read_tensorboard(events.parent)
    assert [e.value for e in board.Scalars("train/loss")] == pytest.approx(ranks[0]["losses"], rel=1e-6)
    monkeypatch.setenv(ALLOW_FILE_STORE, "true")
    client = mlflow_tracking.MlflowClient((tmp_path / "mlruns").resolve().as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("torchgraft").experiment_id])
    assert run.data.params["learner.world_size"] == "2" and run.info.status == "FINISHED"
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) == ranks[0]["steps"]


class _Refusing(TensorBoardLogger):
    """TensorBoard whose scalar writes fail (a full disk, a server gone): the writing thread's failure."""

    def _scalars(self, rows):
        raise OSError("No space left on device")


def test_a_failed_write_is_raised_in_the_training_thread(tmp_path):
    train, valid = _loaders()
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    learner = Learner(model, train, valid, quiet=True, loggers=[_Refusing(tmp_path / "tb")])
    with pytest.raises(RuntimeError, match="_Refusing: writing to tensorboard failed: No space left on device"):
        learner.fit(1, 1e-3)  # the epoch's end waits for its writes (flush): the failure surfaces there
    learner.close()
