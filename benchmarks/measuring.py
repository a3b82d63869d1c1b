"""What the benchmarks measure with: peak RSS, device synchronisation, tensor bytes (one copy for all)."""

from __future__ import annotations

import resource

import torch


def peak_rss_bytes(who: int = resource.RUSAGE_SELF) -> int:
    return resource.getrusage(who).ru_maxrss * 1024  # Linux reports KiB


def synchronize(device: torch.device) -> None:
    """Wait for queued CUDA work, so a wall-clock interval covers it; nothing to wait for on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))
