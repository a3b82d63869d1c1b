"""Run checkpoints read back what rodpo wrote, and refuse anything else with the way out: delete the run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

from rodpo.training.checkpoints import LAST_WEIGHTS, STATE_FILE, CheckpointError, RunCheckpoint


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
