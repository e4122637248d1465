"""Loggers under torchrun: every rank is given them, rank 0 alone writes; used by tests/train/test_tracking.py.

Usage: torchrun --nproc_per_node W ddp_tracking.py OUT_DIR, run in OUT_DIR (the loggers' defaults: ./runs for
TensorBoard, ./mlruns for MLflow). Each rank writes OUT_DIR/rank{R}.json: its optimizer steps and the loss of
each step it computed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from torchgraft import Learner
from torchgraft.train.distributed import cleanup, rank, setup


def main(out: Path) -> None:
    setup()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(96, 3, 8, 8, generator=generator)
    y = (x.mean(dim=(1, 2, 3)) > 0).long()
    train = DataLoader(TensorDataset(x[:64], y[:64]), batch_size=8, shuffle=True)
    valid = DataLoader(TensorDataset(x[64:], y[64:]), batch_size=16)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2)
    )
    learner = Learner(model, train, valid, quiet=True, loggers="tensorboard,mlflow")
    learner.fit(2, 1e-2)
    steps = {"steps": len(learner.lr_history), "losses": learner.loss_history}
    (out / f"rank{rank()}.json").write_text(json.dumps(steps))
    learner.close()
    cleanup()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
