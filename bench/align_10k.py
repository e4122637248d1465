"""Benchmark: aligning a 10,000-key checkpoint whose keys were all renamed by another codebase.

The model is a 400-block transformer-like stack (25 tensors per block: 10,000 keys, timm-style names);
the checkpoint holds the same tensors under Hugging Face-style names (``encoder.layer.N.attention...``), so
no key matches by name and every pair comes from the structure stage. Timed: ``align_keys`` on names and
shapes, and ``load_weights`` end to end (small tensors, so the time is the alignment, not the copying),
beside ``load_state_dict`` of the same tensors under the model's own names as the reference.

Run: python bench/align_10k.py  (append the results to docs/benchmarks.md with --write)
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn

from _report import machine, report, should_write
from torchgraft import align_keys, load_weights

BLOCKS = 400
WIDTH = 8
# (model name, checkpoint name, shape) of the 25 tensors of one block
BLOCK = [
    ("norm1.weight", "attention.ln.weight", (WIDTH,)),
    ("norm1.bias", "attention.ln.bias", (WIDTH,)),
    ("attn.q.weight", "attention.self.query.weight", (WIDTH, WIDTH)),
    ("attn.q.bias", "attention.self.query.bias", (WIDTH,)),
    ("attn.k.weight", "attention.self.key.weight", (WIDTH, WIDTH)),
    ("attn.k.bias", "attention.self.key.bias", (WIDTH,)),
    ("attn.v.weight", "attention.self.value.weight", (WIDTH, WIDTH)),
    ("attn.v.bias", "attention.self.value.bias", (WIDTH,)),
    ("attn.proj.weight", "attention.output.dense.weight", (WIDTH, WIDTH)),
    ("attn.proj.bias", "attention.output.dense.bias", (WIDTH,)),
    ("ls1.gamma", "attention.output.gamma", (WIDTH,)),
    ("norm2.weight", "output.ln.weight", (WIDTH,)),
    ("norm2.bias", "output.ln.bias", (WIDTH,)),
    ("mlp.fc1.weight", "intermediate.dense.weight", (4 * WIDTH, WIDTH)),
    ("mlp.fc1.bias", "intermediate.dense.bias", (4 * WIDTH,)),
    ("mlp.fc2.weight", "output.dense.weight", (WIDTH, 4 * WIDTH)),
    ("mlp.fc2.bias", "output.dense.bias", (WIDTH,)),
    ("ls2.gamma", "output.gamma", (WIDTH,)),
    ("bn.weight", "output.bn.weight", (WIDTH,)),
    ("bn.bias", "output.bn.bias", (WIDTH,)),
    ("bn.running_mean", "output.bn.running_mean", (WIDTH,)),
    ("bn.running_var", "output.bn.running_var", (WIDTH,)),
    ("bn.num_batches_tracked", "output.bn.num_batches_tracked", ()),
    ("gate.weight", "output.gate.weight", (1, WIDTH)),
    ("gate.bias", "output.gate.bias", (1,)),
]


def _names() -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]], dict[str, str]]:
    model, checkpoint, pairs = {}, {}, {}
    for i in range(BLOCKS):
        for ours, theirs, shape in BLOCK:
            model[f"blocks.{i}.{ours}"] = shape
            checkpoint[f"encoder.layer.{i}.{theirs}"] = shape
            pairs[f"encoder.layer.{i}.{theirs}"] = f"blocks.{i}.{ours}"
    return model, checkpoint, pairs


class _Flat(nn.Module):
    """A module holding the 10,000 tensors as buffers under their dotted names."""

    def __init__(self, shapes: dict[str, tuple[int, ...]]) -> None:
        super().__init__()
        for name, shape in shapes.items():
            owner = self
            *path, leaf = name.split(".")
            for part in path:
                if not hasattr(owner, part):
                    owner.add_module(part, nn.Module())
                owner = getattr(owner, part)
            owner.register_buffer(leaf, torch.zeros(shape))


def _best(run: Callable[[], object], repeats: int = 5) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    write = should_write()
    model_shapes, checkpoint_shapes, pairs = _names()
    alignment = align_keys(checkpoint_shapes, model_shapes)
    assert len(alignment.matches) == len(model_shapes) == 10_000
    assert all(pairs[m.source] == m.target and m.how == "structure" for m in alignment.matches)
    align_s = _best(lambda: align_keys(checkpoint_shapes, model_shapes))

    model = _Flat(model_shapes)
    checkpoint = {name: torch.randn(shape) for name, shape in checkpoint_shapes.items()}
    own_names = {pairs[name]: tensor for name, tensor in checkpoint.items()}
    assert load_weights(model, checkpoint).ok
    load_s = _best(lambda: load_weights(model, checkpoint), repeats=3)
    reference_s = _best(lambda: model.load_state_dict(own_names), repeats=3)
    lines = [
        f"`python bench/align_10k.py --write` on {machine()}. A 10,000-key checkpoint (400 blocks x 25 tensors) "
        "whose every key is renamed (`encoder.layer.N.attention.self.query.weight` for "
        "`blocks.N.attn.q.weight`): all 10,000 pairs come from the structure stage and are checked against the "
        "true mapping. Best of 5 (align) or 3 (load) runs. Target: aligning under 1 s.",
        "",
        "| step | time (s) |",
        "|---|---|",
        f"| `align_keys` (names and shapes) | {align_s:.3f} |",
        f"| `load_weights` end to end (read, align, check shapes, copy) | {load_s:.3f} |",
        f"| reference: `load_state_dict` with the model's own names | {reference_s:.3f} |",
    ]
    report("aligning a fully renamed 10,000-key checkpoint", lines, write=write)


if __name__ == "__main__":
    main()
