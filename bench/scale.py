"""Data at scale, the start: time from ``torchgraft train`` to the first optimizer step on a synthetic folder of
N tiny JPEGs in C class folders (default 1,000,000 x 1,000), first run (header check of every file) and second
run (verdicts from the manifest), side by side with today's full decode of every file (``--check full``),
timm's ``ImageDataset`` + loader to its first batch, and Hugging Face ``datasets``' ``imagefolder`` to its
first batch (skipped when ``datasets`` is not installed).

What is timed: the wall clock from launching the process (the interpreter, imports, everything) to the end of
the first optimizer step (torchgraft: resnet18 from random weights at 32 px, batch 64, 2 workers, so the
model costs well under a second) or the first batch (timm, datasets). ``read_s`` is torchgraft's share spent
listing, splitting and checking (the recipe's ``read``). Each measure runs in a fresh process; the
manifests go to a cache folder of the benchmark's own, emptied before the first run.

The folder is built once (one 8x8 JPEG's bytes written N times, ~4 KiB of disk per file) under
``/tmp/torchgraft-scale/N-C`` and reused. Prints one JSON line per measure.

Run: python bench/scale.py [--files 1000000] [--classes 1000] [--skip full,timm,datasets] [--write]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

ROOT = Path("/tmp/torchgraft-scale")
TRAIN = ["--model", "resnet18", "--weights", "none", "--size", "32", "--batch-size", "64", "--workers", "2"]
TRAIN += ["--epochs", "1", "--freeze-epochs", "0", "--quiet"]

# In the child: print the seconds since the parent launched it when the recipe's read ends and when the
# first optimizer step ends, then leave at once.
TORCHGRAFT = """
import json, os, sys, time
start = float(sys.argv[1])
from torchgraft.app.images import ImageInput
from torchgraft.train.callbacks import LambdaCallback
from torchgraft.train.learner import Learner
read, init, times = ImageInput.read, Learner.__init__, {}
def timed_read(self, *args, **kwargs):
    began = time.time()
    data = read(self, *args, **kwargs)
    times["read_s"] = time.time() - began
    return data
def first_step(learner):
    print(json.dumps({**times, "seconds": time.time() - start}), flush=True)
    os._exit(0)
def with_stop(self, *args, **kwargs):
    init(self, *args, **kwargs)
    self.add_callback(LambdaCallback(on_step_end=first_step))
ImageInput.read, Learner.__init__ = timed_read, with_stop
from torchgraft.cli.main import main
times["imports_s"] = time.time() - start
sys.exit(main(sys.argv[2:]))
"""

TIMM = """
import json, sys, time
start = float(sys.argv[1])
from timm.data import ImageDataset, create_loader
dataset = ImageDataset(sys.argv[2])
loader = create_loader(
    dataset, input_size=(3, 32, 32), batch_size=64, is_training=True, num_workers=2, use_prefetcher=False, device="cpu"
)
next(iter(loader))
print(json.dumps({"seconds": time.time() - start}), flush=True)
"""

DATASETS = """
import json, sys, time
start = float(sys.argv[1])
import torch
from datasets import load_dataset
from torchvision.transforms import v2
data = load_dataset("imagefolder", data_dir=sys.argv[2], split="train", cache_dir=sys.argv[3])
crop = v2.Compose([v2.PILToTensor(), v2.RandomResizedCrop(32, antialias=True)])
def transform(batch):
    return {"pixel_values": [crop(image.convert("RGB")) for image in batch["image"]], "label": batch["label"]}
data = data.with_transform(transform)
loader = torch.utils.data.DataLoader(data, batch_size=64, shuffle=True, num_workers=2)
next(iter(loader))
print(json.dumps({"seconds": time.time() - start}), flush=True)
"""


def _tiny_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (120, 80, 40)).save(buffer, "JPEG", quality=75)
    return buffer.getvalue()


def _write_class(folder: Path, count: int, content: bytes) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        handle = os.open(folder / f"{i:07d}.jpg", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(handle, content)
        os.close(handle)


def build_folder(files: int, classes: int) -> Path:
    """``/tmp/torchgraft-scale/FILES-CLASSES``: ``classes`` folders holding ``files`` JPEGs in all (built once:
    a ``.built`` marker says it is complete)."""
    root = ROOT / f"{files}-{classes}"
    if (root / ".built").is_file():
        return root
    shutil.rmtree(root, ignore_errors=True)
    content, start = _tiny_jpeg(), time.perf_counter()
    counts = [files // classes + (c < files % classes) for c in range(classes)]
    with ThreadPoolExecutor(8) as pool:  # file creation waits on the kernel, not the interpreter
        list(pool.map(lambda c: _write_class(root / f"class{c:04d}", counts[c], content), range(classes)))
    (root / ".built").write_text(f"{files} files, {classes} classes\n")
    print(json.dumps({"what": "build", "files": files, "seconds": round(time.perf_counter() - start, 2)}))
    return root


def _child(code: str, *args: str, env: dict[str, str] | None = None) -> dict:
    """Run ``code`` in a fresh interpreter, passing the launch time; its last JSON line (or the failure)."""
    start = time.time()
    done = subprocess.run(
        [sys.executable, "-c", code, repr(start), *args], capture_output=True, text=True, env=env, check=False
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        return {"error": (done.stderr or done.stdout).strip().splitlines()[-1:]}
    return json.loads(lines[-1])


def measure(files: int, classes: int, skip: set[str]) -> list[dict]:
    """Every measure on the folder of ``files`` x ``classes``, as JSON-able records (printed as they come)."""
    root = build_folder(files, classes)
    work = Path(tempfile.mkdtemp(prefix="torchgraft-scale-"))
    env = {**os.environ, "TORCHGRAFT_CACHE": str(work / "cache")}
    runs = [
        ("torchgraft, first run (--check header)", TORCHGRAFT, [*TRAIN, "--out", str(work / "a")], "torchgraft"),
        ("torchgraft, second run (manifest)", TORCHGRAFT, [*TRAIN, "--out", str(work / "b")], "torchgraft"),
        ("today: full decode of every file (--check full)", TORCHGRAFT, [*TRAIN, "--check", "full"], "full"),
        ("timm ImageDataset + loader, first batch", TIMM, [], "timm"),
        ("datasets imagefolder + DataLoader, first batch", DATASETS, [str(work / "hf")], "datasets"),
    ]
    records = []
    for what, code, extra, name in runs:
        if name in skip:
            continue
        if name == "datasets" and subprocess.run([sys.executable, "-c", "import datasets"], check=False).returncode:
            print(json.dumps({"what": what, "skipped": "datasets is not installed"}))
            continue
        arguments = ["train", str(root), *extra] if code is TORCHGRAFT else [str(root), *extra]
        if name == "full":
            arguments += ["--manifest-dir", "none", "--out", str(work / "full")]
        record = {"what": what, "files": files, "classes": classes, **_child(code, *arguments, env=env)}
        records.append(record)
        print(json.dumps(record), flush=True)
    shutil.rmtree(work, ignore_errors=True)
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=1_000_000)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--skip", default="", help="comma-separated: full, timm, datasets")
    parser.add_argument("--write", action="store_true", help="append the table to docs/benchmarks.md")
    args = parser.parse_args()
    records = measure(args.files, args.classes, set(filter(None, args.skip.split(","))))
    today = next((r["seconds"] for r in records if r["what"].startswith("today") and "seconds" in r), None)
    lines = ["| start to first step | seconds | vs today's full scan |", "|---|---:|---:|"]
    for record in records:
        seconds = record.get("seconds")
        ratio = f"{seconds / today:.3f}x" if seconds and today else "-"
        lines.append(f"| {record['what']} | {seconds:.1f} | {ratio} |" if seconds else f"| {record['what']} | - | - |")
    if args.write:
        sys.path.insert(0, str(Path(__file__).parent))
        from _report import machine, report

        report(f"Start at scale: {args.files:,} files, {args.classes:,} classes ({machine()})", lines, write=True)
    else:
        print("\n".join(lines))


if __name__ == "__main__":
    main()
