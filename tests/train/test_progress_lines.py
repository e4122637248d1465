"""Without a terminal (no tqdm bar) a long epoch still prints plain progress lines with the time left, at most
every ``TORCHGRAFT_PROGRESS_SECONDS`` (default 20 s, the interval of the commands' own progress lines); quiet
prints none. On a terminal the bar shows the time left (tests/train/test_console.py)."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from torchgraft import graft
from torchgraft.train.learner import Learner
from torchgraft.train.progress import duration, progress_seconds


def _learner(quiet: bool) -> Learner:
    x, y = torch.randn(48, 6), torch.randint(0, 3, (48,))
    body = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4))
    model = graft(body, 3, cut=-1, input_size=(6,))
    train = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True)
    valid = DataLoader(TensorDataset(x[:16], y[:16]), batch_size=8)
    return Learner(model, train, valid, quiet=quiet, progress=False)


def test_an_epoch_without_a_bar_prints_batch_lines_with_the_time_left(monkeypatch, capsys):
    monkeypatch.setenv("TORCHGRAFT_PROGRESS_SECONDS", "0")  # every batch counts as "long"
    _learner(quiet=False).fit(1, lr=1e-3)
    out = capsys.readouterr().out
    lines = [line.strip() for line in out.splitlines() if ": batch " in line]
    assert all(re.fullmatch(rf"epoch 1: batch {i}/6, \d+ s left", lines[i - 1]) for i in range(1, 6)), out
    assert lines[5] == "epoch 1: batch 6/6"  # the last batch: nothing left to estimate
    assert re.fullmatch(r"epoch 1 valid: batch 1/2, \d+ s left", lines[6]) and lines[7:] == ["epoch 1 valid: batch 2/2"]


def test_a_fine_tune_names_the_stage_and_counts_epochs_over_the_run(monkeypatch, capsys):
    monkeypatch.setenv("TORCHGRAFT_PROGRESS_SECONDS", "0")
    _learner(quiet=False).fine_tune(1, 1e-3, freeze_epochs=1)
    lines = [line.strip() for line in capsys.readouterr().out.splitlines() if ": batch 6/6" in line]
    assert lines == ["epoch 1 (frozen): batch 6/6", "epoch 2 (unfrozen): batch 6/6"]


def test_short_epochs_and_quiet_runs_print_no_batch_lines(monkeypatch, capsys):
    monkeypatch.delenv("TORCHGRAFT_PROGRESS_SECONDS", raising=False)
    _learner(quiet=False).fit(1, lr=1e-3)  # the default 20 s never pass
    assert ": batch " not in capsys.readouterr().out
    monkeypatch.setenv("TORCHGRAFT_PROGRESS_SECONDS", "0")
    _learner(quiet=True).fit(1, lr=1e-3)
    assert ": batch " not in capsys.readouterr().out


def test_the_interval_and_the_time_left_as_written(monkeypatch):
    monkeypatch.delenv("TORCHGRAFT_PROGRESS_SECONDS", raising=False)
    assert progress_seconds() == 20.0
    monkeypatch.setenv("TORCHGRAFT_PROGRESS_SECONDS", "-1")
    with pytest.raises(ValueError, match="TORCHGRAFT_PROGRESS_SECONDS='-1' is not a number of seconds >= 0"):
        _learner(quiet=False).fit(1, lr=1e-3)
    assert [duration(s) for s in (0.4, 59.6, 185.2, 7441)] == ["0 s", "1 min 0 s", "3 min 5 s", "2 h 4 min"]
