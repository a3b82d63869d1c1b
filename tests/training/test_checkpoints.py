"""Run checkpoints read back what rodpo wrote, and refuse anything else with the way out: delete the run.
One process writes a run folder at a time (real processes below, started with spawn as DDP does)."""

from __future__ import annotations

import logging
import multiprocessing
import os
import re
import signal
import socket
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from rodpo.training.checkpoints import (
    LAST_WEIGHTS,
    LOCK_FILE,
    STATE_FILE,
    CheckpointError,
    RunCheckpoint,
    RunInProgressError,
    RunLock,
)

SPAWN = multiprocessing.get_context("spawn")
START_TIMEOUT_S = 120  # a spawned child imports torch first


class _Trap:
    """Unpickling this touches `marker`: proof that a loader ran pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (Path(self.marker),)


def _saved_run(tmp_path: Path) -> RunCheckpoint:
    checkpoint = RunCheckpoint(tmp_path / "run")
    state = {"epoch": 1, "history": [{"epoch": 1, "loss": 0.5}], "rng": {"torch": torch.get_rng_state()}}
    checkpoint.save_epoch(nn.Linear(2, 3), state, is_best=True)
    return checkpoint


def test_a_saved_epoch_reads_back(tmp_path):
    checkpoint = _saved_run(tmp_path)
    assert checkpoint.load_state()["history"] == [{"epoch": 1, "loss": 0.5}]
    model = nn.Linear(2, 3)
    checkpoint.load_weights(model, "best")
    assert torch.equal(model.weight, checkpoint.read_weights("last")["weight"])


def test_a_tampered_state_is_refused_without_unpickling_and_names_the_run_to_delete(tmp_path):
    checkpoint = _saved_run(tmp_path)
    marker = tmp_path / "unpickled"
    torch.save({"epoch": 1, "history": [], "payload": _Trap(marker)}, checkpoint.directory / STATE_FILE)
    with pytest.raises(CheckpointError) as error:
        checkpoint.load_state()
    message = str(error.value)
    assert str(checkpoint.directory / STATE_FILE) in message
    assert "something other than tensors and plain containers" in message and "will not unpickle" in message
    assert f"Delete the run directory {checkpoint.directory}" in message and "weights_only" not in message
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_a_corrupt_state_file_names_the_run_to_delete(tmp_path, damage):
    checkpoint = _saved_run(tmp_path)
    path = checkpoint.directory / STATE_FILE
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2] if damage == "truncated" else b"")
    with pytest.raises(CheckpointError, match=re.escape(f"Delete the run directory {checkpoint.directory}")):
        checkpoint.load_state()


def test_corrupt_weights_name_the_run_to_delete(tmp_path):
    checkpoint = _saved_run(tmp_path)
    path = checkpoint.directory / LAST_WEIGHTS
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(CheckpointError, match=re.escape(f"{path} cannot be read")) as error:
        checkpoint.load_weights(nn.Linear(2, 3), "last")
    assert f"Delete the run directory {checkpoint.directory}" in str(error.value)


# ------------------------------------------------------------------ the writer lock
def _hold_lock(directory: str, locked, release) -> None:
    """Child: take the run's lock, write an epoch, hold on until told to let go."""
    with RunLock(directory):
        RunCheckpoint(directory).save_epoch(nn.Linear(2, 3), {"epoch": 1, "writer": os.getpid()}, is_best=True)
        locked.set()
        release.wait(START_TIMEOUT_S)


def _lock_and_die(directory: str, locked) -> None:
    """Child: take the run's lock, leave a half-written temporary behind, then wait to be killed."""
    RunLock(directory).acquire()
    (Path(directory) / f"{LAST_WEIGHTS}.{os.getpid()}.dead.tmp").write_bytes(b"half")
    locked.set()
    time.sleep(START_TIMEOUT_S)


def _write_repeatedly(directory: str, marker: float, go, writes: int) -> None:
    """Child: `writes` epochs whose weights and state both carry `marker`, each under the run's lock; a
    refused attempt tries again. Exit code 3 if a read-back mixes two writers (a torn checkpoint)."""
    go.wait(START_TIMEOUT_S)
    model, written = nn.Linear(2, 3), 0
    deadline = time.monotonic() + START_TIMEOUT_S
    while written < writes and time.monotonic() < deadline:
        try:
            lock = RunLock(directory).acquire()
        except RunInProgressError:
            time.sleep(0.001)
            continue
        try:
            checkpoint = RunCheckpoint(directory)
            with torch.no_grad():
                model.weight.fill_(marker)
            checkpoint.save_epoch(model, {"epoch": written, "marker": marker}, is_best=True)
            time.sleep(0.005)  # a writer holds its run for a while (a whole training run, in the trainer)
            state, weights = checkpoint.load_state(), checkpoint.read_weights("last")
            if state["marker"] != marker or float(weights["weight"][0, 0]) != marker:
                os._exit(3)
            written += 1
        finally:
            lock.release()
    os._exit(0 if written == writes else 4)


def test_a_second_writer_of_a_run_folder_is_refused_with_the_owner(tmp_path):
    directory = str(tmp_path / "run")
    locked, release = SPAWN.Event(), SPAWN.Event()
    holder = SPAWN.Process(target=_hold_lock, args=(directory, locked, release))
    holder.start()
    try:
        assert locked.wait(START_TIMEOUT_S)
        with pytest.raises(RunInProgressError,
                           match=re.escape(f"run in progress (pid {holder.pid}, host {socket.gethostname()}")) as error:
            RunLock(directory).acquire()
        assert f"delete {Path(directory) / LOCK_FILE}" in str(error.value)
        assert RunCheckpoint(directory).load_state()["writer"] == holder.pid  # the holder's epoch, untouched
    finally:
        release.set()
        holder.join(START_TIMEOUT_S)
    assert holder.exitcode == 0 and not (Path(directory) / LOCK_FILE).exists()
    with RunLock(directory):  # free again once the holder finished
        assert (Path(directory) / LOCK_FILE).exists()


def test_two_concurrent_writers_never_tear_a_checkpoint(tmp_path):
    directory, go = str(tmp_path / "run"), SPAWN.Event()
    writers = [SPAWN.Process(target=_write_repeatedly, args=(directory, marker, go, 15)) for marker in (1.0, 2.0)]
    for writer in writers:
        writer.start()
    go.set()
    for writer in writers:
        writer.join(2 * START_TIMEOUT_S)
    assert [writer.exitcode for writer in writers] == [0, 0]  # every write read back whole, both got turns
    checkpoint = RunCheckpoint(directory)
    marker = checkpoint.load_state()["marker"]
    assert float(checkpoint.read_weights("last")["weight"][0, 0]) == marker
    assert float(checkpoint.read_weights("best")["weight"][0, 0]) == marker
    assert sorted(p.name for p in Path(directory).iterdir()) == ["best.safetensors", "last.safetensors", STATE_FILE]


def test_the_lock_of_a_killed_writer_is_taken_over(tmp_path, caplog):
    directory, locked = str(tmp_path / "run"), SPAWN.Event()
    victim = SPAWN.Process(target=_lock_and_die, args=(directory, locked))
    victim.start()
    assert locked.wait(START_TIMEOUT_S)
    os.kill(victim.pid, signal.SIGKILL)
    victim.join(START_TIMEOUT_S)
    assert (Path(directory) / LOCK_FILE).exists()  # a killed process cannot clean up
    with caplog.at_level(logging.WARNING, logger="rodpo.training.checkpoints"):
        lock = RunLock(directory).acquire()
    assert f"taking over the writer lock of pid {victim.pid}" in caplog.text
    assert not list(Path(directory).glob("*.tmp"))  # the dead writer's half-written file is gone
    lock.release()
    assert not (Path(directory) / LOCK_FILE).exists()


def test_a_lock_held_on_another_host_is_never_taken_over(tmp_path):
    directory = tmp_path / "run"
    directory.mkdir()
    (directory / LOCK_FILE).write_text('{"host": "gpu-node-7", "pid": "4242", "start": "x", "since": "then"}')
    with pytest.raises(RunInProgressError, match=r"run in progress \(pid 4242, host gpu-node-7, since then\)"):
        RunLock(directory).acquire()
    assert "gpu-node-7" in (directory / LOCK_FILE).read_text()
