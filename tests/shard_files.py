"""Small real images on disk for the shard and dataset tests: class folders, multi-label and regression CSVs,
Hugging Face datasets (Parquet files, a save_to_disk folder) and WebDataset shards written without pack."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("cat", "dog", "eel")


def _image(rng: np.random.Generator, shade: int) -> Image.Image:
    """A 20x24 picture: noise around one shade per class (so a model can learn something)."""
    pixels = np.clip(rng.normal(shade, 40, (20, 24, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def class_folders(root: Path, *, per_class: int = 8, corrupt: bool = False) -> Path:
    """``root/<class>/<i>.png`` (every third one a JPEG), optionally with a file cut short."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            suffix = "jpg" if i % 3 == 0 else "png"
            _image(rng, 40 + 80 * c).save(root / name / f"{i}.{suffix}")
    if corrupt:
        data = (root / "cat" / "0.jpg").read_bytes()
        (root / "cat" / "cut.jpg").write_bytes(data[: len(data) // 3])
    return root


def tables(root: Path, count: int = 24) -> tuple[Path, Path]:
    """``multilabel.csv`` (``path,labels`` with ``a;b`` cells) and ``regression.csv`` (two value columns)."""
    rng = np.random.default_rng(1)
    (root / "images").mkdir(parents=True, exist_ok=True)
    multi, values = ["path,labels"], ["path,width,height"]
    for i in range(count):
        _image(rng, 30 + 8 * i).save(root / "images" / f"{i}.png")
        tags = [t for k, t in enumerate(("sky", "sea", "sun")) if (i >> k) & 1] or ["sky"]
        multi.append(f"images/{i}.png,{';'.join(tags)}")
        values.append(f"images/{i}.png,{i * 0.5 + 0.25},{10 - i * 0.3:.2f}")
    (root / "multilabel.csv").write_text("\n".join(multi) + "\n")
    (root / "regression.csv").write_text("\n".join(values) + "\n")
    return root / "multilabel.csv", root / "regression.csv"


def hf_images(root: Path, *, per_class: int = 8) -> tuple[Path, Path]:
    """The class folders as a Hugging Face dataset: a Parquet folder (``train-*.parquet`` + ``valid-*.parquet``,
    string labels) and a ``save_to_disk`` folder (a ``ClassLabel`` feature, one split)."""
    import datasets

    rng = np.random.default_rng(2)
    rows: dict[str, list] = {"image": [], "label": []}
    for c, name in enumerate(CLASSES):
        for _ in range(per_class):
            buffer = io.BytesIO()
            _image(rng, 40 + 80 * c).save(buffer, format="PNG")
            rows["image"].append({"bytes": buffer.getvalue(), "path": None})
            rows["label"].append(name)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("string")})
    table = datasets.Dataset.from_dict(rows, features=features)
    (root / "parquet").mkdir(parents=True)
    train, valid = table.select([i for i in range(len(table)) if i % 4]), table.select(range(0, len(table), 4))
    train.to_parquet(str(root / "parquet" / "train-00000.parquet"))
    valid.to_parquet(str(root / "parquet" / "valid-00000.parquet"))
    labelled = table.cast_column("label", datasets.ClassLabel(names=list(CLASSES)))
    labelled.save_to_disk(str(root / "disk"))
    return root / "parquet", root / "disk"


def text_shards(root: Path) -> Path:
    """WebDataset shards of texts (``txt``) with class indices (``cls``): ``root/train-000000.tar`` (12) and
    ``root/valid-000000.tar`` (4)."""
    import webdataset

    root.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", 12), ("valid", 4)):
        with webdataset.ShardWriter(str(root / f"{split}-%06d.tar"), maxcount=100, verbose=0) as writer:
            for i in range(count):
                writer.write(
                    {"__key__": f"t{i:04d}", "txt": f"sentence number {i} about {CLASSES[i % 2]}", "cls": i % 2}
                )
    return root


def user_shards(root: Path, *, per_shard: int = 5, shards: int = 3, corrupt: tuple[int, ...] = ()) -> Path:
    """WebDataset shards as other tools write them (``jpg`` + ``txt`` class names, no torchgraft metadata):
    ``root/train-00000{0..2}.tar`` and ``root/valid-000000.tar``; the training samples numbered in ``corrupt``
    hold JPEGs cut to their first 40 bytes (a header that no decoder reads to the end)."""
    import webdataset

    rng = np.random.default_rng(3)
    root.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", shards), ("valid", 1)):
        with webdataset.ShardWriter(str(root / f"{split}-%06d.tar"), maxcount=per_shard, verbose=0) as writer:
            for i in range(count * per_shard):
                c = i % len(CLASSES)
                buffer = io.BytesIO()
                _image(rng, 40 + 80 * c).save(buffer, format="JPEG")
                data = buffer.getvalue()[:40] if split == "train" and i in corrupt else buffer.getvalue()
                writer.write({"__key__": f"s{i:05d}", "jpg": data, "txt": CLASSES[c]})
    return root


def hf_targets(root: Path, count: int = 12) -> tuple[Path, Path]:
    """A Parquet file of images with a list-of-tags column and two value columns, and the same saved with
    ``save_to_disk`` with the tags as a list of ``ClassLabel``."""
    import datasets

    rng = np.random.default_rng(4)
    images = []
    for i in range(count):
        buffer = io.BytesIO()
        _image(rng, 20 * i).save(buffer, format="PNG")
        images.append({"bytes": buffer.getvalue(), "path": None})
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "tags": datasets.Sequence(datasets.Value("string")),
            "score": datasets.Value("float32"),
            "h": datasets.Value("float32"),
        }
    )
    rows = {
        "image": images,
        "tags": [["sky"] if i % 2 else ["sky", "sea"] for i in range(count)],
        "score": [i * 0.5 + 0.25 for i in range(count)],
        "h": [float(i) for i in range(count)],
    }
    table = datasets.Dataset.from_dict(rows, features=features)
    root.mkdir(parents=True, exist_ok=True)
    table.to_parquet(str(root / "rows.parquet"))
    labelled = table.cast_column("tags", datasets.Sequence(datasets.ClassLabel(names=["sea", "sky"])))
    labelled.save_to_disk(str(root / "disk"))
    return root / "rows.parquet", root / "disk"
