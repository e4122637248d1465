"""The GPU check (run by bench/gpu_check.sh): speed and placement figures that need CUDA devices.

Modes (each writes OUT_DIR/MODE.json and prints it):

* ``single``: ``Learner.fit`` with ``amp="bf16"`` and channels-last against a hand-written loop doing the same
  (autocast bf16, channels-last, AdamW), images/s and their ratio; then the frozen stage of ``fine_tune``
  with and without the feature cache (images/s of the epochs after the first, and the whole stage's time).
* ``ddp`` / ``fsdp`` (under ``torchrun --nproc_per_node N``): ``fine_tune(1, freeze_epochs=1)`` with that
  strategy on NCCL, images/s per step of the unfrozen stage, every rank's device checked against
  ``cuda:LOCAL_RANK``, and the ranks' final weights compared.

Data are random images held in memory (a speed check: both sides of a ratio read the same tensors).
``--smoke`` runs every mode tiny on the CPU (what the test suite does to keep the script working).

Usage: python bench/gpu_check.py MODE OUT_DIR [--smoke]
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from torchgraft import Learner, graft
from torchgraft.train.callbacks import LambdaCallback
from torchgraft.train.distributed import cleanup, is_main, setup, world_size


def sizes(smoke: bool) -> dict[str, Any]:
    if smoke:
        return {"arch": "resnet18", "size": 32, "batch": 8, "steps": 6, "warmup": 2}
    return {"arch": "resnet50", "size": 224, "batch": 128, "steps": 60, "warmup": 10}


def data(n: int, size: int) -> TensorDataset:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(n, 3, size, size, generator=generator)
    return TensorDataset(images, torch.randint(0, 10, (n,), generator=generator))


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def hand_loop(s: dict[str, Any], device: torch.device) -> float:
    """Images/s of the loop a user writes for bf16 + channels-last."""
    torch.manual_seed(0)
    model = graft(getattr(torchvision.models, s["arch"])(), 10).to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loader = DataLoader(data(s["batch"] * (s["steps"] + s["warmup"]), s["size"]), batch_size=s["batch"])
    model.train()
    start = 0.0
    for step, (x, y) in enumerate(loader):
        if step == s["warmup"]:
            sync()
            start = time.perf_counter()
        x = x.to(device, non_blocking=True).to(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = nn.functional.cross_entropy(model(x), y.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    sync()
    return s["batch"] * s["steps"] / (time.perf_counter() - start)


def timed_learner(learner: Learner, s: dict[str, Any], run: Any) -> float:
    """Images/s of the optimizer steps after the warm-up ones, while ``run(learner)`` trains."""
    marks: list[float] = []

    def tick(learner: Learner) -> None:
        sync()
        marks.append(time.perf_counter())

    learner.add_callback(LambdaCallback(on_step_end=tick))
    run(learner)
    steps = marks[s["warmup"] :]
    return learner.train_dl.batch_size * world_size() * (len(steps) - 1) / (steps[-1] - steps[0])


def single(s: dict[str, Any], device: torch.device) -> dict[str, Any]:
    hand = hand_loop(s, device)
    torch.manual_seed(0)
    model = graft(getattr(torchvision.models, s["arch"])(), 10)
    loader = DataLoader(data(s["batch"] * (s["steps"] + s["warmup"]), s["size"]), batch_size=s["batch"])
    learner = Learner(model, loader, device=device, amp="bf16", channels_last=True, quiet=True)
    ours = timed_learner(learner, s, lambda ln: ln.fit(1, 1e-3))
    frozen = {}
    for cache in (False, True):
        torch.manual_seed(0)
        model = graft(getattr(torchvision.models, s["arch"])(), 10)
        loader = DataLoader(data(s["batch"] * s["steps"], s["size"]), batch_size=s["batch"], shuffle=True)
        learner = Learner(model, loader, device=device, amp="bf16", cache_features=cache, quiet=True)
        start = time.perf_counter()
        learner.fine_tune(0, 1e-3, freeze_epochs=3)
        sync()
        seconds = [r["seconds"] for r in learner.history]
        frozen["cached" if cache else "uncached"] = {
            "stage_seconds": time.perf_counter() - start,
            "images_per_s_after_epoch_1": s["batch"] * s["steps"] * 2 / sum(seconds[1:]),
        }
    return {
        "hand_images_per_s": hand,
        "learner_images_per_s": ours,
        "learner_time_vs_hand": hand / ours,
        "frozen": frozen,
    }


def distributed(s: dict[str, Any], strategy: str) -> dict[str, Any]:
    setup()
    torch.manual_seed(0)
    model = graft(getattr(torchvision.models, s["arch"])(), 10)
    count = s["batch"] * world_size() * (s["steps"] + s["warmup"])
    loader = DataLoader(data(count, s["size"]), batch_size=s["batch"])
    amp = "bf16"  # under FSDP2: its mixed-precision policy (bf16 compute, fp32 gradient reduction)
    learner = Learner(model, loader, amp=amp, strategy=strategy, quiet=True)  # type: ignore[arg-type]
    rate = timed_learner(learner, s, lambda ln: ln.fine_tune(1, 1e-3, freeze_epochs=1))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    on_gpu = learner.device.type == "cuda"
    placed = not on_gpu or (learner.device.index == local and next(model.parameters()).device == learner.device)
    checks = torch.tensor([float(placed)], device=learner.device)
    if world_size() > 1:
        torch.distributed.all_reduce(checks, op=torch.distributed.ReduceOp.MIN)
    whole = learner.gathered_model()
    learner.close()
    result = {
        "strategy": strategy,
        "world": world_size(),
        "backend": torch.distributed.get_backend() if world_size() > 1 else None,
        "unfrozen_images_per_s": rate,
        "every_rank_on_cuda_local_rank": bool(checks.item()),
        "history": learner.history,
        "finite_weights": whole is None or all(bool(torch.isfinite(t).all()) for t in whole.state_dict().values()),
        "main": is_main(),
    }
    cleanup()
    return result


def main() -> None:
    mode, out, smoke = sys.argv[1], Path(sys.argv[2]), "--smoke" in sys.argv
    torch.set_flush_denormal(True)
    s = sizes(smoke)
    device = torch.device("cuda" if torch.cuda.is_available() and not smoke else "cpu")
    result = single(s, device) if mode == "single" else distributed(s, mode)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    result.update(torch=torch.__version__, device=name, **s)
    if result.pop("main", True):
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{mode}.json").write_text(json.dumps(result, indent=1, default=str))
        print(json.dumps(result, default=str))


if __name__ == "__main__":
    main()
