"""One place that decides which torch device a run uses, and how many CPU threads it may take."""

from __future__ import annotations

import math
import os

import torch


def resolve_device(requested: str = "auto") -> torch.device:
    """Return the device to run on: ``"auto"`` picks cuda > mps > cpu; anything else is an override.

    An explicit request for an accelerator that is not there is an error rather than a silent CPU
    fallback, so a GPU run that quietly takes hours on CPU cannot happen.
    """
    choice = requested.strip().lower()
    if choice == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(choice)
    except RuntimeError as error:
        raise ValueError(
            f"device={requested!r} is not a torch device; use 'auto', 'cpu', 'cuda', 'cuda:1' or 'mps'."
        ) from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={requested!r} but CUDA is not available here; use device='auto' or 'cpu'.")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(
            f"device={requested!r} but only {torch.cuda.device_count()} CUDA device(s) exist; pick a lower index."
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={requested!r} but MPS is not available here; use device='auto' or 'cpu'.")
    return device


def usable_cores() -> int:
    """CPU cores this process may run on: its affinity mask (taskset, a container's cpuset) and, on
    cgroup v2, its CPU quota (a container limited to 2 CPUs on a 64-core host gets 2)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()[:2]
        if quota != "max":
            cores = min(cores, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def default_torch_threads(processes: int = 1) -> int:
    """Intra-op threads per process that do not oversubscribe the cores: the usable cores shared by
    `processes` (e.g. the workers of a distributed run), at least one. OMP_NUM_THREADS, when set,
    is the user's choice and wins."""
    if os.environ.get("OMP_NUM_THREADS", "").strip().isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    return max(1, usable_cores() // max(1, processes))


def configure_torch_threads(threads: int | str = "auto", processes: int = 1) -> int:
    """Set torch's intra-op threads ("auto" = `default_torch_threads`) and return the number set.

    torch starts with one thread per physical core of the machine, not of the process's share;
    two processes (or one process pinned to fewer cores) then fight over the same cores.
    """
    if threads == "auto":
        count = default_torch_threads(processes)
    elif isinstance(threads, int) and not isinstance(threads, bool) and threads >= 1:
        count = threads
    else:
        raise ValueError(f"threads={threads!r}: use 'auto' or a positive integer (torch intra-op threads).")
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    return count
