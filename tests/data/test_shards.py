"""WebDataset shards and Hugging Face datasets as inputs: pack round-trips every label kind, shards from other
tools are scanned, datasets read by index and as streams, and SampleStream deals samples to ranks and workers
exactly as one process reads them."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
from torch.utils.data import DataLoader, default_collate
from torchvision.transforms.v2.functional import pil_to_tensor

from shard_files import CLASSES, class_folders, hf_images, hf_targets, tables, text_shards, user_shards
from torchgraft.data.folders import image_data
from torchgraft.data.images import load_rgb
from torchgraft.data.samples import DataError
from torchgraft.data.streams import SampleStream, as_target
from torchgraft.data.wds import META_NAME, shard_files

pytest.importorskip("webdataset")
datasets = pytest.importorskip("datasets")
from torchgraft.data.hfdata import hf_data  # noqa: E402
from torchgraft.data.packing import pack  # noqa: E402
from torchgraft.data.wds import wds_data  # noqa: E402


def _targets(data) -> Counter:
    """Every (split, target) of shards, read through the stream (decoding every image)."""
    found: Counter = Counter()
    for name, split in (("train", data.train), ("valid", data.valid)):
        for _, (image, target) in split.reader.records(0, range(split.length), split.length):
            assert image.dtype == torch.uint8 and image.shape[0] == 3  # decoded as image files are
            found[name, target] += 1
    return found


def _source_targets(source) -> Counter:
    return Counter([("train", t) for _, t in source.train] + [("valid", t) for _, t in source.valid])


@pytest.mark.parametrize("kind", ["folder", "multilabel", "regression"])
def test_pack_round_trips_every_label_kind(tmp_path, kind):
    multi, values = tables(tmp_path / "tables")
    source = {"folder": class_folders(tmp_path / "photos", corrupt=True), "multilabel": multi, "regression": values}[
        kind
    ]
    report = pack(source, tmp_path / "shards", shard_size=5)
    read = image_data(source, skip_bad=True)
    data = wds_data(tmp_path / "shards")
    assert (data.classes, data.task) == (read.classes, read.task)
    assert data.task_reason == "recorded by pack"  # nothing scanned
    assert (len(data.train), len(data.valid)) == (len(read.train), len(read.valid))
    assert _targets(data) == _source_targets(read)
    meta = json.loads((tmp_path / "shards" / META_NAME).read_text())
    assert sum(meta["splits"]["train"]["shards"].values()) == len(read.train)
    assert all(n <= 5 for n in meta["splits"]["train"]["shards"].values())
    if kind == "folder":  # the corrupt file is left out and listed; the shards hold the original pixels
        assert [b.path.endswith("cut.jpg") for b in report.skipped] == [True]
        assert meta["skipped"][0]["path"].endswith("cut.jpg")
        assert data.warnings == [f"1 unreadable files were left out by pack (listed in {META_NAME})"]
        first = next(iter(data.valid.reader.records(0, {0}, 0)))[1][0]
        assert torch.equal(first, pil_to_tensor(load_rgb(read.valid[0][0])))  # decoded as the file is
    if kind == "regression":  # the training values fit the scale without a scan
        assert sorted(map(tuple, meta["splits"]["train"]["targets"])) == sorted(t for _, t in read.train)


@pytest.mark.parametrize("kind", ["classify", "multilabel", "regression"])
def test_pack_round_trips_texts_of_every_label_kind(tmp_path, kind):
    from torchgraft.data.texts import text_data

    cells = {
        "classify": lambda i: ("label", ["sport", "politics", "tech"][i % 3]),
        "multilabel": lambda i: (
            "labels",
            ";".join(t for k, t in enumerate(("uk", "eu", "us")) if (i >> k) & 1) or "uk",
        ),
        "regression": lambda i: ("score", f"{i * 0.25:.2f}"),
    }[kind]
    lines = [f"text,{cells(0)[0]}"]
    for i in range(30):  # quoted texts with commas and a line break inside, as real news CSVs have them
        lines.append(f'"story {i}, about {cells(i)[1]}\nsecond line {i}",{cells(i)[1]}')
    table = tmp_path / "news.csv"
    table.write_text("\n".join(lines) + "\n")
    report = pack(table, tmp_path / "shards", shard_size=7)
    read, data = text_data(table), wds_data(tmp_path / "shards")
    assert report.kind == "text" and "valid texts" in report.summary()
    assert (data.kind, data.task, data.classes) == ("text", read.task, read.classes) and data.task == kind
    got = sorted(
        (name, text, str(target))
        for name, split in (("train", data.train), ("valid", data.valid))
        for _, (text, target) in split.reader.records(0, range(split.length), split.length)
    )
    want = sorted([("train", t, str(y)) for t, y in read.train] + [("valid", t, str(y)) for t, y in read.valid])
    assert got == want and len(got) == 30


def test_pack_refuses_a_folder_holding_shards(tmp_path):
    photos = class_folders(tmp_path / "photos")
    pack(photos, tmp_path / "shards")
    with pytest.raises(DataError, match=r"already holds \.tar shards"):
        pack(photos, tmp_path / "shards")


def test_shards_of_other_tools_are_scanned_for_classes_and_length(tmp_path):
    root = user_shards(tmp_path / "user")
    data = wds_data(str(root / "train-{000000..000002}.tar"))  # the valid pattern guessed from 'train'
    assert data.classes == sorted(CLASSES) and data.task == "classify"
    assert (len(data.train), len(data.valid)) == (15, 5)
    assert data.kind == "image" and data.train.reader.keys.ys == ["txt"]
    assert _targets(data)["train", 0] == 5
    assert len(shard_files(str(root / "train-{000000..000002}.tar"))) == 3
    import webdataset

    (tmp_path / "gap").mkdir()
    with webdataset.ShardWriter(str(tmp_path / "gap" / "train-%06d.tar"), verbose=0) as writer:
        for i, member in enumerate(({"jpg": b"x", "txt": "cat"}, {"txt": "dog"}, {"jpg": b"y"})):  # k1, k2: parts
            writer.write({"__key__": f"k{i}", **member})
    with pytest.raises(DataError, match=r"4 bad rows: .*k1: a member is missing; .*k2: a member is missing"):
        wds_data(tmp_path / "gap", valid=str(tmp_path / "gap" / "train-000000.tar"))
    with pytest.raises(DataError, match=r"no member \.png"):
        wds_data(root, x_col="png")
    with pytest.raises(FileNotFoundError, match="no shard"):
        wds_data(str(root / "train-{000000..000009}.tar"))


def test_text_shards_hold_texts_and_class_indices(tmp_path):
    data = wds_data(text_shards(tmp_path / "texts"))
    assert (data.kind, data.task, data.classes) == ("text", "classify", ["0", "1"])
    rows = list(data.valid.reader.records(0, range(4), 4))
    assert [text for _, (text, _) in rows] == [f"sentence number {i} about {CLASSES[i % 2]}" for i in range(4)]
    assert [target for _, (_, target) in rows] == [0, 1, 0, 1]


def test_hf_parquet_and_save_to_disk_folders(tmp_path):
    parquet, disk = hf_images(tmp_path)
    by_files = hf_data(parquet)
    assert by_files.classes == sorted(CLASSES) and not by_files.streamed
    assert (len(by_files.train), len(by_files.valid)) == (18, 6)  # train-*/valid-* files
    image, target = by_files.train.reader[0]
    assert image.dtype == torch.uint8 and image.shape == (3, 20, 24) and isinstance(target, int)
    saved = hf_data(disk, valid_pct=0.25)
    assert saved.classes == list(CLASSES) and saved.task_reason == "a ClassLabel feature"
    assert (len(saved.train), len(saved.valid)) == (18, 6)  # one split: 25% of each class held out
    assert Counter(t for _, t in saved.valid) == {0: 2, 1: 2, 2: 2}
    streamed = hf_data(parquet, streaming=True)
    assert streamed.streamed and (len(streamed.train), len(streamed.valid)) == (18, 6)
    rows = list(streamed.valid.reader.records(0, range(6), 6))
    assert [p for p, _ in rows] == list(range(6))
    with pytest.raises(DataError, match="needs a validation split"):
        hf_data(disk, streaming=True)
    with pytest.raises(DataError, match="no column 'nope'"):
        hf_data(parquet, y_col="nope")


@pytest.fixture(autouse=True)
def _hf_cache(tmp_path, monkeypatch) -> None:
    """load_dataset's Arrow cache in the test's folder, not the home directory."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


@pytest.mark.parametrize(
    ("which", "y_col", "task", "classes", "first"),
    [
        ("parquet", None, "multilabel", ["sea", "sky"], (0, 1)),
        ("parquet", "score,h", "regression", ["score", "h"], (0.25, 0.0)),
        ("disk", None, "multilabel", ["sea", "sky"], (0, 1)),  # a list of ClassLabel: its names
    ],
)
def test_hf_multilabel_and_regression_columns(tmp_path, which, y_col, task, classes, first):
    parquet, disk = hf_targets(tmp_path / "targets")
    data = hf_data(parquet if which == "parquet" else disk, y_col=y_col)
    assert (data.task, data.classes) == (task, classes)
    targets = sorted([t for _, t in data.train] + [t for _, t in data.valid])
    assert targets[0] == pytest.approx(first) and len(targets) == 12


def _stream(data, *, batch: int, rank: int = 0, world: int = 1, pad: bool = True) -> SampleStream:
    def prepare(image, target):
        return image[:, 0, 0].clone(), as_target(target, data.task, len(data.classes))

    stream = SampleStream(data.train.reader, prepare, default_collate, batch_size=batch, seed=3, pad=pad)
    return stream.shard(rank, world)


def _pixels(loader) -> list[list[tuple]]:
    return [[tuple(p.tolist()) for p in pixels] for pixels, _ in loader]


def test_sample_stream_deals_ranks_and_workers_as_one_process_reads(tmp_path):
    pack(class_folders(tmp_path / "photos", per_class=10), tmp_path / "shards", shard_size=4)
    data = wds_data(tmp_path / "shards")  # 24 training samples in 6 shards, shuffled per epoch
    one = _stream(data, batch=6)
    one.set_epoch(1)
    whole = _pixels(DataLoader(one, batch_size=None))
    assert len(one) == 4 and sum(map(len, whole)) == 24 and len({p for b in whole for p in b}) == 24
    for workers in (0, 2):
        ranks = []
        for rank in (0, 1):
            stream = _stream(data, batch=3, rank=rank, world=2)
            stream.set_epoch(1)
            ranks.append(_pixels(DataLoader(stream, batch_size=None, num_workers=workers)))
        # step k of two ranks at batch 3 reads the samples of step k of one process at batch 6
        assert [sorted(a + b) for a, b in zip(*ranks, strict=True)] == [sorted(batch) for batch in whole]
    one.set_epoch(2)
    assert _pixels(DataLoader(one, batch_size=None)) != whole  # a new shard order each epoch
    one.set_epoch(1)
    one.skip_batches(2)  # a resumed epoch: the batches after the first two, the others not decoded
    assert _pixels(DataLoader(one, batch_size=None)) == whole[2:]
    one.skip_batches(0)


def test_validation_streams_read_every_sample_once_over_ranks(tmp_path):
    pack(class_folders(tmp_path / "photos", per_class=7), tmp_path / "shards", shard_size=4)
    data = wds_data(tmp_path / "shards")  # 18 training samples: 9, 9 per rank; 5 per rank padded to 10
    shares = [
        _pixels(DataLoader(_stream(data, batch=4, rank=r, world=4, pad=False), batch_size=None)) for r in range(4)
    ]
    assert sorted(p for share in shares for b in share for p in b) == sorted(
        p for b in _pixels(DataLoader(_stream(data, batch=4), batch_size=None)) for p in b
    )
    padded = [_stream(data, batch=4, rank=r, world=4) for r in range(4)]
    assert [len(s.positions()) for s in padded] == [5, 5, 5, 5]


def test_an_image_that_fails_to_decode_in_a_stream_is_replaced_within_its_batch_and_recorded(tmp_path):
    data = wds_data(user_shards(tmp_path / "shards", corrupt=(1, 7)))  # 15 training samples, 2 cut short
    one = _stream(data, batch=4)
    batches = _pixels(DataLoader(one, batch_size=None))
    assert [len(b) for b in batches] == [4, 4, 4, 3]  # every batch keeps its size
    bad = one.bad_samples()
    assert sorted(b.path.rsplit(":", 1)[1] for b in bad) == ["s00001", "s00007"]
    assert all(b.path.split(":")[0].endswith(".tar") and b.reason for b in bad)
    # the good samples, each once, and in each batch with a bad sample one good sample twice (its replacement)
    seen = Counter(p for b in batches for p in b)
    assert len(seen) == 13 and sorted(seen.values()) == [1] * 11 + [2, 2]
    twice = {p for p, n in seen.items() if n == 2}
    assert all(len([p for p in b if p in twice]) in (0, 2) for b in batches)  # replaced inside its own batch
    for workers in (0, 2):  # workers and a resumed epoch replace exactly as one process reading it all
        again = _stream(data, batch=4)
        assert _pixels(DataLoader(again, batch_size=None, num_workers=workers)) == batches
        again.skip_batches(1)
        assert _pixels(DataLoader(again, batch_size=None, num_workers=workers)) == batches[1:]
        assert sorted(b.path for b in again.bad_samples()) == sorted(b.path for b in bad)  # recorded once each


def test_a_batch_without_one_image_that_decodes_names_the_shards(tmp_path):
    data = wds_data(user_shards(tmp_path / "shards", per_shard=2, shards=1, corrupt=(0, 1)))
    with pytest.raises(DataError, match=r"a batch of 2 samples holds not one image that decodes \(2 files: "):
        _pixels(DataLoader(_stream(data, batch=2), batch_size=None))


def test_a_map_style_dataset_row_that_fails_to_decode_is_replaced_by_the_next(tmp_path):
    from torchgraft.app.shards import PreparedRows

    parquet, _ = hf_images(tmp_path / "hf")
    data = hf_data(parquet)
    rows = data.train.reader
    good = [rows[i][0] for i in range(len(rows))]
    real = rows.__getitem__
    rows.__class__ = type("Damaged", (type(rows),), {"__getitem__": lambda self, i: _damaged(real, i)})
    prepared = PreparedRows(rows, lambda image, target: image)
    assert torch.equal(prepared[2], good[3]) and torch.equal(prepared[1], good[1])
    assert [b.path for b in prepared.bad_samples()] == ["row 2"]


def _damaged(read, index):
    from torchgraft.data.images import BadImage

    if index == 2:
        raise BadImage("row 2", "OSError: image file is truncated")
    return read(index)
