"""Callbacks and run state: best.pt follows the metric's direction, early stop, any step count, exact resume
with the loaders' own generators, damaged state files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from torchgraft import Callback, EarlyStopping, Learner, graft
from torchgraft.train.callbacks import LambdaCallback
from torchgraft.train.runstate import StateError, read_state, write_state

sklearn_datasets = pytest.importorskip("sklearn.datasets")


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    data = sklearn_datasets.load_digits()
    return torch.tensor(data.images, dtype=torch.float32)[:, None] / 16, torch.tensor(data.target)


def _net() -> nn.Module:
    return graft(
        nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU()
        ),
        10,
        cut="4",
        input_size=(1, 8, 8),
    )


def _loaders(digits, *, n: int = 600, batch: int = 64, seed: int | None = None):
    x, y = digits
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    train = torch.utils.data.TensorDataset(x[:n], y[:n])
    valid = torch.utils.data.TensorDataset(x[1400:], y[1400:])
    return (
        torch.utils.data.DataLoader(train, batch_size=batch, shuffle=True, generator=generator),
        torch.utils.data.DataLoader(valid, batch_size=200),
    )


def _wrong_count(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Misclassified samples per batch: lower is better, declared below."""
    return (outputs.argmax(1) != targets).float().sum()


def test_best_checkpoint_follows_the_direction_of_the_metric(digits, tmp_path):
    _wrong_count.higher_is_better = False
    try:
        torch.manual_seed(0)
        learner = Learner(_net(), *_loaders(digits), metrics=[_wrong_count], checkpoint_dir=tmp_path, quiet=True)
        history = learner.fit(4, 3e-3)
    finally:
        del _wrong_count.higher_is_better
    best_epoch = min(history, key=lambda r: r["_wrong_count"])["epoch"]
    worst_epoch = max(history, key=lambda r: r["_wrong_count"])["epoch"]
    assert best_epoch != worst_epoch
    assert read_state(tmp_path / "best.pt")["epoch"] == best_epoch


def test_a_metric_without_direction_needs_mode(digits, tmp_path):
    def mae(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return (outputs.argmax(1) - targets).abs().float().mean()

    learner = Learner(_net(), *_loaders(digits), metrics=[mae], checkpoint_dir=tmp_path, quiet=True)
    with pytest.raises(ValueError, match=r"'mae' does not say whether higher is better.*mode='min'"):
        learner.fit(1)
    assert not (tmp_path / "last.pt").exists()  # refused before training
    torch.manual_seed(0)
    learner = Learner(_net(), *_loaders(digits), metrics=[mae], checkpoint_dir=tmp_path, quiet=True, mode="min")
    history = learner.fit(3, 3e-3)
    assert read_state(tmp_path / "best.pt")["epoch"] == min(history, key=lambda r: r["mae"])["epoch"]
    with pytest.raises(ValueError, match="monitor='f1' is not recorded"):
        Learner(_net(), *_loaders(digits), checkpoint_dir=tmp_path, monitor="f1", quiet=True).fit(1)


def test_early_stopping_and_user_callbacks(digits):
    events: list[str] = []

    class Record(Callback):
        def on_fit_begin(self, learner: Learner) -> None:
            events.append("fit")

        def on_epoch_end(self, learner: Learner, record: dict) -> None:
            events.append(f"epoch{record['epoch']}")

    stop = EarlyStopping(monitor="valid_loss", patience=1)
    learner = Learner(_net(), *_loaders(digits), quiet=True, callbacks=[Record(), stop])
    history = learner.fit(30, 5.0)  # a rate far too high: the loss does not improve for long
    assert len(history) < 30 and events[0] == "fit" and events[-1] == f"epoch{len(history)}"


@pytest.mark.parametrize("n", [1, 50, 64, 128, 192, 256, 320, 640])
def test_fine_tune_trains_with_any_number_of_steps(digits, n):
    # batch 64: 1, 1, 1, 2, 3, 4, 5 and 10 steps per epoch (4 steps once raised ZeroDivisionError in OneCycleLR)
    history = Learner(_net(), *_loaders(digits, n=n), quiet=True).fine_tune(1, freeze_epochs=1)
    assert len(history) == 2 and all(r["train_loss"] == r["train_loss"] for r in history)


def test_resume_is_exact_with_loaders_that_have_their_own_generator(digits, tmp_path):
    def run(directory: Path, *, stop: bool = False, resume: Path | None = None) -> nn.Module:
        torch.manual_seed(0)
        model = _net()

        def kill(learner: Learner) -> None:
            if stop and learner.stage == "unfrozen" and learner.step == 2:
                raise KeyboardInterrupt

        learner = Learner(
            model,
            *_loaders(digits, seed=0),
            quiet=True,
            checkpoint_dir=directory,
            callbacks=[LambdaCallback(on_step_end=kill)],
        )
        learner.fine_tune(2, freeze_epochs=1, resume=resume)
        return model

    reference = run(tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", stop=True)
    torch.manual_seed(123)  # a new process: other global state, fresh loader generators
    resumed = run(tmp_path / "b", resume=tmp_path / "b" / "last.pt")
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert not list((tmp_path / "b").glob("*.partial"))


def test_an_interrupted_write_leaves_no_partial_file_and_damaged_states_are_named(tmp_path):
    with pytest.raises(Exception):  # noqa: B017 - whatever pickling raises, nothing may stay behind
        write_state(tmp_path / "last.pt", {"model": {}, "fit": {}, "bad": lambda: None})
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(StateError, match=r"empty\.pt is damaged or not a training state"):
        read_state(tmp_path / "empty.pt")
    write_state(tmp_path / "good.pt", {"model": {}, "fit": {}})
    data = (tmp_path / "good.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(StateError, match=r"cut\.pt is damaged"):
        read_state(tmp_path / "cut.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(StateError, match="not a torchgraft training state"):
        read_state(tmp_path / "other.pt")
