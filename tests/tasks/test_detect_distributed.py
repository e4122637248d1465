"""Detection under torchrun (2 gloo processes): mAP over two halves of a fixed set equals one process on all of
it, and a Learner trains a torchvision detector on sharded lists of images, every rank recording the same mAP,
which equals the report on the validation outputs gathered on rank 0."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "scripts"))
from detect_scenes import write_scenes

SCRIPT = Path(__file__).parents[1] / "scripts" / "ddp_detect.py"


def _launch(out: Path, world: int, annotations: Path) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    runner = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(world)] if world > 1 else []
    done = subprocess.run(
        [sys.executable, *runner, str(SCRIPT), str(out), str(annotations)], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]


@pytest.mark.slow
def test_map_is_reduced_over_ranks_and_detectors_train_under_ddp(tmp_path):
    annotations = write_scenes(tmp_path / "scenes", train=8, valid=7)  # 7: uneven shards, a short batch
    (one,) = _launch(tmp_path / "one", 1, annotations)
    ranks = _launch(tmp_path / "two", 2, annotations)
    for name, value in one["metric"].items():
        assert value > 0
        for result in ranks:
            assert result["metric"][name] == pytest.approx(value, abs=1e-6), name
    assert ranks[0]["history"] == ranks[1]["history"]  # reduced metrics and losses: the same on every rank
    assert ranks[0]["kept_images"] == 7
    assert ranks[0]["report_map"] == pytest.approx(ranks[0]["best_map"], abs=1e-6)
    assert one["report_map"] == pytest.approx(one["best_map"], abs=1e-6)
