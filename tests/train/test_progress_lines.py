"""Without a terminal (no tqdm bar) a long epoch still prints plain progress lines, at most every
``PROGRESS_EVERY`` seconds; quiet prints none."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from torchgraft import graft
from torchgraft.train import fitting
from torchgraft.train.learner import Learner


def _learner(quiet: bool) -> Learner:
    x, y = torch.randn(48, 6), torch.randint(0, 3, (48,))
    body = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4))
    model = graft(body, 3, cut=-1, input_size=(6,))
    train = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True)
    valid = DataLoader(TensorDataset(x[:16], y[:16]), batch_size=8)
    return Learner(model, train, valid, quiet=quiet, progress=False)


def test_an_epoch_without_a_bar_prints_batch_lines_when_it_runs_long(monkeypatch, capsys):
    monkeypatch.setattr(fitting, "PROGRESS_EVERY", 0.0)  # every batch counts as "long"
    _learner(quiet=False).fit(1, lr=1e-3)
    out = capsys.readouterr().out
    lines = [line.strip() for line in out.splitlines() if ": batch " in line]
    assert lines[:6] == [f"epoch 1: batch {i}/6" for i in range(1, 7)], out
    assert "valid: batch 2" in lines


def test_short_epochs_and_quiet_runs_print_no_batch_lines(monkeypatch, capsys):
    _learner(quiet=False).fit(1, lr=1e-3)  # PROGRESS_EVERY (30 s) never passes
    assert ": batch " not in capsys.readouterr().out
    monkeypatch.setattr(fitting, "PROGRESS_EVERY", 0.0)
    _learner(quiet=True).fit(1, lr=1e-3)
    assert ": batch " not in capsys.readouterr().out
