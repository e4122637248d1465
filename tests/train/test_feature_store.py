"""The feature cache on disk: the store's format round-trips, a store is found again by the next Learner (the
body does not run: counted by a forward hook on the real body) and by lr_find, rebuilt when the frozen weights
change, and a partial or corrupt store is never used."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from torchgraft import Learner, freeze, graft, unfreeze
from torchgraft.data.folders import ImageDataset
from torchgraft.train.cache import cached_store
from torchgraft.train.feature_key import cache_root, weights_digest, writable_root
from torchgraft.train.feature_store import StoreWriter, commit_store, new_store_folder, open_store

ROOT = Path(__file__).resolve().parents[2]


class Fingerprinted(TensorDataset):
    """A TensorDataset that names its data (as ImageDataset does with its files): its store can be reused."""

    def fingerprint(self) -> str:
        return hashlib.blake2b(b"".join(t.numpy().tobytes() for t in self.tensors)).hexdigest()


def _digits() -> tuple[Fingerprinted, Fingerprinted]:
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16
    y = torch.tensor(digits.target)
    return Fingerprinted(x[:600], y[:600]), Fingerprinted(x[1400:1600], y[1400:1600])


def _body() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.Tanh(), nn.Conv2d(8, 16, 3, padding=1), nn.Tanh(), nn.AdaptiveAvgPool2d(1)
    )


def _model(source: nn.Module) -> nn.Module:
    torch.manual_seed(1)
    model = graft(copy.deepcopy(source), 10, cut="4", head="linear", input_size=(1, 8, 8))
    freeze(model, bn="frozen")
    return model


class Forwards:
    """Counts the samples the body really encodes (a forward hook on it)."""

    def __init__(self, model: nn.Module) -> None:
        self.samples = 0
        model.body.register_forward_hook(self._count)

    def _count(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        self.samples += len(inputs[0])


def _learner(model: nn.Module, tmp_path: Path, **options) -> Learner:
    train, valid = _digits()
    loaders = DataLoader(train, batch_size=50, shuffle=True), DataLoader(valid, batch_size=100)
    options = {"task": "classify", **options}  # a given task: no first-batch forward to infer it
    return Learner(model, *loaders, quiet=True, cache_features=True, cache_dir=tmp_path, **options)


def test_the_store_round_trips_rows_written_out_of_order(tmp_path):
    features = torch.randn(10, 3, 4) * 100
    targets = {"int": torch.arange(10) * 7, "multi": (torch.rand(10, 5) > 0.5).float()}
    for kind, target in targets.items():
        folder = new_store_folder(tmp_path, kind)
        writer = StoreWriter(folder, dtype=torch.float16)
        for rows in ([7, 2, 3], [0, 1, 9, 8], [4, 5, 6]):  # any order, runs and gaps
            writer.write(rows, features[rows], target[rows])
        writer.close()
        assert not writer.overflowed
        header = {"key": kind, "rows": 10, "features": writer.parts[0].to_json(), "targets": writer.parts[1].to_json()}
        store = open_store(commit_store(folder, tmp_path / kind, header), key=kind)
        assert store is not None and store.dtype == torch.float16 and len(store) == 10
        assert not folder.exists()  # renamed into place
        got, got_targets = store.read([9, 0, 0, 4, 5, 6])
        assert got.dtype == torch.float32 and got.shape == (6, 3, 4)
        assert torch.allclose(got, features[[9, 0, 0, 4, 5, 6]], rtol=2**-11, atol=0)  # fp16 rounding
        assert torch.equal(got_targets, target[[9, 0, 0, 4, 5, 6]])  # targets exact, in their own dtype
        x, t = store[3]
        assert torch.allclose(x, features[3], rtol=2**-11, atol=0) and torch.equal(t, target[3])
        copy_ = pickle.loads(pickle.dumps(store))  # as a spawned loader worker gets it: its own files
        assert torch.equal(copy_.read([3])[0], store.read([3])[0])
        assert open_store(tmp_path / kind, key="another key") is None
    assert json.loads((tmp_path / "int" / "header.json").read_text())["features"]["dtype"] == "float16"


class Net(nn.Module):
    """Any model with a frozen ``body`` and a ``head`` caches."""

    def __init__(self) -> None:
        super().__init__()
        self.body, self.head = nn.Sequential(nn.Flatten(), nn.Linear(64, 16)), nn.Linear(16, 10)
        self.body.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def test_features_beyond_fp16_are_stored_in_bf16(tmp_path):
    model = Net()
    with torch.no_grad():
        model.body[1].weight.mul_(1e6)  # features of order 1e5: beyond fp16's 65504
    train, _ = _digits()
    store, found = cached_store(
        model, DataLoader(train, batch_size=64), prepare=lambda b: (b[0], b[1]), train=True, cache_dir=tmp_path
    )
    assert not found and store.dtype == torch.bfloat16
    with torch.no_grad():
        exact = model.eval().body(train.tensors[0][:64])
    assert exact.abs().max() > 65504
    assert torch.allclose(store.read(range(64))[0], exact, rtol=2**-8, atol=0)  # bf16 rounding


def test_a_second_learner_reads_the_store_and_trains_the_same_head_lr_find_too(tmp_path):
    source = _body()
    first = _model(source)
    seen = Forwards(first)
    torch.manual_seed(2)
    history = _learner(first, tmp_path).fit_one_cycle(2, 1e-2)
    assert seen.samples == 800  # the body ran once over the 600 training and 200 validation samples
    assert len([p for p in tmp_path.iterdir() if not p.name.startswith(".")]) == 2  # a store for each

    second = _model(source)
    seen = Forwards(second)
    learner = _learner(second, tmp_path)
    torch.manual_seed(2)
    assert _same_history(learner.fit_one_cycle(2, 1e-2), history)
    assert seen.samples == 0  # read from the store: the body did not run
    for a, b in zip(first.head.state_dict().values(), second.head.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # the same stored features, the same batches: the same head
    found = learner.lr_find(steps=30)
    assert seen.samples == 0 and len(found.lrs) >= 3  # the sweep trained the head on the stored features


def _same_history(a: list[dict], b: list[dict]) -> bool:
    return all(
        x.keys() == y.keys() and all(x[k] == y[k] for k in x if k != "seconds") for x, y in zip(a, b, strict=True)
    )


def test_the_store_is_rebuilt_when_the_frozen_weights_change(tmp_path):
    source = _body()
    _learner(_model(source), tmp_path).fit(1, 1e-2)
    changed = copy.deepcopy(source)
    with torch.no_grad():
        changed[0].weight[0, 0, 0, 0] += 1e-3  # one value of another checkpoint
    assert weights_digest(_model(changed)) != weights_digest(_model(source))  # frozen: every body tensor hashed
    model = _model(changed)
    seen = Forwards(model)
    _learner(model, tmp_path).fit(1, 1e-2)
    assert seen.samples == 800

    learner = _learner(model, tmp_path)  # unfrozen and trained, then frozen again: new weights, new features
    unfreeze(model)
    learner.fit(1, 1e-3)
    freeze(model, bn="frozen")
    seen.samples = 0
    learner.fit(1, 1e-2)
    assert seen.samples == 800
    seen.samples = 0
    learner.fit(1, 1e-2)  # the same frozen weights: the store of the fit before
    assert seen.samples == 0


def test_cached_fp16_features_train_the_head_like_no_cache(tmp_path):
    """fp16 storage rounds each feature by at most 2^-11 of its value; after 3 epochs the head's weights and
    losses stay within 5e-4 of the uncached fit (measured: 3.2e-5 on the weights, 1.4e-6 on the losses);
    float32 storage gives today's features (measured: identical)."""
    source = _body()
    results = {}
    for name, options in {"fp16": {}, "fp32": {"cache_dtype": torch.float32}, "none": {}}.items():
        model = _model(source)
        learner = _learner(model, tmp_path / name, **options)
        learner.cache_features = name != "none"
        torch.manual_seed(3)
        results[name] = (learner.fit_one_cycle(3, 1e-2), model.head.state_dict())
    plain_history, plain_head = results["none"]
    for name, tolerance in (("fp16", 5e-4), ("fp32", 1e-5)):
        history, head = results[name]
        for key, value in plain_head.items():
            assert torch.allclose(head[key], value, atol=tolerance), (name, key)
        for a, b in zip(history, plain_history, strict=True):
            assert a["valid_loss"] == pytest.approx(b["valid_loss"], abs=tolerance)
            assert a["train_loss"] == pytest.approx(b["train_loss"], abs=tolerance)


def test_a_partial_or_corrupt_store_is_not_used(tmp_path):
    source = _body()
    torch.save(source.state_dict(), tmp_path / "body.pt")
    script = textwrap.dedent(f"""
        import os, signal, sys, torch
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_feature_store import _body, _model, _learner
        source = _body()
        source.load_state_dict(torch.load({str(tmp_path / "body.pt")!r}))
        model = _model(source)
        batches = []
        def kill(module, inputs, output):
            batches.append(1)
            if len(batches) == 5:  # mid-way through the training rows
                os.kill(os.getpid(), signal.SIGKILL)
        model.body.register_forward_hook(kill)
        _learner(model, {str(tmp_path / "stores")!r}).fit(1, 1e-2)
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    left = list((tmp_path / "stores").iterdir())
    assert len(left) == 1 and left[0].name.endswith(".tmp")  # killed mid-write: only a temporary folder

    model = _model(source)
    seen = Forwards(model)
    _learner(model, tmp_path / "stores").fit(1, 1e-2)
    assert seen.samples == 800  # nothing usable was there: every row encoded again
    stores = sorted((tmp_path / "stores").iterdir())
    assert not [p for p in stores if p.name.endswith(".tmp")]  # the dead writer's folder is gone
    assert len(stores) == 2

    with open(stores[0] / "features.bin", "r+b") as handle:  # a store cut short after it was written
        handle.truncate(100)
    model = _model(source)
    seen = Forwards(model)
    _learner(model, tmp_path / "stores").fit(1, 1e-2)
    assert 0 < seen.samples < 800  # the broken store rebuilt, the other one read


def _folder(tmp_path: Path) -> list[tuple[str, int]]:
    samples = []
    for i in range(4):
        path = tmp_path / f"{i}.png"
        Image.fromarray(np.full((8, 8, 3), 40 * i, dtype=np.uint8)).save(path)
        samples.append((str(path), i % 2))
    return samples


def test_image_dataset_fingerprint_names_files_targets_and_transform(tmp_path):
    from torchvision.transforms import v2

    samples = _folder(tmp_path)
    plain = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])
    print_ = ImageDataset(samples, ["a", "b"], plain).fingerprint()
    assert print_ == ImageDataset(samples, ["a", "b"], plain).fingerprint()
    assert print_ != ImageDataset([(p, 1 - t) for p, t in samples], ["a", "b"], plain).fingerprint()
    resized = v2.Compose([v2.ToImage(), v2.Resize(4), v2.ToDtype(torch.float32, scale=True)])
    assert print_ != ImageDataset(samples, ["a", "b"], resized).fingerprint()
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(samples[0][0])  # a file rewritten
    os.utime(samples[0][0], ns=(1, 1))
    assert print_ != ImageDataset(samples, ["a", "b"], plain).fingerprint()
    assert ImageDataset(samples, ["a", "b"], lambda image: image).fingerprint() is None  # says nothing: not reused


def test_the_cache_root_follows_torchgraft_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCHGRAFT_CACHE", str(tmp_path))
    assert cache_root() == tmp_path / "features"
    assert cache_root(tmp_path / "mine") == tmp_path / "mine"
    monkeypatch.delenv("TORCHGRAFT_CACHE")
    assert cache_root() == Path.home() / ".cache" / "torchgraft" / "features"
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    if not os.access(locked, os.W_OK):  # (root writes anywhere)
        assert writable_root(locked / "features") == Path(tempfile.gettempdir()) / "torchgraft-features"
    assert writable_root(tmp_path / "new") == tmp_path / "new" and (tmp_path / "new").is_dir()
    with pytest.raises(ValueError, match=r"cache_dtype=torch\.int8"):
        Learner(nn.Linear(2, 2), [(torch.zeros(1, 2), torch.zeros(1))], cache_dtype=torch.int8)


def test_datasets_of_a_read_take_the_manifest_fingerprint_without_stating_files(tmp_path, monkeypatch):
    from torchvision.transforms import v2

    from torchgraft.data.folders import image_data

    for label in ("a", "b"):
        (tmp_path / "data" / label).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((8, 8, 3), 40 * i, dtype=np.uint8)).save(tmp_path / "data" / label / f"{i}.png")
    plain = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])
    read = lambda: image_data(tmp_path / "data", valid_pct=0.4, manifest=tmp_path / "m")  # noqa: E731
    first = read()
    train, valid = first.datasets(plain, plain)
    with monkeypatch.context() as patched:  # the manifest already covers every file's size and mtime
        patched.setattr("torchgraft.data.folders.os.stat", lambda path: pytest.fail(f"stat({path})"))
        prints = train.fingerprint(), valid.fingerprint()
    assert prints[0] != prints[1] and None not in prints
    assert prints == tuple(d.fingerprint() for d in read().datasets(plain, plain))  # the same data: the same
    changed = Path(first.train[0][0])
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(changed)  # a file rewritten
    os.utime(changed, ns=(1, 1))
    assert read().datasets(plain, plain)[0].fingerprint() != prints[0]
