"""Every training recipe of the Learner on sklearn's digits, under torchrun or alone; used by the DDP tests.

Usage: [torchrun --nproc_per_node W] ddp_recipes.py OUT_DIR GLOBAL_BATCH SCENARIO[,SCENARIO...]. Each rank reads
GLOBAL_BATCH / W samples per step, so every world size trains on the same combined batches. Rank 0 writes
OUT_DIR/SCENARIO.pt with the final weights, the history and whether every rank ended with bit-identical
weights.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from torchgraft import Learner, check_pretrained, describe, freeze, graft, lora, sync_optimizer
from torchgraft.data.sampling import SeededSampler, SeededSamples
from torchgraft.train.callbacks import LambdaCallback
from torchgraft.train.distributed import cleanup, is_main, setup, world_size


def cnn(*, batchnorm: bool = False) -> nn.Module:
    """Three body blocks and a classifier (layer groups: block1, block2, block3, head)."""

    def block(cin: int, cout: int) -> nn.Sequential:
        norm = nn.BatchNorm2d(cout) if batchnorm else nn.Identity()
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), norm, nn.Tanh())

    return nn.Sequential(
        block(1, 8), block(8, 12), block(12, 16), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)
    )


class Jitter(Dataset):
    """Digits with random noise added at every read (random augmentation)."""

    def __init__(self, data: TensorDataset) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.data[index]
        return x + 0.1 * torch.randn_like(x), y


class Fingerprinted(TensorDataset):
    """Digits that name themselves (as an ImageDataset does by its files): their feature store is kept."""

    def fingerprint(self) -> str:
        return hashlib.blake2b(b"".join(t.numpy().tobytes() for t in self.tensors)).hexdigest()


def data() -> tuple[TensorDataset, TensorDataset]:
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16
    y = torch.tensor(digits.target)
    # 1380 training samples: whole batches of 60 at 1, 2, 3 and 4 processes; 397 validation samples
    return TensorDataset(x[:1380], y[:1380]), TensorDataset(x[1400:1797], y[1400:1797])


def build(scenario: str, batch: int, out: Path) -> tuple[Learner, Callable[[Learner], Any]]:
    torch.manual_seed(0)
    fsdp = scenario.startswith("fsdp_")
    scenario = scenario.removeprefix("fsdp_")
    train, valid = data()
    model = graft(cnn(batchnorm=scenario == "bn_eval"), 10, cut="3", head="linear", input_size=(1, 8, 8))
    loader: DataLoader = DataLoader(train, batch_size=batch, shuffle=False)
    options: dict[str, Any] = {"strategy": "fsdp"} if fsdp else {}
    if scenario == "seeded":
        loader = DataLoader(SeededSamples(Jitter(train)), batch_size=batch, sampler=SeededSampler(len(train), seed=3))
    if scenario == "prefrozen":
        freeze(model)
    if scenario == "lora":
        model = lora(model, r=2)
    if scenario == "cached":
        options["cache_features"] = True
    if scenario == "stored":  # a fingerprinted dataset: its features stored on disk, filled per rank
        freeze(model, bn="frozen")
        loader = DataLoader(Fingerprinted(*train.tensors), batch_size=batch, shuffle=False)
        valid = Fingerprinted(*valid.tensors)
        options.update(cache_features=True, cache_dir=out / "features", task="classify")
    if scenario == "accumulate":
        options["accumulate"] = 2
    if scenario == "bf16":  # under FSDP2: its mixed-precision policy (bf16 gathers, fp32 reductions)
        options["amp"] = "bf16"
    if scenario == "bn_eval":
        options["batchnorm"] = "eval"
    if scenario == "resume":
        options["checkpoint_dir"] = out / f"{'fsdp_' if fsdp else ''}checkpoints"
    learner = Learner(model, loader, DataLoader(valid, batch_size=50), quiet=True, **options)

    def surgery(learner: Learner) -> Any:
        learner.fit(1, 1e-2)
        learner.model.head[-1] = nn.Linear(16, 10)  # a new layer after the optimizer and DDP exist
        return learner.fit_one_cycle(1, 1e-2)

    def resume(learner: Learner) -> Any:
        def stop(learner: Learner) -> None:
            if learner.stage == "unfrozen" and learner.step == 15:
                raise KeyboardInterrupt

        learner.add_callback(LambdaCallback(on_step_end=stop))
        interrupted = False
        try:
            learner.fine_tune(1, 1e-2, freeze_epochs=1)
        except KeyboardInterrupt:
            interrupted = True
        assert interrupted, "the run was to stop in the unfrozen stage"
        fresh, _ = build(("fsdp_" if fsdp else "") + "resume", batch, out)  # a new process would start so
        history = fresh.fine_tune(1, 1e-2, freeze_epochs=1, resume=options["checkpoint_dir"] / "last.pt")
        learner.model = fresh.model  # what the test compares
        learner.plain = fresh.plain
        return history

    def surgery_inside(learner: Learner) -> Any:
        def replace_head(learner: Learner) -> None:
            if learner.step == 10:  # inside the first epoch: a new layer, the optimizer synced
                learner.model.head[-1] = nn.Linear(16, 10)
                sync_optimizer(learner.optimizer, learner.model)

        learner.add_callback(LambdaCallback(on_step_end=replace_head))
        return learner.fit(2, 1e-2)

    def stored(learner: Learner) -> Any:
        filled = _encoded(learner.model)
        history = learner.fit_one_cycle(2, 3e-2)
        again, _ = build("stored", batch, out)  # the next run: reads the store, the body does not run
        read = _encoded(again.model)
        again.fit_one_cycle(2, 3e-2)
        same = all(
            torch.equal(a, b)
            for a, b in zip(learner.model.state_dict().values(), again.model.state_dict().values(), strict=True)
        )
        counts = {"filled": _gathered(filled[0]), "again": _gathered(read[0]), "same": _gathered(same)}
        if is_main():
            torch.save(counts, out / "stored_counts.pt")
        again.close()
        return history

    recipes: dict[str, Callable[[Learner], Any]] = {
        "surgery_inside": surgery_inside,
        "resume": resume,
        "fine_tune": lambda ln: ln.fine_tune(1, 1e-2, freeze_epochs=1),
        "prefrozen": lambda ln: ln.fine_tune(1, 1e-2, freeze_epochs=1),
        "gradual": lambda ln: ln.fine_tune(3, 1e-2, freeze_epochs=1, gradual=True),
        "keep_frozen": lambda ln: ln.fine_tune(1, 1e-2, freeze_epochs=1, keep_frozen=2),
        "cached": lambda ln: ln.fine_tune(1, 1e-2, freeze_epochs=1, frozen_lr=3e-2),
        "stored": stored,
        "accumulate": lambda ln: ln.fine_tune(1, 1e-2, freeze_epochs=1),
        "lora": lambda ln: ln.fit_one_cycle(1, 1e-2),
        "surgery": surgery,
        "seeded": lambda ln: ln.fit_one_cycle(2, 1e-2),
        "bn_eval": lambda ln: ln.fine_tune(1, 1e-2, freeze_epochs=1),
        "bf16": lambda ln: ln.fine_tune(1, 1e-2, freeze_epochs=1),
        "evaluate": lambda ln: ln.fit(1, 0.0),  # weights unchanged: validation of the same model at any world
    }
    return learner, recipes[scenario]


def _encoded(model: nn.Module) -> list[int]:
    """A counter of the samples the body encodes on this rank (a forward hook on the real body)."""
    count = [0]
    model.body.register_forward_hook(lambda module, inputs, output: count.__setitem__(0, count[0] + len(inputs[0])))
    return count


def _gathered(value: Any) -> list[Any]:
    if world_size() == 1:
        return [value]
    values: list[Any] = [None] * world_size()
    dist.all_gather_object(values, value)
    return values


def identical_on_every_rank(model: nn.Module) -> bool:
    flat = torch.cat([t.detach().float().flatten() for t in model.state_dict().values()])
    if world_size() == 1:
        return True
    gathered = [torch.empty_like(flat) for _ in range(world_size())]
    dist.all_gather(gathered, flat)
    return all(torch.equal(gathered[0], other) for other in gathered[1:])


def main() -> None:
    out, global_batch, scenarios = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3].split(",")
    torch.set_num_threads(1)
    setup()  # join the process group first: the per-rank batch depends on the world size
    for scenario in scenarios:
        learner, recipe = build(scenario, global_batch // max(1, world_size()), out)
        history = recipe(learner)
        whole = learner.gathered_model()  # under FSDP: gathered on rank 0
        same = identical_on_every_rank(learner.model) if not scenario.startswith("fsdp_") else True
        plan = describe(learner.model)  # on DTensor shards under FSDP: whole counts
        pretrained = check_pretrained(learner.model).checked
        if is_main():
            assert whole is not None
            weights = {k: v.detach().clone() for k, v in whole.state_dict().items()}
            result = {"weights": weights, "history": history, "world": world_size(), "same": same}
            torch.save({**result, "plan": plan, "guarded": pretrained}, out / f"{scenario}.pt")
        learner.close()
    cleanup()


if __name__ == "__main__":
    main()
