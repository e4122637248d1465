"""What a run prints: one epoch table for the whole run (stage, epoch within the run, never repeated, values,
seconds) whose rows are the history's records, the same stage names in every record, and on a real terminal
(a pseudo-terminal here) a tqdm bar per epoch with the time left instead of plain lines."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import textwrap
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from torchgraft import graft, layer_groups
from torchgraft.train.learner import Learner
from torchgraft.train.table import epoch_table


def _three_group_learner(**options) -> Learner:
    """A small CNN grafted after its pooling (three layer groups: body0, body1, head) on 32 random 8x8 images."""
    torch.manual_seed(0)
    body = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1)
    )
    model = graft(nn.Sequential(*body, nn.Flatten(), nn.Linear(16, 10)), 3, cut="4", input_size=(1, 8, 8))
    assert [g.name for g in layer_groups(model)] == ["body0", "body1", "head"]
    x, y = torch.randn(32, 1, 8, 8), torch.arange(32) % 3
    train = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True)
    return Learner(model, train, DataLoader(TensorDataset(x, y), batch_size=16), task="classify", **options)


def test_a_fine_tune_prints_one_table_with_the_stage_and_the_epoch_within_the_run(capsys, monkeypatch):
    monkeypatch.setenv("TORCHGRAFT_PROGRESS_SECONDS", "3600")  # no batch line between the rows on a slow machine
    learner = _three_group_learner(progress=False)
    history = learner.fine_tune(2, 1e-3, freeze_epochs=1, gradual=True)  # frozen, top2, unfrozen
    out = capsys.readouterr().out.splitlines()
    headers = [i for i, line in enumerate(out) if line.split()[:2] == ["stage", "epoch"]]
    assert len(headers) == 1, out  # one table, not one per stage
    assert out[headers[0]].split() == ["stage", "epoch", "train_loss", "valid_loss", "accuracy", "seconds"]
    rows = out[headers[0] + 1 : headers[0] + 4]
    assert [row.split()[:2] for row in rows] == [["frozen", "1"], ["top2", "2"], ["unfrozen", "3"]]
    recorded = [(r["stage"], r["phase"], r["epoch"]) for r in history]
    assert recorded == [("frozen", 0, 1), ("top2", 1, 2), ("unfrozen", 2, 3)]
    for row, record in zip(rows, history, strict=True):  # the printed values are the recorded ones
        cells = row.split()
        assert cells[2:5] == [f"{record[k]:.4f}" for k in ("train_loss", "valid_loss", "accuracy")]
        assert cells[5] == f"{record['seconds']:.1f}"
    printed = out[headers[0] : headers[0] + 4]
    assert epoch_table(history).splitlines() == printed  # the table of a finished run (demo --quiet) is the same


def test_plain_fits_go_on_counting_epochs_and_name_their_stage_fit(capsys):
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    model = graft(nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4)), 3, cut=-1, input_size=(6,))
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    learner = Learner(model, loader, loader, task="classify", progress=False)
    learner.fit(2, 1e-3)
    learner.fit_one_cycle(1, 1e-3)
    recorded = [(r["stage"], r["phase"], r["epoch"]) for r in learner.history]
    assert recorded == [("fit", 0, 1), ("fit", 0, 2), ("fit", 1, 3)]
    rows = [line.split()[:2] for line in capsys.readouterr().out.splitlines() if line.startswith("fit ")]
    assert rows == [["fit", "1"], ["fit", "2"], ["fit", "3"]]


_SCRIPT = textwrap.dedent(
    """
    import time
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, Dataset, TensorDataset
    from torchgraft import graft, layer_groups
    from torchgraft.train.learner import Learner

    class Slow(Dataset):  # 10 batches of 2 at 0.03 s each: the bar refreshes (every 0.1 s) inside an epoch
        def __init__(self):
            self.x, self.y = torch.randn(20, 6), torch.arange(20) % 3
        def __len__(self):
            return 20
        def __getitem__(self, i):
            time.sleep(0.015)
            return self.x[i], self.y[i]

    model = graft(nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4)), 3, cut=-1, input_size=(6,))
    valid = DataLoader(TensorDataset(torch.randn(8, 6), torch.arange(8) % 3), batch_size=8)
    learner = Learner(model, DataLoader(Slow(), batch_size=2), valid, task="classify")
    learner.fine_tune(1, 1e-3, freeze_epochs=1)  # progress left to the default: stderr is a terminal
    """
)


def _run_in_a_terminal(code: str, timeout: float = 120.0) -> str:
    """Run ``python -c code`` with stdin, stdout and stderr on a pseudo-terminal 120 columns wide; everything
    it wrote there."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = {**os.environ, "TERM": "xterm", "COLUMNS": "120"}
    env.pop("TORCHGRAFT_PROGRESS_SECONDS", None)
    process = subprocess.Popen(
        [sys.executable, "-c", code], stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True
    )
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(master)
        process.wait(timeout=30)
    assert process.returncode == 0, b"".join(chunks).decode(errors="replace")[-3000:]
    return b"".join(chunks).decode(errors="replace")


def test_on_a_terminal_each_epoch_has_a_bar_with_the_time_left():
    text = _run_in_a_terminal(_SCRIPT)
    frames = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text).replace("\r", "\n").splitlines()
    # tqdm's frame: "epoch 2 (unfrozen):  40%|████      | 4/10 [00:00<00:00,  9.81batch/s]"
    eta = re.compile(
        r"epoch (\d) \((frozen|unfrozen)\): +\d+%\|.*\| (\d+)/10 \[\d\d:\d\d<(\d\d:\d\d), +[\d.]+batch/s\]"
    )
    seen = [m.groups() for line in frames if (m := eta.search(line))]
    assert {(epoch, stage) for epoch, stage, _, _ in seen} == {("1", "frozen"), ("2", "unfrozen")}, text[-3000:]
    assert all(0 < int(done) <= 10 for _, _, done, _ in seen)  # frames inside the epoch, with an estimate
    assert ": batch " not in text  # the plain lines are for output that is not a terminal
    table = [line.split()[:2] for line in frames if re.match(r"(frozen|unfrozen) +\d", line)]
    assert table == [["frozen", "1"], ["unfrozen", "2"]], text[-3000:]
