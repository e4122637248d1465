"""The kept validation outputs under torchrun: rank 0 gathers every rank's shard of the exported epoch in the
validation set's order; used by tests/train/test_kept_outputs.py.

Usage: torchrun --nproc_per_node W ddp_kept.py OUT_DIR. Rank 0 writes OUT_DIR/kept.json: the kept samples'
count, whether the kept outputs and targets equal a fresh pass over the whole validation set (in order), and the
two confusion matrices.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from torchgraft import Learner
from torchgraft.app.run import validation_batches
from torchgraft.train.distributed import cleanup, is_main, setup


def main(out: Path) -> None:
    setup()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(150, 3, 8, 8, generator=generator)
    y = (x.mean(dim=(1, 2, 3)) > 0).long() + (x[:, 0].mean(dim=(1, 2)) > 0).long()
    train = DataLoader(TensorDataset(x[:80], y[:80]), batch_size=8, shuffle=True)
    valid = DataLoader(TensorDataset(x[80:], y[80:]), batch_size=16)  # 70 samples: uneven shards, a short batch
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)
    )
    learner = Learner(model, train, valid, checkpoint_dir=out / "checkpoints", quiet=True)
    learner.fit(2, 3e-2)
    learner.load_best()
    if is_main():
        kept, why = learner.kept.outputs_of(learner.best_epoch["index"])
        assert kept is not None, why
        fresh = list(validation_batches(learner.model, learner.full_valid_dl, device="cpu", task=learner.task))
        classes = ["a", "b", "c"]
        outputs, targets = (torch.cat([b[i] for b in kept]) for i in (0, 1))
        fresh_outputs, fresh_targets = (torch.cat([b[i] for b in fresh]) for i in (0, 1))
        result = {
            "samples": len(targets),
            "targets_in_order": bool(torch.equal(targets, fresh_targets)),
            "outputs_close": bool(torch.allclose(outputs, fresh_outputs, atol=1e-5)),
            "kept": learner.task.report(kept, classes).confusion,
            "fresh": learner.task.report(fresh, classes).confusion,
        }
        (out / "kept.json").write_text(json.dumps(result))
    learner.close()
    cleanup()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
