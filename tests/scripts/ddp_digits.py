"""Train an MLP on sklearn's digits with the Learner, under torchrun or alone; used by the DDP test.

Usage: [torchrun --nproc_per_node 2] ddp_digits.py OUT_FILE BATCH_PER_PROCESS [ACCUMULATE [NAN_RANK]]. With
NAN_RANK, that rank's loss turns NaN at its 5th batch and every rank writes OUT_FILE.rankN when it stops.
Rank 0 writes the final weights and the history to OUT_FILE.
"""

from __future__ import annotations

import sys

import torch
from sklearn.datasets import load_digits
from torch import nn

from torchgraft import Learner, TrainingDivergedError
from torchgraft.train.distributed import cleanup, is_main, world_size


def main() -> None:
    out, batch = sys.argv[1], int(sys.argv[2])
    accumulate = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    nan_rank = int(sys.argv[4]) if len(sys.argv) > 4 else -1
    calls = [0]

    def loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        value = nn.functional.cross_entropy(outputs, targets)
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        return value * float("nan") if rank == nan_rank and calls[0] == 5 else value

    torch.set_num_threads(1)
    torch.manual_seed(0)
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).flatten(1) / 16
    y = torch.tensor(digits.target)
    train = torch.utils.data.TensorDataset(x[:1400], y[:1400])
    valid = torch.utils.data.TensorDataset(x[1400:1796], y[1400:1796])
    model = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))
    learner = Learner(
        model,
        torch.utils.data.DataLoader(train, batch_size=batch, shuffle=False),
        torch.utils.data.DataLoader(valid, batch_size=66),
        optimizer=torch.optim.SGD,
        weight_decay=0.0,
        accumulate=accumulate,
        loss=loss,
        quiet=True,
    )
    stopped, history = None, []
    try:
        history = learner.fit(2, 0.2)
    except TrainingDivergedError as error:
        stopped = str(error)
    if stopped is not None:
        with open(f"{out}.rank{torch.distributed.get_rank()}", "w") as handle:
            handle.write(stopped)
    elif is_main():
        torch.save({"weights": model.state_dict(), "history": history, "world": world_size()}, out)
    learner.close()  # the DDP wrapper goes before its process group does (gloo may abort at exit otherwise)
    cleanup()


if __name__ == "__main__":
    main()
