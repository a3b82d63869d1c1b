"""One place that decides which torch device a run uses."""

from __future__ import annotations

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
