"""Train a small CNN on sklearn's digits with a checkpoint directory; used by the kill-and-resume test.

Usage: python train_digits.py OUT_DIR [--resume]. Prints "step EPOCH STEP" after every optimizer step and
writes the final weights to OUT_DIR/final.pt.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from sklearn.datasets import load_digits
from torch import nn

from torchgraft import Learner
from torchgraft.train.callbacks import LambdaCallback


def main() -> None:
    out = Path(sys.argv[1])
    resume = out / "last.pt" if "--resume" in sys.argv else None
    torch.set_num_threads(1)
    torch.manual_seed(0)
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16
    y = torch.tensor(digits.target)
    data = torch.utils.data.TensorDataset(x[:1200], y[:1200])
    valid = torch.utils.data.TensorDataset(x[1200:], y[1200:])
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Dropout(0.1),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )
    learner = Learner(
        model,
        torch.utils.data.DataLoader(data, batch_size=32, shuffle=True),
        torch.utils.data.DataLoader(valid, batch_size=256),
        checkpoint_dir=out,
        quiet=True,
        callbacks=[LambdaCallback(on_step_end=lambda learn: print(f"step {learn.epoch} {learn.step}", flush=True))],
    )
    learner.fit_one_cycle(3, slice(1e-3, 1e-2), resume=resume)
    torch.save(model.state_dict(), out / "final.pt")


if __name__ == "__main__":
    main()
