"""The Learner on streamed data (an IterableDataset with a declared length): one-cycle schedules and progress
from its length, resume after a kill mid-epoch equal to the uninterrupted fit, an IterableDataset without a
length refused, and two gloo processes equal to one on the combined batch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset, default_collate
from torchvision.transforms import v2

from shard_files import class_folders, hf_images
from torchgraft import Learner
from torchgraft.app.shards import PreparedRows
from torchgraft.data.hfdata import hf_data
from torchgraft.data.streams import SampleStream
from torchgraft.train.callbacks import LambdaCallback

pytest.importorskip("webdataset")
from torchgraft.data.packing import pack

SCRIPT = Path(__file__).parents[1] / "scripts" / "ddp_shards.py"
sys.path.insert(0, str(SCRIPT.parent))
from ddp_shards import Item, cnn, loaders  # noqa: E402


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """30 training and 6 validation images in shards of 4 (an uneven last shard)."""
    root = tmp_path_factory.mktemp("streams")
    pack(class_folders(root / "photos", per_class=12), root / "shards", shard_size=4, valid_pct=1 / 6)
    return root / "shards"


def _learner(shards: Path, directory: Path | None = None, **options) -> tuple[Learner, torch.nn.Module]:
    torch.manual_seed(0)
    model = cnn()
    train, valid = loaders(shards, 4, 0)
    options = {"quiet": True, **options}
    learner = Learner(model, train, valid, task="classify", checkpoint_dir=directory, **options)
    return learner, model


def test_one_cycle_steps_and_progress_come_from_the_declared_length(shards, capsys):
    learner, _ = _learner(shards, progress=True, quiet=False)
    assert len(learner.train_dl) == 8  # 30 samples in batches of 4
    learner.fit_one_cycle(2, 1e-2)
    assert learner.step == 16 and len(learner.lr_history) == 16
    assert learner.scheduler.total_steps == 16
    err = capsys.readouterr().err
    assert "epoch 2" in err and "/8" in err  # tqdm's bar knows the total


def test_killed_mid_epoch_and_resumed_equals_uninterrupted(shards, tmp_path):
    straight, reference = _learner(shards, tmp_path / "straight")
    straight.fit_one_cycle(2, 1e-2)

    def interrupt(learner: Learner) -> None:
        if learner.step == 8 + 5:  # the fifth batch of the second epoch
            raise KeyboardInterrupt

    killed, _ = _learner(shards, tmp_path / "killed", save_every=1, callbacks=[LambdaCallback(on_step_end=interrupt)])
    with pytest.raises(KeyboardInterrupt):
        killed.fit_one_cycle(2, 1e-2)
    resumed, model = _learner(shards, tmp_path / "killed")
    history = resumed.fit_one_cycle(2, 1e-2, resume=tmp_path / "killed" / "last.pt")
    weights, expected = model.state_dict(), reference.state_dict()
    assert all(torch.equal(weights[k], expected[k]) for k in expected)
    assert [r["train_loss"] for r in history] == [r["train_loss"] for r in straight.history]


class _NoLength(IterableDataset):
    def __iter__(self):
        yield from ((torch.zeros(3, 8, 8), 0) for _ in range(4))


def test_an_iterable_dataset_without_a_length_is_refused_naming_the_fix():
    learner = Learner(cnn(), DataLoader(_NoLength(), batch_size=2), task="classify", quiet=True)
    with pytest.raises(TypeError, match=r"no length .*__len__ .*with_length"):
        learner.fit(1, 1e-3)


def _launch(shards: Path, out: Path, world: int, workers: int) -> dict:
    command = [sys.executable] if world == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += [] if world == 1 else ["--nproc_per_node", str(world)]
    done = subprocess.run(
        [*command, str(SCRIPT), str(shards), str(out), "6", str(workers)], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(out, weights_only=False)


@pytest.mark.slow
def test_two_processes_on_shards_equal_one_on_the_combined_batch(shards, tmp_path):
    one = _launch(shards, tmp_path / "one.pt", 1, 0)
    two = _launch(shards, tmp_path / "two.pt", 2, 2)  # and two loader workers per rank
    assert two["same"] and two["batches"] == one["batches"] == 5  # 30 samples: 15 per rank in batches of 3
    difference = max((one["weights"][k] - two["weights"][k]).abs().max().item() for k in one["weights"])
    assert difference < 1e-5
    for a, b in zip(one["history"], two["history"], strict=True):  # every validation sample counted once
        assert a["valid_loss"] == pytest.approx(b["valid_loss"], abs=1e-5) and a["accuracy"] == b["accuracy"]


@pytest.mark.parametrize("streaming", [False, True])
def test_the_learner_trains_on_a_hugging_face_dataset(tmp_path, monkeypatch, streaming):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    parquet, _ = hf_images(tmp_path)
    data = hf_data(parquet, streaming=streaming)
    item = Item(v2.Compose([v2.ToImage(), v2.Resize((16, 16)), v2.ToDtype(torch.float32, scale=True)]), "classify", 3)
    if streaming:
        splits = ((data.train, True), (data.valid, False))
        made = [SampleStream(s.reader, item, default_collate, batch_size=4, pad=pad) for s, pad in splits]
        train, valid = (DataLoader(m, batch_size=None) for m in made)
    else:  # map-style: rows by index, read in two worker processes
        train = DataLoader(PreparedRows(data.train.reader, item), batch_size=4, shuffle=True, num_workers=2)
        valid = DataLoader(PreparedRows(data.valid.reader, item), batch_size=8)
    learner = Learner(cnn(), train, valid, task="classify", quiet=True)
    history = learner.fit(1, 1e-2)
    assert len(learner.train_dl) == 5 and learner.step == 5  # 18 samples in batches of 4
    assert 0 <= history[0]["accuracy"] <= 1
