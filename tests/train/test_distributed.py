"""Distributed training under torchrun (gloo, CPU) against one process on the combined batch, unpadded
validation, seeded sampling and mid-epoch resume."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from torchgraft import Learner
from torchgraft.data.sampling import Indices, SeededSampler, SeededSamples
from torchgraft.train.callbacks import LambdaCallback
from torchgraft.train.distributed import EvalShard, ShardedBatches, local_device

SCRIPT = Path(__file__).parents[1] / "scripts" / "ddp_recipes.py"
RECIPES = (
    "fine_tune,prefrozen,gradual,keep_frozen,cached,accumulate,lora,surgery,surgery_inside,seeded,bn_eval,evaluate,"
    "resume,stored,"
    "fsdp_fine_tune,fsdp_gradual,fsdp_accumulate,fsdp_resume"
)
MIXED = "fsdp_bf16"  # FSDP2's mixed precision at 2 processes against autocast bf16 on one
AT_FOUR = "fine_tune,gradual,cached,fsdp_fine_tune,evaluate"  # frozen, topN, unfrozen, cached stages; FSDP2
GLOBAL_BATCH = "60"


def _launch(out: Path, world: int, scenarios: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if world == 1:
        command = [sys.executable, str(SCRIPT)]
    else:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(world),
            str(SCRIPT),
        ]
    done = subprocess.run([*command, str(out), GLOBAL_BATCH, scenarios], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world1")
    _launch(out, 1, f"{RECIPES},{MIXED}")
    return out


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world2")
    _launch(out, 2, f"{RECIPES},{MIXED}")
    return out


def _compare(one: Path, many: Path, scenario: str, world: int, *, atol: float = 1e-5) -> None:
    a, b = (torch.load(d / f"{scenario}.pt", weights_only=True) for d in (one, many))
    assert a["world"] == 1 and b["world"] == world
    assert b["same"], f"{scenario}: the ranks' weights differ"
    assert b["plan"] == a["plan"] and b["guarded"] == a["guarded"] > 0  # describe and the guard on shards too
    for name, tensor in a["weights"].items():
        assert torch.allclose(b["weights"][name].float(), tensor.float(), atol=atol, rtol=0), (scenario, name)
    assert len(a["history"]) == len(b["history"])
    for x, y in zip(a["history"], b["history"], strict=True):
        assert x["phase"] == y["phase"] and x["epoch"] == y["epoch"]
        assert x["accuracy"] == pytest.approx(y["accuracy"], abs=atol), scenario  # each sample counted once
        assert x["valid_loss"] == pytest.approx(y["valid_loss"], abs=atol)
        assert x["train_loss"] == pytest.approx(y["train_loss"], abs=atol)


def test_every_recipe_under_ddp_and_fsdp_equals_one_process_on_the_combined_batch(one_process, two_processes):
    for scenario in RECIPES.split(","):
        _compare(one_process, two_processes, scenario, 2)


def test_fsdp_mixed_precision_trains_like_autocast_on_one_process(one_process, two_processes):
    _compare(one_process, two_processes, MIXED, 2, atol=1e-2)  # bf16 compute: measured 1.5e-3 apart
    weights = torch.load(two_processes / f"{MIXED}.pt", weights_only=True)["weights"]
    assert all(t.dtype == torch.float32 for t in weights.values() if t.is_floating_point())  # exported whole, fp32


def test_the_feature_store_is_filled_per_rank_and_read_by_the_next_learner(one_process, two_processes):
    for out, world in ((one_process, 1), (two_processes, 2)):
        counts = torch.load(out / "stored_counts.pt", weights_only=True)
        assert sum(counts["filled"]) == 1380 + 397  # the body ran once over every training and validation row
        assert len(counts["filled"]) == world and min(counts["filled"]) >= 1777 // world - 30  # each rank a share
        assert counts["again"] == [0] * world  # the next Learner read the store on every rank
        assert all(counts["same"])  # and trained the same weights


@pytest.mark.slow
def test_every_stage_kind_at_world_4_and_its_validation(one_process, tmp_path):
    _launch(tmp_path, 4, AT_FOUR)
    for scenario in AT_FOUR.split(","):
        _compare(one_process, tmp_path, scenario, 4)
    _check_evaluation(one_process, tmp_path)


def test_a_resumed_fine_tune_equals_the_uninterrupted_one_and_fsdp_checkpoints_are_unsharded(
    one_process, two_processes
):
    a, b = (torch.load(one_process / f"{name}.pt", weights_only=True) for name in ("fine_tune", "resume"))
    assert all(torch.equal(a["weights"][k], b["weights"][k]) for k in a["weights"])
    tmp_path = two_processes
    plain, sharded = (
        torch.load(d / name, weights_only=True)
        for d, name in ((one_process, "checkpoints/last.pt"), (tmp_path, "fsdp_checkpoints/last.pt"))
    )
    assert plain["model"].keys() == sharded["model"].keys()  # whole tensors under the model's own names
    for name, tensor in plain["model"].items():
        assert sharded["model"][name].shape == tensor.shape and torch.allclose(
            sharded["model"][name], tensor, atol=1e-5
        )
    assert plain["optimizer"]["state"].keys() == sharded["optimizer"]["state"].keys()
    for index, moments in plain["optimizer"]["state"].items():
        for key, value in moments.items():
            assert torch.allclose(sharded["optimizer"]["state"][index][key], value, atol=1e-5), (index, key)


def test_fsdp_with_uneven_shards_at_world_3_and_validation_at_3(one_process, tmp_path):
    _launch(tmp_path, 3, "fsdp_fine_tune,fsdp_resume,evaluate")
    _compare(one_process, tmp_path, "fsdp_fine_tune", 3)
    _compare(one_process, tmp_path, "fsdp_resume", 3)
    _check_evaluation(one_process, tmp_path)  # 397 samples: shards of 133, 132, 132


def _check_evaluation(one_process: Path, many: Path) -> None:
    a, b = (torch.load(d / "evaluate.pt", weights_only=True)["history"][0] for d in (one_process, many))
    assert b["accuracy"] == a["accuracy"]
    assert abs(a["accuracy"] * 397 - round(a["accuracy"] * 397)) < 1e-3  # a count out of 397, not of a padded set
    assert b["valid_loss"] == pytest.approx(a["valid_loss"], abs=1e-6)


def test_eval_shards_read_every_sample_once():
    for world in (1, 2, 3, 4):
        shards = [list(EvalShard(397, rank=r, world=world)) for r in range(world)]
        assert sorted(i for shard in shards for i in shard) == list(range(397))
        assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_sharded_batches_deal_out_whole_batches_evenly():
    batches = [[0, 1], [2, 3], [4, 5], [6, 7], [8]]
    shards = [list(ShardedBatches(batches, rank=r, world=2)) for r in range(2)]
    assert shards == [[[0, 1], [4, 5], [8]], [[2, 3], [6, 7], [0, 1]]]
    assert len(ShardedBatches(batches, rank=0, world=2)) == 3


def test_seeded_sampler_shards_partition_the_epoch_and_give_each_sample_one_seed():
    whole = list(SeededSampler(100, seed=1))
    assert sorted(i for i, _ in whole) == list(range(100))
    shards = [list(SeededSampler(100, seed=1).shard(r, 4)) for r in range(4)]
    for k in range(25):  # the k-th sample of each shard: the k-th group of 4 of the one-process order
        assert sorted(shard[k] for shard in shards) == sorted(whole[4 * k : 4 * k + 4])
    sampler = SeededSampler(100, seed=1)
    sampler.set_epoch(1)
    assert list(sampler) != whole and sorted(list(sampler)) != sorted(whole)  # a new order and new seeds
    full = list(sampler)
    sampler.skip(30)
    assert list(sampler) == full[30:] and list(sampler) == full  # skip holds for one iteration
    assert list(Indices(sampler)) == [i for i, _ in full]


class Noisy(Dataset):
    """A random augmentation drawn from torch's and Python's generators."""

    def __len__(self) -> int:
        return 50

    def __getitem__(self, index: int) -> torch.Tensor:
        import random

        return torch.full((3,), float(index)) + torch.rand(3) + random.random()


def test_seeded_samples_do_not_depend_on_workers_or_disturb_the_caller():
    data = SeededSamples(Noisy())
    sampler = SeededSampler(len(data), seed=5)
    plain = torch.cat(list(DataLoader(data, batch_size=7, sampler=sampler)))
    workers = torch.cat(list(DataLoader(data, batch_size=7, sampler=sampler, num_workers=2)))
    assert torch.equal(plain, workers)
    state = torch.get_rng_state()
    data[(3, 123)]
    assert torch.equal(torch.get_rng_state(), state)  # the main process's generator is left as it was
    assert torch.equal(data[(3, 123)], data[(3, 123)]) and not torch.equal(data[(3, 123)], data[(3, 124)])


def test_local_device_refuses_one_gpu_for_every_rank(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    monkeypatch.setenv("LOCAL_RANK", "3")
    with pytest.raises(ValueError, match="every rank on one GPU"):
        local_device("cuda:0")
    assert local_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert local_device() == torch.device("cpu")


def test_sync_batchnorm_on_cpu_is_refused_only_when_distributed():
    data = TensorDataset(torch.randn(8, 2), torch.randint(0, 2, (8,)))
    model = nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    learner = Learner(model, DataLoader(data, batch_size=4), batchnorm="sync", quiet=True)  # one process: plain BN
    assert isinstance(learner.model[1], nn.BatchNorm1d)
    with pytest.raises(ValueError, match="Choose from"):
        Learner(model, DataLoader(data, batch_size=4), batchnorm="frozen", quiet=True)  # type: ignore[arg-type]


def test_batchnorm_eval_keeps_statistics_while_the_affine_parameters_train():
    data = TensorDataset(torch.randn(32, 2) * 5 + 3, torch.randint(0, 2, (32,)))
    model = nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    mean = model[1].running_mean.clone()
    weight = model[1].weight.detach().clone()
    Learner(model, DataLoader(data, batch_size=8), batchnorm="eval", quiet=True).fit(1, 1e-2)
    assert torch.equal(model[1].running_mean, mean) and not torch.equal(model[1].weight, weight)


class Augmented(Dataset):
    """Digits with noise from torch's generator at every read, and a dropout network: every source of
    randomness a resumed epoch has to reproduce."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[index] + 0.05 * torch.randn_like(self.x[index]), self.y[index]


def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return torch.tensor(digits.data[:600], dtype=torch.float32) / 16, torch.tensor(digits.target[:600])


def _learner(directory: Path, loader_kind: str, watch: LambdaCallback | None = None) -> Learner:
    torch.manual_seed(0)
    x, y = _digits()
    train = Augmented(x[:480], y[:480])
    if loader_kind == "seeded":  # skipped by the sampler, two persistent workers
        loader = DataLoader(
            SeededSamples(train),
            batch_size=32,
            sampler=SeededSampler(480, seed=1),
            num_workers=2,
            persistent_workers=True,
        )
    else:  # a plain shuffled loader with its own generator: the batches done are read again and dropped
        loader = DataLoader(train, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(1))
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 10))
    valid = DataLoader(TensorDataset(x[480:], y[480:]), batch_size=50)
    callbacks = [watch] if watch else []
    return Learner(model, loader, valid, quiet=True, checkpoint_dir=directory, save_every=3, callbacks=callbacks)


@pytest.mark.parametrize("loader_kind", ["seeded", "plain"])
@pytest.mark.parametrize("stop_at", [4, 7, 15 + 6])  # optimizer steps: inside epoch 1, twice, inside epoch 2
def test_a_mid_epoch_checkpoint_resumes_bit_exactly(tmp_path, loader_kind, stop_at):
    straight = _learner(tmp_path / "a", loader_kind)
    straight.fit_one_cycle(3, 1e-2)

    def stop(learner: Learner) -> None:
        if learner.step == stop_at:
            raise KeyboardInterrupt  # as a kill would, after the step's checkpoint (every 3 steps)

    with pytest.raises(KeyboardInterrupt):
        _learner(tmp_path / "b", loader_kind, LambdaCallback(on_step_end=stop)).fit_one_cycle(3, 1e-2)
    state = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    saved = stop_at // 3 * 3
    assert state["step"] == saved and state["position"]["batch"] == saved % 15  # 15 batches an epoch
    resumed = _learner(tmp_path / "b", loader_kind)
    history = resumed.fit_one_cycle(3, 1e-2, resume=tmp_path / "b" / "last.pt")
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert [r["train_loss"] for r in history] == pytest.approx([r["train_loss"] for r in straight.history], abs=1e-12)
    assert [r["accuracy"] for r in history] == [r["accuracy"] for r in straight.history]


def test_save_every_needs_a_checkpoint_dir():
    data = DataLoader(TensorDataset(torch.randn(8, 2), torch.randint(0, 2, (8,))), batch_size=4)
    with pytest.raises(ValueError, match="needs checkpoint_dir"):
        Learner(nn.Linear(2, 2), data, save_every=10)
