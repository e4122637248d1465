"""The Learner on real data (sklearn's digits; the real ImageNet EfficientNet-Lite0 for fine_tune)."""

from __future__ import annotations

import copy
import math
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from torchgraft import (
    Learner,
    TrainingDivergedError,
    accuracy,
    error_rate,
    freeze,
    graft,
    layer_groups,
    top_k_accuracy,
    unfreeze,
)
from torchgraft.train.cache import FeatureCacheError
from torchgraft.train.callbacks import LambdaCallback
from torchgraft.train.runstate import read_state

sklearn_datasets = pytest.importorskip("sklearn.datasets")
SCRIPT = Path(__file__).parents[1] / "scripts" / "train_digits.py"


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    data = sklearn_datasets.load_digits()
    return torch.tensor(data.images, dtype=torch.float32)[:, None] / 16, torch.tensor(data.target)


def _loaders(digits, *, batch: int = 64, shuffle: bool = True, size: int | None = None, rgb: bool = False):
    """Train on the first 1400 (or 2/3 of the) samples, validate on the rest."""
    x, y = digits
    cut = 1400 if len(x) > 1400 else 2 * len(x) // 3
    if size is not None:
        x = nn.functional.interpolate(x, size=size, mode="bilinear")
    if rgb:
        x = x.repeat(1, 3, 1, 1)
    train = torch.utils.data.TensorDataset(x[:cut], y[:cut])
    valid = torch.utils.data.TensorDataset(x[cut:], y[cut:])
    return (
        torch.utils.data.DataLoader(train, batch_size=batch, shuffle=shuffle),
        torch.utils.data.DataLoader(valid, batch_size=256),
    )


def _cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )


def test_fit_one_cycle_learns_digits(digits, capsys):
    learner = Learner(_cnn(), *_loaders(digits), metrics=["accuracy", "error_rate"])
    history = learner.fit_one_cycle(5, 3e-2)
    assert history[-1]["accuracy"] > 0.9 and history[-1]["error_rate"] == pytest.approx(1 - history[-1]["accuracy"])
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    out = capsys.readouterr().out
    assert "train_loss  valid_loss    accuracy" in out and len(out.strip().splitlines()) == 6


def test_one_cycle_rates_follow_each_groups_schedule(digits):
    train, valid = _loaders(digits)
    model = _cnn()
    learner = Learner(model, train, valid, quiet=True)
    epochs, pct = 2, 0.3
    learner.fit_one_cycle(epochs, slice(1e-4, 1e-2), pct_start=pct)
    total = len(train) * epochs
    maxima = [g["max_lr"] for g in learner.optimizer.param_groups]
    assert len({round(m, 12) for m in maxima}) == len(layer_groups(model))
    end_warmup = pct * total - 1

    def expected(peak: float, step: int) -> float:
        start, low = peak / 25, peak / 25 / 1e4
        a, b, frac = (
            (start, peak, step / end_warmup)
            if step <= end_warmup
            else (peak, low, (step - end_warmup) / (total - 1 - end_warmup))
        )
        return b + (a - b) / 2 * (math.cos(math.pi * frac) + 1)

    assert len(learner.lr_history) == total
    for step in (0, 5, 13, 20, total - 1):  # lr_history[k]: the rates step k + 1 used (schedule index k)
        assert learner.lr_history[step] == pytest.approx([expected(m, step) for m in maxima], rel=1e-9)


def test_fine_tune_frozen_phase_changes_only_the_head(lite0, digits):
    model = graft(lite0, 10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen = {}

    def after_epoch(learner: Learner, record: dict) -> None:
        if learner.phase == 0:
            seen["frozen"] = {k: v.clone() for k, v in learner.model.state_dict().items()}

    x, y = digits
    small = (x[:320], y[:320])
    learner = Learner(
        model,
        *_loaders(small, batch=32, size=32, rgb=True),
        quiet=True,
        callbacks=[LambdaCallback(on_epoch_end=after_epoch)],
    )
    learner.fine_tune(1, 1e-3, freeze_epochs=1)
    changed = {k for k, v in seen["frozen"].items() if not torch.equal(v, before[k])}
    assert changed == {k for k in before if k.startswith("head.")}
    final = model.state_dict()
    assert any(not torch.equal(final[k], before[k]) for k in before if k.startswith("body.") and "weight" in k)
    assert all(p.requires_grad for p in model.parameters())


def test_lr_find_leaves_everything_bit_identical(digits):
    model = _cnn()
    learner = Learner(model, *_loaders(digits), quiet=True)
    learner.fit(1, 1e-3)
    tensors = {k: v.clone() for k, v in model.state_dict().items()}
    params = list(model.parameters())
    optimizer_state = copy.deepcopy(learner.optimizer.state_dict())
    rng = torch.get_rng_state()
    model.eval()
    result = learner.lr_find(steps=60)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in tensors.items())
    assert list(model.parameters()) == params and all(p.grad is None for p in params)
    assert not any(m.training for m in model.modules())
    state = learner.optimizer.state_dict()
    for key, values in optimizer_state["state"].items():
        assert all(torch.equal(v, state["state"][key][name]) for name, v in values.items())
    assert state["param_groups"] == optimizer_state["param_groups"]
    assert torch.equal(torch.get_rng_state(), rng)
    assert 1e-5 < result.suggestion < 1 and len(result.lrs) == len(result.losses) > 10


def _run(out: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), str(out), *args], capture_output=True, text=True, check=True)


def test_killed_mid_epoch_and_resumed_equals_uninterrupted(tmp_path):
    _run(tmp_path / "straight")
    reference = torch.load(tmp_path / "straight" / "final.pt", weights_only=True)

    killed = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, str(SCRIPT), str(killed)], stdout=subprocess.PIPE, text=True)
    for line in process.stdout:  # kill in the middle of the second epoch
        if line.startswith("step 1 ") and int(line.split()[2]) >= 38 + 19:
            process.send_signal(signal.SIGKILL)
            break
    process.wait()
    assert process.returncode == -signal.SIGKILL
    state = read_state(killed / "last.pt")  # never half-written: it loads
    assert state["epoch"] == 1
    _run(killed, "--resume")
    resumed = torch.load(killed / "final.pt", weights_only=True)
    assert all(torch.equal(resumed[k], v) for k, v in reference.items())


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(digits, tmp_path):
    calls = {"n": 0}

    def loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        value = nn.functional.cross_entropy(outputs, targets)
        # epoch 1: 22 training + 2 validation batches; then batch 5 of epoch 2
        return value * math.nan if calls["n"] == 22 + 2 + 5 else value

    model = _cnn()
    learner = Learner(model, *_loaders(digits), loss=loss, quiet=True, checkpoint_dir=tmp_path)
    with pytest.raises(
        TrainingDivergedError, match=r"loss is nan at epoch 2, batch 5.*last good checkpoint is .*last\.pt"
    ):
        learner.fit(3, 1e-3)
    state = read_state(tmp_path / "last.pt")
    assert state["epoch"] == 1 and all(
        torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point()
    )


def test_gradient_accumulation_equals_the_bigger_batch(digits):
    def run(batch: int, accumulate: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))
        train, valid = _loaders(digits, batch=batch, shuffle=False)
        learner = Learner(
            model, train, valid, optimizer=torch.optim.SGD, weight_decay=0.0, accumulate=accumulate, quiet=True
        )
        learner.fit(1, 0.1)
        return model.state_dict()

    big, accumulated = run(40, 1), run(20, 2)
    assert all(torch.allclose(big[k], accumulated[k], atol=1e-6) for k in big)
    assert not all(torch.allclose(big[k], run(20, 1)[k], atol=1e-6) for k in big)


def test_gradient_clipping_bounds_each_step(digits):
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    before = [p.detach().clone() for p in model.parameters()]
    train = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(digits[0][:64], digits[1][:64]), batch_size=64)
    learner = Learner(model, train, optimizer=torch.optim.SGD, weight_decay=0.0, clip_grad=1e-3, quiet=True)
    learner.fit(1, 1.0)
    moved = torch.sqrt(sum(((p - b) ** 2).sum() for p, b in zip(model.parameters(), before, strict=True)))
    assert 0 < moved <= 1e-3 * 1.0001


def test_channels_last_and_bf16_autocast_on_cpu(digits):
    def run(lr: float, epochs: int, **options: object) -> list[dict]:
        torch.manual_seed(0)
        model = _cnn()
        learner = Learner(model, *_loaders(digits, shuffle=False), quiet=True, **options)
        layout = torch.channels_last if learner.channels_last else torch.contiguous_format
        assert model[0].weight.is_contiguous(memory_format=layout)
        assert learner.channels_last == options.get("channels_last", True)  # "auto": on, the CNN has BatchNorm2d
        return learner.fit(epochs, lr)

    # same arithmetic in another memory layout: equal up to float rounding (a small rate keeps it from growing)
    plain, last = run(1e-4, 1, channels_last=False), run(1e-4, 1)
    assert last[-1]["train_loss"] == pytest.approx(plain[-1]["train_loss"], rel=1e-4)
    assert last[-1]["valid_loss"] == pytest.approx(plain[-1]["valid_loss"], rel=1e-4)
    reference, bf16 = run(1e-2, 2, channels_last=False), run(1e-2, 2, amp="bf16", channels_last=False)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))  # no BatchNorm2d: "auto" leaves the layout alone
    assert not Learner(mlp, _loaders(digits)[0], quiet=True).channels_last
    assert math.isfinite(bf16[-1]["train_loss"]) and bf16[-1]["train_loss"] < bf16[0]["train_loss"]
    assert bf16[-1]["valid_loss"] == pytest.approx(reference[-1]["valid_loss"], abs=0.15)


def test_close_releases_the_wrapper_and_keeps_the_model_usable(digits):
    model = _cnn()
    with Learner(model, *_loaders(digits), quiet=True) as learner:
        learner.network = nn.Sequential(model)  # stands for the DDP wrapper a torchrun Learner holds
        learner.fit(1, 1e-3)
    assert learner.network is model
    before = [p.detach().clone() for p in model.parameters()]
    learner.fit(1, 1e-3)  # still trains, on one process
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_surgery_between_fits_is_trained_and_hooks_run(digits):
    model = graft(_cnn(), 10, cut="6", head="linear", input_size=(1, 8, 8))
    counts = {event: 0 for event in ("epoch_begin", "epoch_end", "step_begin", "step_end")}
    events = {f"on_{event}": (lambda learner, *_, e=event: counts.__setitem__(e, counts[e] + 1)) for event in counts}
    train, valid = _loaders(digits)
    learner = Learner(model, train, valid, quiet=True, callbacks=[LambdaCallback(**events)])
    learner.fit(1, 1e-3)
    model.head[-1] = nn.Linear(32, 10)  # surgery after the optimizer exists
    new = model.head[-1].weight.detach().clone()
    learner.fit(1, 1e-3)
    assert not torch.equal(new, model.head[-1].weight)
    assert counts == {"epoch_begin": 2, "epoch_end": 2, "step_begin": 2 * len(train), "step_end": 2 * len(train)}


def test_metrics():
    outputs = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5], [0.4, 0.35, 0.25]])
    targets = torch.tensor([1, 1, 2, 2])
    assert accuracy(outputs, targets).item() == 0.5
    assert error_rate(outputs, targets).item() == 0.5
    assert top_k_accuracy(outputs, targets, k=2).item() == 0.75
    assert top_k_accuracy(outputs, targets, k=10).item() == 1.0


def test_learner_argument_errors(digits, tmp_path):
    train, valid = _loaders(digits)
    with pytest.raises(ValueError, match="amp='fp8' is not a mode"):
        Learner(_cnn(), train, amp="fp8")
    with pytest.raises(ValueError, match="needs CUDA"):
        Learner(_cnn(), train, amp="fp16", device="cpu")
    with pytest.raises(ValueError, match="unknown metric 'acc'"):
        Learner(_cnn(), train, metrics=["acc"])
    learner = Learner(_cnn(), train, valid, quiet=True, checkpoint_dir=tmp_path)
    learner.fit(1, 1e-3)
    with pytest.raises(ValueError, match=r"written by fit\(1 epochs\), not fit_one_cycle\(2 epochs\)"):
        learner.fit_one_cycle(2, 1e-3, resume=tmp_path / "last.pt")
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        learner.fit(1, resume=tmp_path / "nope.pt")


def _frozen_phase(lite0: nn.Module, digits, *, cache: bool) -> tuple[nn.Module, list[dict]]:
    torch.manual_seed(0)
    model = graft(copy.deepcopy(lite0), 10)
    freeze(model, bn="frozen")
    x, y = digits
    used: list[bool] = []
    learner = Learner(
        model,
        *_loaders((x[:480], y[:480]), batch=32, size=32, rgb=True),
        quiet=True,
        cache_features=cache,
        callbacks=[LambdaCallback(on_epoch_end=lambda learner, record: used.append(learner.cache is not None))],
    )
    history = learner.fit_one_cycle(3, 3e-3)
    assert used == [cache] * 3
    return model, history


def test_feature_cache_trains_the_same_head(lite0, digits):
    cached, cached_history = _frozen_phase(lite0, digits, cache=True)
    plain, plain_history = _frozen_phase(lite0, digits, cache=False)
    for (name, a), b in zip(cached.head.state_dict().items(), plain.head.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-4), name
    for a, b in zip(cached_history, plain_history, strict=True):
        assert a["valid_loss"] == pytest.approx(b["valid_loss"], abs=1e-4)
    assert all(
        torch.equal(a, b)
        for a, b in zip(cached.body.state_dict().values(), plain.body.state_dict().values(), strict=True)
    )


class _Noisy(torch.utils.data.Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i] + 0.01 * torch.randn_like(self.x[i]), self.y[i]  # random augmentation


def test_feature_cache_refuses_augmented_data_and_skips_a_trainable_body(digits, capsys):
    model = graft(_cnn(), 10, cut="6", input_size=(1, 8, 8))
    freeze(model, bn="frozen")
    x, y = digits
    noisy = torch.utils.data.DataLoader(_Noisy(x[:64], y[:64]), batch_size=32)
    with pytest.raises(FeatureCacheError, match="augmented randomly"):
        Learner(model, noisy, quiet=True, cache_features=True).fit(1)
    unfreeze(model)
    learner = Learner(model, *_loaders(digits), cache_features=True)
    learner.fit(1)
    assert "feature cache" not in capsys.readouterr().err  # the body is trainable: no cache, a normal fit


DDP_SCRIPT = Path(__file__).parents[1] / "scripts" / "ddp_digits.py"


def test_plots_of_the_run_and_of_lr_find(digits, tmp_path):
    image = pytest.importorskip("matplotlib.image")
    learner = Learner(_cnn(), *_loaders(digits), quiet=True, metrics=["accuracy", "top3"])
    learner.fit_one_cycle(2, slice(1e-3, 1e-2))
    written = learner.plot(tmp_path / "plots")
    written.append(learner.lr_find(steps=30).plot(tmp_path / "plots" / "lr_find.png"))
    assert [p.name for p in written] == ["loss.png", "lr.png", "lr_find.png"]
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        pixels = image.imread(path)
        assert pixels.shape[0] > 200 and pixels.std() > 0.01  # a real picture, not a blank canvas


def test_plots_explain_a_missing_matplotlib(monkeypatch, tmp_path):
    from torchgraft.train.plots import plot_history

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        plot_history([{"epoch": 1, "train_loss": 1.0}], tmp_path / "x.png")


def test_ctrl_c_leaves_a_resumable_checkpoint(digits, tmp_path, capsys):
    def interrupt(learner: Learner) -> None:
        if learner.epoch == 1 and learner.step == 22 + 3:  # third batch of the second epoch
            raise KeyboardInterrupt

    learner = Learner(
        _cnn(), *_loaders(digits), checkpoint_dir=tmp_path, callbacks=[LambdaCallback(on_step_end=interrupt)]
    )
    with pytest.raises(KeyboardInterrupt):
        learner.fit(3, 1e-3)
    assert f"interrupted after 1 of 3 epochs; resume with resume={tmp_path / 'last.pt'}" in capsys.readouterr().err
    state = read_state(tmp_path / "last.pt")
    assert state["epoch"] == 1 and not list(tmp_path.glob("*.partial"))
    resumed = Learner(_cnn(), *_loaders(digits), quiet=True, checkpoint_dir=tmp_path)
    history = resumed.fit(3, 1e-3, resume=tmp_path / "last.pt")
    assert [r["epoch"] for r in history] == [1, 2, 3]


def test_progress_bars_on_request_and_plain_lines_otherwise(digits, capsys, monkeypatch):
    monkeypatch.setenv("TORCHGRAFT_PROGRESS_SECONDS", "3600")  # no plain batch line, however loaded the machine
    Learner(_cnn(), *_loaders(digits), progress=True).fit(1, 1e-3)
    captured = capsys.readouterr()
    assert "epoch 1" in captured.err and re.search(r"batch/s|s/batch", captured.err)  # tqdm, on stderr
    Learner(_cnn(), *_loaders(digits), progress=False).fit(1, 1e-3)
    captured = capsys.readouterr()
    assert captured.err == "" and len(captured.out.strip().splitlines()) == 2  # header and one epoch line


@pytest.mark.parametrize("stop_in", ["frozen", "unfrozen"])
def test_fine_tune_resumes_in_either_stage(digits, tmp_path, stop_in):
    def learner_for(directory: Path, watch: LambdaCallback | None = None) -> tuple[Learner, nn.Module]:
        torch.manual_seed(0)
        model = graft(_cnn(), 10, cut="6", input_size=(1, 8, 8))
        callbacks = [watch] if watch else []
        return Learner(model, *_loaders(digits), quiet=True, checkpoint_dir=directory, callbacks=callbacks), model

    straight, reference = learner_for(tmp_path / "a")
    straight.fine_tune(2, 1e-2, freeze_epochs=2)

    def stop(learner: Learner) -> None:
        if learner.stage == stop_in and learner.epoch == 1 and learner.step == 22 + 4:
            raise KeyboardInterrupt

    interrupted, _ = learner_for(tmp_path / "b", LambdaCallback(on_step_end=stop))
    with pytest.raises(KeyboardInterrupt):
        interrupted.fine_tune(2, 1e-2, freeze_epochs=2)
    assert read_state(tmp_path / "b" / "last.pt")["stage"] == stop_in
    resumed, model = learner_for(tmp_path / "b")
    history = resumed.fine_tune(2, 1e-2, freeze_epochs=2, resume=tmp_path / "b" / "last.pt")
    assert len(history) == 4
    stages = [("frozen", 0, 1), ("frozen", 0, 2), ("unfrozen", 1, 3), ("unfrozen", 1, 4)]  # as never stopped
    assert [(r["stage"], r["phase"], r["epoch"]) for r in history] == stages
    assert [(r["stage"], r["epoch"]) for r in straight.history] == [(s, e) for s, _, e in stages]
    assert all(
        torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values(), strict=True)
    )


def test_adam_moments_carry_over_from_one_fit_to_the_next(digits):
    model = _cnn()
    seen = {}

    def first_step(learner: Learner) -> None:
        if learner.phase == 1 and learner.step == 0:
            seen["state"] = {k: v.clone() for k, v in learner.optimizer.state[model[0].weight].items()}

    learner = Learner(model, *_loaders(digits), quiet=True, callbacks=[LambdaCallback(on_step_begin=first_step)])
    learner.fit(1, 1e-3)
    after_first = {k: v.clone() for k, v in learner.optimizer.state[model[0].weight].items()}
    learner.fit(1, slice(1e-4, 1e-3))  # a new optimizer (other groups and rates), the same moments
    assert all(torch.equal(seen["state"][k], v) for k, v in after_first.items())


def test_a_nan_on_one_rank_stops_every_rank(tmp_path):
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    out = tmp_path / "nan.pt"
    subprocess.run([*run, str(DDP_SCRIPT), str(out), "20", "1", "1"], check=True, capture_output=True, timeout=120)
    for rank in (0, 1):  # rank 0's loss was finite: it stopped because rank 1's was not
        assert "at epoch 1, batch 5; training stopped" in (tmp_path / f"nan.pt.rank{rank}").read_text()
    assert not out.exists()


def test_one_cycle_with_an_optimizer_without_momentum(digits):
    learner = Learner(_cnn(), *_loaders(digits), optimizer=torch.optim.Adagrad, quiet=True)
    history = learner.fit_one_cycle(1, 1e-2)
    assert math.isfinite(history[-1]["valid_loss"]) and "momentum" not in learner.optimizer.param_groups[0]


@pytest.mark.parametrize("stop_in", ["frozen", "top2", "unfrozen"])
def test_gradual_fine_tune_unfreezes_from_the_top_and_resumes_in_any_stage(digits, tmp_path, stop_in):
    def learner_for(directory: Path, watch: LambdaCallback | None) -> tuple[Learner, nn.Module]:
        torch.manual_seed(0)
        model = graft(_cnn(), 10, cut="6", input_size=(1, 8, 8))
        callbacks = [watch] if watch else []
        return Learner(model, *_loaders(digits), quiet=True, checkpoint_dir=directory, callbacks=callbacks), model

    seen: list[tuple[str | None, int]] = []

    def watch(learner: Learner) -> None:
        groups = layer_groups(learner.model)
        seen.append((learner.stage, sum(any(p.requires_grad for p in g.params) for g in groups)))

    straight, reference = learner_for(tmp_path / "a", LambdaCallback(on_epoch_begin=watch))
    assert len(layer_groups(reference)) == 3
    straight.fine_tune(3, 1e-2, freeze_epochs=2, gradual=True)
    assert seen == [("frozen", 1), ("frozen", 1), ("top2", 2), ("unfrozen", 3), ("unfrozen", 3)]

    last = {"frozen": 1, "top2": 0, "unfrozen": 1}[stop_in]  # the stage's last epoch (22 steps each)

    def stop(learner: Learner) -> None:
        if learner.stage == stop_in and learner.epoch == last and learner.step == 22 * last + 4:
            raise KeyboardInterrupt

    interrupted, _ = learner_for(tmp_path / "b", LambdaCallback(on_step_end=stop))
    with pytest.raises(KeyboardInterrupt):
        interrupted.fine_tune(3, 1e-2, freeze_epochs=2, gradual=True)
    resumed, model = learner_for(tmp_path / "b", None)
    history = resumed.fine_tune(3, 1e-2, freeze_epochs=2, gradual=True, resume=tmp_path / "b" / "last.pt")
    assert len(history) == 5
    names = ["frozen", "frozen", "top2", "unfrozen", "unfrozen"]  # the table's stage and epoch, as never stopped
    assert [(r["stage"], r["epoch"]) for r in history] == list(zip(names, range(1, 6), strict=True))
    for (name, a), b in zip(reference.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
