"""Start in seconds: the scandir listing, the O(N log N) split (the same as the old one), header / full / none
checks, the manifest that remembers verdicts, and files that fail to decode in training replaced and recorded."""

from __future__ import annotations

import io
import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torch.utils.data import DataLoader

from torchgraft.data import images
from torchgraft.data.badfiles import BadFiles
from torchgraft.data.folders import ImageDataset, image_data
from torchgraft.data.images import BadImage, check_header, scan_images
from torchgraft.data.manifest import Manifest, cache_root, checked_files, manifest_file
from torchgraft.data.samples import DataError, list_files, rows_from_folders, split_samples


def _jpeg(seed: int = 0, size: tuple[int, int] = (40, 32)) -> bytes:
    pixels = np.random.RandomState(seed).randint(0, 255, (*size[::-1], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _cut(seed: int = 0) -> bytes:
    """A JPEG cut in the middle of its pixel data: the header is whole."""
    whole = _jpeg(seed)
    return whole[: len(whole) // 2]


def _images(root: Path, layout: dict[str, int]) -> None:
    for name, count in layout.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            (root / name / f"{i}.jpg").write_bytes(_jpeg(i))


def _old_split(samples, valid_pct, seed):
    """The split before issue 23 (O(files x classes)), kept here as the reference the new one must equal."""
    rng = random.Random(seed)
    train, valid = [], []
    for label in sorted({label for _, label in samples}):
        members = [s for s in samples if s[1] == label]
        rng.shuffle(members)
        cut = min(len(members) - 1, max(1, round(len(members) * valid_pct))) if len(members) > 1 else 0
        valid += members[:cut]
        train += members[cut:]
    return sorted(train), sorted(valid)


def test_the_split_is_the_old_split(tmp_path):
    rng = random.Random(3)
    for c in ("cat", "dog", "a-c", "a", "Zeta", "one"):
        for i in range(1 if c == "one" else rng.randint(2, 30)):
            sub = tmp_path / c / rng.choice(["", "x", "x-y", "x/y"])
            sub.mkdir(parents=True, exist_ok=True)
            (sub / f"{rng.choice(['im', 'IM', 'a-b', 'a.b'])}{i}{rng.choice(['.jpg', '.PNG'])}").write_bytes(b"x")
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    for seed in range(4):
        for pct in (0.2, 0.5):
            rows = rows_from_folders(tmp_path, pct, seed, suffixes=(".jpg", ".png"), what="image")
            listed = [(str(p), i) for i, c in enumerate(rows.classes) for p in sorted(_rglob(tmp_path / c))]
            assert (rows.train, rows.valid) == _old_split(listed, pct, seed)
            samples = [(f"p{i}", random.Random(i).randint(0, 9)) for i in range(300)]  # not in path order
            assert split_samples(samples, pct, seed) == _old_split(samples, pct, seed)
            ordered = sorted(samples)  # in path order: the split sorts indices, not pairs
            assert split_samples(ordered, pct, seed) == _old_split(ordered, pct, seed)


def _rglob(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in (".jpg", ".png")]


def test_listing_is_rglob_in_path_order_without_entering_linked_folders(tmp_path):
    for name in ("b/x.jpg", "a-b.jpg", "a/b.jpg", "a/c/d.JPG", ".hidden.jpg", "e.txt"):
        (tmp_path / "c" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "c" / name).write_bytes(b"x")
    (tmp_path / "c" / "link").symlink_to(tmp_path / "c" / "a")
    (tmp_path / "c" / "file-link.jpg").symlink_to(tmp_path / "c" / "a-b.jpg")
    assert list_files(tmp_path / "c", (".jpg",)) == [str(p) for p in sorted(_rglob(tmp_path / "c"))]
    assert str(tmp_path / "c" / "link" / "b.jpg") not in list_files(tmp_path / "c", (".jpg",))


def test_header_check_finds_bad_headers_and_passes_cut_pixel_data(tmp_path):
    good = _jpeg()
    files = {
        "good.jpg": good,
        "header_cut.jpg": good[:100],
        "text.jpg": b"not an image",
        "empty.png": b"",
        "data_cut.jpg": good[: len(good) // 2],
    }
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    paths = [tmp_path / name for name in files]
    header = [Path(b.path).name for b in scan_images(paths, check="header")]
    assert header == ["header_cut.jpg", "text.jpg", "empty.png"]
    assert [Path(b.path).name for b in scan_images(paths, check="full")] == [*header, "data_cut.jpg"]
    assert scan_images(paths, check="none") == []
    assert check_header(tmp_path / "good.jpg") == (40, 32, "RGB")
    with pytest.raises(ValueError, match="check='quick'; choose from header, full, none"):
        scan_images(paths, check="quick")


def test_a_large_header_check_in_processes_finds_the_same_files(tmp_path, monkeypatch):
    good, paths = _jpeg(), []
    for i in range(40):
        paths.append(tmp_path / f"{i}.jpg")
        paths[-1].write_bytes(good if i % 7 else good[:90])
    threads = scan_images(paths, check="header")
    monkeypatch.setattr(images, "PROCESS_CHECKS", 10)
    processes = scan_images(paths, check="header", progress=True)
    assert [(b.path, b.reason) for b in processes] == [(b.path, b.reason) for b in threads]
    assert [Path(b.path).name for b in processes] == [f"{i}.jpg" for i in range(0, 40, 7)]


def test_many_files_are_stated_in_forked_processes_with_the_same_result(tmp_path, monkeypatch):
    from torchgraft.data import manifest

    paths = []
    for i in range(37):
        paths.append(str(tmp_path / f"{i}.jpg"))
        if i % 9:  # every ninth file is missing
            Path(paths[-1]).write_bytes(b"x" * i)
    one = manifest._stats(paths)
    forked = []
    real_pool = manifest.ProcessPoolExecutor
    monkeypatch.setattr(manifest, "ProcessPoolExecutor", lambda *a, **k: forked.append(1) or real_pool(*a, **k))
    monkeypatch.setattr(manifest, "FORKED_STATS", 10)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1, 2}, raising=False)
    many = manifest._stats(paths)
    assert forked == [1]  # the forked path ran (else this test compares the single process with itself)
    assert np.array_equal(one[0], many[0]) and np.array_equal(one[1], many[1]) and one[2] == many[2]
    assert sorted(many[2]) == list(range(0, 37, 9)) and set(many[0][list(range(0, 37, 9))]) == {-1}
    assert [int(many[0][i]) for i in (1, 10, 35)] == [1, 10, 35]


def test_image_data_checks_as_asked(tmp_path):
    _images(tmp_path, {"a": 4, "b": 4})
    (tmp_path / "a" / "cut.jpg").write_bytes(_cut())  # the header is whole, the pixels are not
    assert not image_data(tmp_path, manifest=False).skipped  # header: passes (training replaces it)
    with pytest.raises(DataError, match=r"1 unreadable image files: .*cut\.jpg"):
        image_data(tmp_path, check="full", manifest=False)


def _entries(tmp_path: Path) -> Manifest:
    return Manifest.load(manifest_file(tmp_path / "data", tmp_path / "cache"))


def test_the_manifest_keeps_verdicts_of_unchanged_files_and_rechecks_the_others(tmp_path):
    data, cache = tmp_path / "data", tmp_path / "cache"
    _images(data, {"a": 5, "b": 5})
    read = lambda **kw: image_data(data, skip_bad=True, manifest=cache, **kw)  # noqa: E731
    first = read()
    assert first.checked == 10 and not first.skipped and len(first.fingerprint) == 64
    saved = next(cache.rglob("*.npz")).stat()
    second = read()
    assert second.checked == 0 and second.fingerprint == first.fingerprint and second.reused == 10
    again = next(cache.rglob("*.npz")).stat()  # nothing changed: the manifest is not written again
    assert (again.st_ino, again.st_mtime_ns) == (saved.st_ino, saved.st_mtime_ns)
    assert first.summary() == "2 classes, 8 train / 2 valid images"
    assert (
        second.summary() == "2 classes, 8 train / 2 valid images (10 unchanged since the manifest, not checked again)"
    )
    # unchanged size and mtime: the file is not opened again, so damage that keeps both goes unseen ...
    victim = data / "a" / "1.jpg"
    stat = victim.stat()
    victim.write_bytes(b"\0" * stat.st_size)
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert read().checked == 0 and not read().skipped
    assert [b.path for b in image_data(data, skip_bad=True, manifest=False).skipped] == [str(victim)]  # ... unless
    # a changed mtime: only that file is checked again, and its verdict changes
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    changed = read()
    assert changed.checked == 1 and [b.path for b in changed.skipped] == [str(victim)]
    assert changed.fingerprint != first.fingerprint
    again = read()  # a bad verdict is remembered too
    assert again.checked == 0 and [b.path for b in again.skipped] == [str(victim)]
    (data / "b" / "new.jpg").write_bytes(_jpeg(7))  # a new file: checked
    assert read().checked == 1 and "b/new.jpg" in _entries(tmp_path).paths
    (data / "b" / "0.jpg").unlink()  # a removed file drops out
    gone = read()
    assert gone.checked == 0 and "b/0.jpg" not in _entries(tmp_path).paths and len(_entries(tmp_path).paths) == 10
    assert read(check="full").checked == 9  # a deeper check than recorded: every file again, but the bad one
    assert read(check="header").checked == 0  # full covers header


def test_a_damaged_manifest_is_rebuilt_with_a_warning(tmp_path):
    data, cache = tmp_path / "data", tmp_path / "cache"
    _images(data, {"a": 3, "b": 3})
    image_data(data, manifest=cache)
    file = manifest_file(data, cache)
    file.write_bytes(file.read_bytes()[:200])
    rebuilt = image_data(data, manifest=cache)
    assert rebuilt.checked == 6
    assert any(w.startswith(f"manifest {file} unreadable") and w.endswith("rebuilt") for w in rebuilt.warnings)
    assert image_data(data, manifest=cache).checked == 0  # written again, whole
    assert not list(cache.glob("*.tmp"))  # the atomic write leaves no temporary file


def test_the_manifest_lives_in_the_cache_keyed_by_the_resolved_path(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHGRAFT_CACHE", str(tmp_path / "mine"))
    assert cache_root() == tmp_path / "mine"
    _images(tmp_path / "data", {"a": 2, "b": 2})
    monkeypatch.chdir(tmp_path)
    image_data("data")
    assert manifest_file("data") == manifest_file(tmp_path / "data")
    assert manifest_file("data").parent == tmp_path / "mine" / "manifests" and manifest_file("data").is_file()
    assert image_data(tmp_path / "data").checked == 0  # another spelling of the same folder
    assert checked_files([], [], source=tmp_path / "data", remember=False).checked == 0


def test_a_table_of_images_has_a_manifest_too(tmp_path):
    _images(tmp_path / "img", {"x": 4})
    rows = [f"img/x/{i}.jpg,{'dog' if i % 2 else 'cat'}" for i in range(4)]
    (tmp_path / "labels.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    cache = tmp_path / "cache"
    first = image_data(tmp_path / "labels.csv", valid_pct=0.5, manifest=cache)
    assert first.checked == 4 and image_data(tmp_path / "labels.csv", valid_pct=0.5, manifest=cache).checked == 0
    saved = Manifest.load(manifest_file(tmp_path / "labels.csv", cache))
    assert sorted(saved.paths) == [f"img/x/{i}.jpg" for i in range(4)] and int(saved.valid.sum()) == 2


def _cut_dataset(tmp_path: Path) -> tuple[ImageDataset, list[tuple[str, int]]]:
    _images(tmp_path, {"a": 3, "b": 3})
    (tmp_path / "a" / "1.jpg").write_bytes(_cut(1))  # passes the header check, fails to decode
    samples = [(str(tmp_path / c / f"{i}.jpg"), label) for label, c in enumerate("ab") for i in range(3)]
    return ImageDataset(samples, ["a", "b"], lambda image: int(np.asarray(image).sum())), samples


def test_a_file_that_fails_to_decode_is_replaced_by_the_next_sample_and_recorded(tmp_path):
    dataset, samples = _cut_dataset(tmp_path)
    assert dataset[1] == dataset[2]  # the next sample, with its own target
    assert dataset[1][1] == 0 and dataset[5][1] == 1
    assert [(b.path, "truncated" in b.reason) for b in dataset.bad_samples()] == [(samples[1][0], True)]
    dataset[1]
    assert len(dataset.bad_samples()) == 1  # each file once


def test_files_replaced_in_worker_processes_are_recorded_once(tmp_path):
    dataset, samples = _cut_dataset(tmp_path)
    for _ in range(2):  # two epochs of two workers: the file is met twice, recorded once
        values = [int(v) for batch, _ in DataLoader(dataset, batch_size=2, num_workers=2) for v in batch]
    assert values[1] == values[2] and len(values) == 6
    assert [b.path for b in dataset.bad_samples()] == [samples[1][0]]


def test_no_file_decodes(tmp_path):
    (tmp_path / "x.jpg").write_bytes(b"junk")
    dataset = ImageDataset([(str(tmp_path / "x.jpg"), 0)], ["a"])
    with pytest.raises(DataError, match=r"1 images: not one decodes \(1 files: .*x\.jpg"):
        dataset[0]


def test_the_temporary_log_is_removed_with_its_owner_only(tmp_path):
    log = BadFiles()
    log.record(BadImage("a.jpg", "cut"))
    path = log.path
    copy = pickle.loads(pickle.dumps(log))  # what a spawned worker gets
    copy.record(BadImage("b.jpg", "cut"))
    del copy
    assert path.is_file() and [b.path for b in log.read()] == ["a.jpg", "b.jpg"]
    del log
    assert not path.exists()
