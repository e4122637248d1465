"""SIGKILL ``torchgraft train`` at chosen moments, resume with ``--resume``, compare with an uninterrupted run.

Usage: kill_resume.py DATA OUT_DIR WORLD TRIALS SEED [TRAIN OPTION...] (the options are added to every run,
e.g. ``--workers 2``). Every run is forked from this process (torchgraft is
imported once); with WORLD 2 each run is two processes joined as torchrun would join them (RANK, WORLD_SIZE,
MASTER_ADDR/PORT), and a kill takes both, as a pre-empted machine does. Each trial kills at another kind of
moment, cycling through: right after the k-th checkpoint write (mid-epoch, with --save-every 1), while a
checkpoint file is being written (its .partial exists), and at a random time. Writes OUT_DIR/report.json: per
trial the moment, where the last checkpoint stood (stage, epoch, batch), the exit codes and whether every
tensor of the resumed model.safetensors equals the uninterrupted one bit for bit, and the history's phases.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import sys
import time
from pathlib import Path

from torchgraft.cli.main import main

ARGS = [
    "--model", "timm/efficientnet_lite0", "--size", "32", "--epochs", "1", "--freeze-epochs", "1",
    "--workers", "1", "--quiet", "--valid-pct", "0.25", "--save-every", "1",
]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


EXTRA: list[str] = []  # the command line's TRAIN OPTIONs


def start(data: str, out: Path, world: int, *extra: str) -> list[int]:
    """Fork the ``world`` processes of one ``torchgraft train`` run; returns their pids."""
    port, pids = _free_port(), []
    batch = str(8 // world)
    for rank in range(world):
        pid = os.fork()
        if pid == 0:  # the child: one rank of the run
            if world > 1:
                os.environ.update(
                    RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                    MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                )  # fmt: skip
            import torch

            torch.set_num_threads(1)
            code = main(["train", data, *ARGS, "--batch-size", batch, "--out", str(out), *EXTRA, *extra])
            os._exit(code)
        pids.append(pid)
    return pids


_CODES: dict[int, int] = {}  # exit codes of the children reaped so far (a pid can be waited for only once)


def _reap(pid: int, *, block: bool) -> int | None:
    """The exit code of child ``pid``, or None while it runs (``block=False``); reaps it once, then remembers."""
    if pid not in _CODES:
        done, status = os.waitpid(pid, 0 if block else os.WNOHANG)
        if done == 0:
            return None
        _CODES[pid] = os.waitstatus_to_exitcode(status)
    return _CODES[pid]


def wait(pids: list[int]) -> list[int]:
    return [_reap(pid, block=True) for pid in pids]


def finished(pids: list[int]) -> bool:
    """Whether every process of the run has exited (one rank may end before the other)."""
    return all([_reap(pid, block=False) is not None for pid in pids])


def kill(pids: list[int]) -> None:
    for pid in pids:
        if pid not in _CODES:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    wait(pids)


def _writes(last: Path) -> tuple[float, int] | None:
    try:
        stat = last.stat()
    except FileNotFoundError:
        return None
    return stat.st_mtime_ns, stat.st_ino


def kill_after_writes(pids: list[int], last: Path, count: int, delay: float) -> str:
    """Kill ``delay`` seconds after the ``count``-th new version of ``last`` appears."""
    seen, previous = 0, None
    while seen < count:
        current = _writes(last)
        if current is not None and current != previous:
            seen, previous = seen + 1, current
        if finished(pids):
            return "finished before the kill"
        time.sleep(0.002)
    time.sleep(delay)
    kill(pids)
    return f"{delay:.2f} s after checkpoint write {count}"


def kill_while_writing(pids: list[int], partial: Path, skip: int) -> str:
    """Kill while the ``skip + 1``-th checkpoint is being written."""
    seen, inside = 0, False
    while True:
        exists = partial.exists()
        if exists and not inside:
            if seen == skip:
                kill(pids)
                return f"while writing checkpoint {skip + 1}"
            seen += 1
        inside = exists
        if finished(pids):
            return "finished before the kill"
        time.sleep(0.0005)  # a checkpoint takes tens of milliseconds to write


def position(last: Path) -> dict[str, object]:
    import torch

    state = torch.load(last, map_location="cpu", weights_only=True)
    where = state.get("position")
    return {"stage": state.get("stage"), "epoch": state["epoch"], "batch": where["batch"] if where else 0}


def main_script() -> None:
    data, out, world, trials, seed = (
        sys.argv[1],
        Path(sys.argv[2]),
        int(sys.argv[3]),
        int(sys.argv[4]),
        int(sys.argv[5]),
    )
    EXTRA[:] = sys.argv[6:]
    chooser = random.Random(seed)
    started = time.perf_counter()
    assert wait(start(data, out / "straight", world)) == [0] * world
    duration = time.perf_counter() - started
    report = []
    for trial in range(trials):
        run = out / f"trial{trial}"
        pids = start(data, run, world)
        last = run / "checkpoints" / "last.pt"
        kind = trial % 3
        count = 1 + (trial * 4 + chooser.randint(0, 1)) % 9  # early (frozen stage) and late (unfrozen) writes
        if kind == 0:
            moment = kill_after_writes(pids, last, count, chooser.uniform(0.0, 0.3))
        elif kind == 1:
            moment = kill_while_writing(pids, last.with_name("last.pt.partial"), count)
        else:
            time.sleep(chooser.uniform(0.5, 1.0) * duration)
            kill(pids)
            moment = "at a random time"
        where = position(last) if last.exists() else None
        codes = wait(start(data, run, world, "--resume")) if where is not None else wait(start(data, run, world))
        report.append({"moment": moment, "checkpoint": where, "exit": codes})
    from safetensors.torch import load_file  # tensors compared only now: no fork after torch has computed

    straight = load_file(out / "straight" / "model.safetensors")
    phases = [row["phase"] for row in json.loads((out / "straight" / "history.json").read_text())]
    for trial, entry in enumerate(report):
        resumed = load_file(out / f"trial{trial}" / "model.safetensors")
        entry["equal"] = resumed.keys() == straight.keys() and all(resumed[k].equal(straight[k]) for k in straight)
        history = json.loads((out / f"trial{trial}" / "history.json").read_text())
        entry["phases"] = [row["phase"] for row in history] == phases
    (out / "report.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main_script()
