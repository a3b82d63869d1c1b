"""Resumable training checkpoints without pickle.

One directory per run, named by a hash of (model config, trajectory-relevant train config, data
fingerprint, initial weights), so a changed setting starts a fresh run instead of resuming a stale one.
Files:
  last.safetensors / best.safetensors   model weights (frozen feature buffers are not included)
  state.pt     optimizer state, RNG states, epoch, best metric, history: tensors and plain
               containers only, read back with torch.load(weights_only=True)
  done.json    present once the run finished (early stop or epoch budget reached)
  writer.lock  while a process trains the run: its host, pid and start time (`RunLock`)
Each file is written to a temporary name of its own (pid + random suffix) and renamed, so an
interrupted write never leaves a half-written checkpoint behind. One process writes a run folder at
a time: a second one is refused with "run in progress (pid N, host H)", and the lock of a process
that died is taken over (the identity rules of `rodpo.processes`, as the run journals use). A file
that does not read back (tampered with, or corrupted on disk) raises ``CheckpointError``, which
names the run directory to delete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import pickle
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from rodpo.files import atomic_write
from rodpo.processes import process_identity, process_is_gone

try:
    import fcntl
except ImportError:  # not POSIX: lock decisions are not serialised between processes of this host
    fcntl = None

logger = logging.getLogger(__name__)
LAST_WEIGHTS = "last.safetensors"
BEST_WEIGHTS = "best.safetensors"
STATE_FILE = "state.pt"
DONE_FILE = "done.json"
LOCK_FILE = "writer.lock"
TEMPORARY_SUFFIX = ".tmp"


class CheckpointError(RuntimeError):
    """A checkpoint file of a run directory cannot be trusted; the message says which and what to do."""


class RunInProgressError(RuntimeError):
    """Another live process holds the writer lock of this run folder."""


def state_fingerprint(model: nn.Module) -> str:
    """sha256 of a model's weights (e.g. the warm-up policy a DPO run starts from)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def run_key(*parts: Any) -> str:
    """Short stable hash of json-serialisable parts (configs as dicts, fingerprints as strings)."""
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _atomic(path: Path, write) -> None:
    atomic_write(path, write, suffix=TEMPORARY_SUFFIX)  # a name of its own: concurrent writers never share one


def weights_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of the model's weights (for safetensors, or to keep the best epoch in memory)."""
    return {name: tensor.detach().cpu().clone().contiguous() for name, tensor in model.state_dict().items()}


class RunCheckpoint:
    """Reads and writes the files of one run directory (see the module docstring)."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)

    def save_epoch(self, model: nn.Module, state: dict[str, Any], is_best: bool) -> None:
        """After an epoch: best weights first (if improved), then last weights, then the state that
        points at them, so a crash in between resumes from a consistent earlier epoch."""
        self.directory.mkdir(parents=True, exist_ok=True)
        weights = weights_copy(model)
        if is_best:
            _atomic(self.directory / BEST_WEIGHTS, lambda p: save_file(weights, str(p)))
        _atomic(self.directory / LAST_WEIGHTS, lambda p: save_file(weights, str(p)))
        _atomic(self.directory / STATE_FILE, lambda p: torch.save(state, p))

    def save_best(self, model: nn.Module) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        weights = weights_copy(model)
        _atomic(self.directory / BEST_WEIGHTS, lambda p: save_file(weights, str(p)))

    def load_state(self) -> dict[str, Any] | None:
        path = self.directory / STATE_FILE
        if not path.exists() or not (self.directory / LAST_WEIGHTS).exists():
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:  # weights_only refused a global: not what rodpo writes
            raise CheckpointError(
                f"{path} holds something other than tensors and plain containers (tampered with, corrupted, "
                f"or written by something other than rodpo); rodpo will not unpickle it. {self._fresh_start()}"
            ) from error
        except Exception as error:  # torch.load only reads here: any failure means the file is unusable
            raise CheckpointError(f"{path} cannot be read ({error}): it is truncated or corrupt. "
                                  f"{self._fresh_start()}") from error

    def read_weights(self, which: str = "last") -> dict[str, torch.Tensor]:
        """CPU weights of the "last" or "best" epoch."""
        path = self._weights_path(which)
        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as error:
            raise CheckpointError(f"{path} cannot be read ({error}): it is truncated or corrupt. "
                                  f"{self._fresh_start()}") from error

    def load_weights(self, model: nn.Module, which: str = "last") -> None:
        weights = self.read_weights(which)
        try:
            model.load_state_dict(weights)
        except RuntimeError as error:  # readable, but not this run's weights
            raise CheckpointError(f"{self._weights_path(which)} does not match the model ({error}). "
                                  f"{self._fresh_start()}") from error

    def _weights_path(self, which: str) -> Path:
        return self.directory / {"last": LAST_WEIGHTS, "best": BEST_WEIGHTS}[which]

    def _fresh_start(self) -> str:
        return f"Delete the run directory {self.directory} to retrain this run from scratch."

    def mark_done(self, summary: dict[str, Any]) -> None:
        _atomic(self.directory / DONE_FILE, lambda p: p.write_text(json.dumps(summary, indent=2)))

    def is_done(self) -> bool:
        return (self.directory / DONE_FILE).exists() and (self.directory / BEST_WEIGHTS).exists()


class RunLock:
    """The writer lock of one run folder: `writer.lock` holds the owner's identity while it trains.

    A second process is refused (`RunInProgressError`) rather than made to wait: the run it wants is
    being trained, and a rerun after the first one finishes reuses the result. A lock whose owner is
    gone (killed on this host: `rodpo.processes.process_is_gone`) is taken over; one held on another
    host is never judged, so it names the host and the file to delete if that process is gone.
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_FILE
        self.identity = process_identity()

    def acquire(self) -> RunLock:
        self.directory.mkdir(parents=True, exist_ok=True)
        record = json.dumps({**self.identity, "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        with _host_exclusive(self.directory):
            try:
                with open(self.path, "x", encoding="utf-8") as handle:  # O_EXCL: atomic across hosts too
                    handle.write(record)
            except FileExistsError:
                owner = self._owner()
                if owner is None or not (self._is_mine(owner) or process_is_gone(owner)):
                    raise RunInProgressError(self._in_progress(owner)) from None
                if not self._is_mine(owner):
                    logger.warning("%s: taking over the writer lock of pid %s on %s, which is gone.",
                                   self.directory, owner.get("pid"), owner.get("host"))
                _atomic(self.path, lambda p: p.write_text(record, encoding="utf-8"))
            for leftover in self.directory.glob(f"*{TEMPORARY_SUFFIX}"):  # of writers that were killed
                leftover.unlink(missing_ok=True)
        return self

    def release(self) -> None:
        with _host_exclusive(self.directory):
            owner = self._owner()
            if owner is not None and self._is_mine(owner):
                self.path.unlink(missing_ok=True)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _owner(self) -> dict[str, str] | None:
        try:
            owner = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):  # vanished, or being written from another host
            return None
        return owner if isinstance(owner, dict) else None

    def _is_mine(self, owner: dict[str, str]) -> bool:
        return all(owner.get(key) == value for key, value in self.identity.items())

    def _in_progress(self, owner: dict[str, str] | None) -> str:
        who = (f"pid {owner.get('pid')}, host {owner.get('host')}, since {owner.get('since')}" if owner
               else "owner unreadable")
        return (f"{self.directory}: run in progress ({who}): another process is training this run and "
                f"writing its checkpoints. Wait for it to finish (rerunning then reuses its result), or, if "
                f"that process is gone (e.g. on another machine), delete {self.path}.")


@contextlib.contextmanager
def _host_exclusive(directory: Path) -> Iterator[None]:
    """Serialise lock decisions of this host's processes on `directory` (flock on the folder), so
    two processes cannot both take over one stale lock. A file system without flock goes unguarded."""
    if fcntl is None:
        yield
        return
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
        except OSError:
            pass
        yield
    finally:
        os.close(descriptor)
