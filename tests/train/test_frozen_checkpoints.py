"""Checkpoints that keep the untouched frozen weights once, in frozen.pt, and name them by fingerprint: smaller
files, the same whole state back (resume exact, the best frozen-stage epoch exact after the body trained on),
and a mismatch refused — on real data (sklearn's digits)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from torchgraft import Learner, freeze, graft
from torchgraft.train.callbacks import LambdaCallback
from torchgraft.train.frozen_state import FROZEN_FILE, fingerprint, full_model_state
from torchgraft.train.runstate import StateError, read_state
from torchgraft.weights.checkpoint import CheckpointReadError, read_checkpoint

sklearn_datasets = pytest.importorskip("sklearn.datasets")
FIRST = "body.model.0.weight"  # the first convolution's weight


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    data = sklearn_datasets.load_digits()
    return torch.tensor(data.images, dtype=torch.float32)[:, None] / 16, torch.tensor(data.target)


def _loaders(digits):
    x, y = digits
    train = torch.utils.data.TensorDataset(x[:448], y[:448])  # 7 batches of 64
    valid = torch.utils.data.TensorDataset(x[1400:], y[1400:])
    return (
        torch.utils.data.DataLoader(train, batch_size=64, shuffle=True),
        torch.utils.data.DataLoader(valid, batch_size=256),
    )


def _model() -> nn.Module:
    torch.manual_seed(0)
    body = nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    )
    return graft(body, 10, cut="6", input_size=(1, 8, 8))


def _learner(digits, directory: Path, callbacks=(), **options) -> tuple[Learner, nn.Module]:
    model = _model()
    learner = Learner(
        model, *_loaders(digits), quiet=True, checkpoint_dir=directory, callbacks=list(callbacks), **options
    )
    return learner, model


def _frozen_names(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if not p.requires_grad}


def test_a_frozen_body_is_stored_once_and_comes_back_whole(digits, tmp_path):
    learner, model = _learner(digits, tmp_path)
    freeze(model)  # the body frozen for good: only the head trains
    learner.fit_one_cycle(2, 1e-2)
    frozen = _frozen_names(model)
    assert frozen and all(name.startswith("body.") for name in frozen)
    for name in ("best.pt", "last.pt"):
        state = read_state(tmp_path / name)
        assert not frozen & set(state["model"])  # the body's weights are not in the checkpoint ...
        assert set(state["frozen"]["fingerprints"]) == frozen  # ... it names them by fingerprint
        whole = full_model_state(state, path=tmp_path / name)
        assert set(whole) == set(model.state_dict())
        assert all(torch.equal(whole[k], v) for k, v in model.state_dict().items() if k in frozen)
    loaded = read_checkpoint(tmp_path / "best.pt")  # as --weights reads it: the frozen tensors put back
    assert frozen <= set(loaded.tensors) and torch.equal(loaded.tensors[FIRST], model.get_parameter(FIRST))
    side = read_state(tmp_path / FROZEN_FILE)
    assert set(side["model"]) == frozen
    head_only = (tmp_path / "last.pt").stat().st_size
    torch.save(learner.state(), tmp_path / "full.pt")  # what a checkpoint held before: everything
    assert head_only < 0.25 * (tmp_path / "full.pt").stat().st_size
    # BatchNorm statistics of the frozen body change in training mode: buffers are always stored
    assert "body.model.1.running_mean" in read_state(tmp_path / "last.pt")["model"]


def test_resume_from_a_frozen_stage_checkpoint_is_exact(digits, tmp_path):
    straight, reference = _learner(digits, tmp_path / "a")
    straight.fine_tune(2, 1e-2, freeze_epochs=2)

    def stop(learner: Learner) -> None:
        if learner.stage == "frozen" and learner.epoch == 1 and learner.step == 7 + 3:
            raise KeyboardInterrupt

    interrupted, _ = _learner(digits, tmp_path / "b", [LambdaCallback(on_step_end=stop)])
    with pytest.raises(KeyboardInterrupt):
        interrupted.fine_tune(2, 1e-2, freeze_epochs=2)
    assert read_state(tmp_path / "b" / "last.pt").get("frozen")  # it left the body out
    resumed, model = _learner(digits, tmp_path / "b")
    resumed.fine_tune(2, 1e-2, freeze_epochs=2, resume=tmp_path / "b" / "last.pt")
    assert all(
        torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values(), strict=True)
    )


def test_the_best_frozen_epoch_loads_exactly_after_the_body_trained_on(digits, tmp_path):
    # best.pt by the lowest accuracy: the frozen epoch's (a head on an untrained body), then the body trains on
    learner, model = _learner(digits, tmp_path, monitor="accuracy", mode="min")
    seen: dict[str, dict[str, torch.Tensor]] = {}

    def keep(learner: Learner, record: dict) -> None:
        if learner.stage == "frozen":
            seen["frozen"] = {k: v.clone() for k, v in model.state_dict().items()}

    learner.add_callback(LambdaCallback(on_epoch_end=keep))
    learner.fine_tune(1, 1e-2, freeze_epochs=1)
    state = read_state(tmp_path / "best.pt")
    assert state["phase"] == 0 and state.get("frozen")
    assert not torch.equal(model.get_parameter(FIRST), seen["frozen"][FIRST])
    learner.load_best()  # the body has trained since: its frozen-stage weights come from frozen.pt
    assert all(torch.equal(v, seen["frozen"][k]) for k, v in model.state_dict().items())


def test_a_checkpoint_without_its_frozen_weights_is_refused(digits, tmp_path):
    learner, model = _learner(digits, tmp_path)
    freeze(model)
    learner.fit(1, 1e-2)
    (tmp_path / FROZEN_FILE).unlink()
    state = read_state(tmp_path / "last.pt")
    assert full_model_state(state, model, path=tmp_path / "last.pt")  # the model still holds them: taken from it
    other = _model()
    with torch.no_grad():
        other.get_parameter(FIRST).add_(1e-3)  # other pretrained weights
    assert fingerprint(other.get_parameter(FIRST)) != state["frozen"]["fingerprints"][FIRST]
    with pytest.raises(StateError, match=r"1 of them \(body\.model\.0\.weight\) are neither there nor in the"):
        full_model_state(state, other, path=tmp_path / "last.pt")
    with pytest.raises(CheckpointReadError, match=r"frozen tensors it leaves out .* put back the frozen\.pt"):
        read_checkpoint(tmp_path / "last.pt")
    with pytest.raises(StateError, match=r"frozen\.pt written with it"):
        Learner(other, *_loaders(digits), quiet=True).fit(1, 1e-2, resume=tmp_path / "last.pt")
