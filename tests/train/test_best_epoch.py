"""The best epoch over a whole fine-tune: ``best.pt`` and ``learner.best_epoch`` keep the frozen stage's epoch
when the unfrozen stage collapses, the run says so in one line, and ``load_best`` puts that epoch's weights back."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn

from torchgraft import Learner, graft
from torchgraft.train.callbacks import Callback
from torchgraft.train.frozen_state import full_model_state
from torchgraft.train.runstate import read_state

sklearn_datasets = pytest.importorskip("sklearn.datasets")


@pytest.fixture(scope="module")
def digits():
    data = sklearn_datasets.load_digits()
    x = torch.tensor(data.images, dtype=torch.float32)[:, None].repeat(1, 3, 1, 1) / 16
    x = nn.functional.interpolate(x, size=32, mode="bilinear")
    y = torch.tensor(data.target)
    train = torch.utils.data.TensorDataset(x[:1000], y[:1000])
    valid = torch.utils.data.TensorDataset(x[1000:1400], y[1000:1400])
    return (
        torch.utils.data.DataLoader(train, batch_size=100, shuffle=True),
        torch.utils.data.DataLoader(valid, batch_size=200),
    )


class Sabotage(Callback):
    """Keeps the weights at the end of the frozen stage, then scrambles the head as unfreezing begins (the
    unfrozen stage then trains at a rate too small to recover: a collapse)."""

    def __init__(self) -> None:
        self.frozen_end: dict[str, torch.Tensor] | None = None

    def on_fit_end(self, learner) -> None:
        if learner.stage == "frozen":
            self.frozen_end = copy.deepcopy(learner.model.state_dict())

    def on_fit_begin(self, learner) -> None:
        if learner.stage == "unfrozen":
            with torch.no_grad():
                for p in learner.model.head.parameters():
                    p.normal_(0, 1.0)


def _model() -> nn.Module:
    return graft(torchvision.models.resnet18(weights=None), 10, input_size=(3, 32, 32))


def test_a_collapse_is_said_once_and_the_frozen_epoch_is_kept(digits, tmp_path, capsys):
    sabotage = Sabotage()
    learner = Learner(_model(), *digits, cache_features=True, checkpoint_dir=tmp_path, callbacks=[sabotage])
    history = learner.fine_tune(2, 1e-8, freeze_epochs=2, frozen_lr=3e-2)
    frozen_best = max(r["accuracy"] for r in history if r["phase"] == 0)
    assert frozen_best > 0.5 and all(r["accuracy"] < 0.8 * frozen_best for r in history if r["phase"] == 1)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("collapse:")]
    assert (
        len(lines) == 1 and lines[0].startswith("collapse: accuracy ") and "best.pt keeps the better epoch" in lines[0]
    )
    best = learner.best_epoch
    assert best is not None and best["phase"] == 0 and best["stage"] == "frozen" and best["accuracy"] == frozen_best
    assert read_state(tmp_path / "best.pt")["history"][-1]["phase"] == 0  # not overwritten by the unfrozen fit
    record = learner.load_best()
    assert record["phase"] == 0 and record["epoch"] == best["epoch"]
    if best["epoch"] == 2:  # the frozen stage's last epoch: the weights the sabotage kept
        for name, tensor in learner.model.state_dict().items():
            assert torch.equal(tensor, sabotage.frozen_end[name]), name
    learner.model.eval()
    with torch.no_grad():
        x, y = next(iter(digits[1]))
        accuracy = (learner.model(x).argmax(1) == y).float().mean().item()
    assert accuracy > 0.8 * frozen_best  # the kept epoch's weights, not the collapsed ones


def test_no_collapse_no_line_and_the_best_epoch_is_recorded(digits, capsys):
    learner = Learner(_model(), *digits, cache_features=True)
    history = learner.fine_tune(1, 1e-3, freeze_epochs=1, frozen_lr=3e-2)
    assert "collapse" not in capsys.readouterr().err
    best = learner.best_epoch
    assert best is not None and history[best["index"]]["accuracy"] == max(r["accuracy"] for r in history)
    with pytest.raises(FileNotFoundError, match="checkpoint_dir="):
        learner.load_best()


def test_the_lowest_loss_is_kept_when_it_is_not_the_last_epoch(tmp_path):
    """``monitor="valid_loss"`` (min): validation labels each shifted to the next digit, so the more the model
    learns the training names the higher its validation loss — the frozen epoch at a rate too small to change
    anything (about ln 10) is strictly the lowest, and best.pt, ``best_epoch`` and ``load_best`` keep it, not
    the last epoch's weights."""
    data = sklearn_datasets.load_digits()
    x = torch.tensor(data.images[:500], dtype=torch.float32)[:, None].repeat(1, 3, 1, 1) / 16
    x = nn.functional.interpolate(x, size=32, mode="bilinear")
    y = torch.tensor(data.target[:500])
    torch.manual_seed(0)
    train = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[:300], y[:300]), batch_size=32, shuffle=True)
    valid = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[300:], (y[300:] + 1) % 10), batch_size=100)
    learner = Learner(_model(), train, valid, monitor="valid_loss", checkpoint_dir=tmp_path, quiet=True)
    history = learner.fine_tune(2, 1e-3, freeze_epochs=1, frozen_lr=1e-6)
    assert len(history) == 3 and history[0]["valid_loss"] < min(r["valid_loss"] for r in history[1:]), history
    best = learner.best_epoch
    assert best is not None and best["index"] == 0 and best["valid_loss"] == history[0]["valid_loss"]
    saved = read_state(tmp_path / "best.pt")
    assert saved["history"][-1]["valid_loss"] == history[0]["valid_loss"]
    kept = full_model_state(saved, path=tmp_path / "best.pt")  # frozen tensors from frozen.pt, not the model
    last = read_state(tmp_path / "last.pt")["model"]
    record = learner.load_best()
    assert record["phase"] == 0 and record["epoch"] == history[0]["epoch"]
    weights = learner.model.state_dict()
    assert set(kept) == set(weights) and all(torch.equal(weights[k], v.to(weights[k].device)) for k, v in kept.items())
    assert any(not torch.equal(weights[k], v.to(weights[k].device)) for k, v in last.items() if v.is_floating_point())
