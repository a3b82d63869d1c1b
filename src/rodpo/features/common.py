"""Helpers shared by the text and image feature extractors."""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Any, ContextManager

import numpy as np
import torch

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "fp16", "bf16")


def item_column(items: Any, column: str) -> list:
    """Values of one column of the items table (polars or pandas) as a list; NaN and null become None."""
    if column not in items.columns:
        raise ValueError(
            f"items table has no column {column!r} (columns: {list(items.columns)}); "
            "pass the primary `items` table produced by rodpo.data.preprocess."
        )
    return [None if isinstance(v, float) and math.isnan(v) else v for v in items[column]]


def check_item_ids(items: Any) -> int:
    """Return the number of items I after checking that row i-1 holds item id i (the contract).

    The feature matrices are indexed by item id, so a table that is not sorted 1..I would silently
    give items each other's features.
    """
    ids = np.asarray(item_column(items, "item_id"), dtype=np.int64)
    expected = np.arange(1, len(ids) + 1)
    if not np.array_equal(ids, expected):
        bad = int(np.flatnonzero(ids != expected)[0])
        raise ValueError(
            f"items.item_id must be 1..I in row order, but row {bad} holds {ids[bad]} (expected {bad + 1}); "
            "sort the table by item_id and make ids contiguous (rodpo.data.preprocess does both)."
        )
    return len(ids)


def with_padding_row(rows: np.ndarray) -> np.ndarray:
    """Prepend the all-zero (or all-False) padding row 0 so that row i belongs to item id i."""
    padding = np.zeros((1,) + rows.shape[1:], dtype=rows.dtype)
    return np.concatenate([padding, rows], axis=0)


def autocast_for(device: torch.device, precision: str = "auto") -> tuple[ContextManager, str]:
    """Return (autocast context, effective precision).

    Reduced precision is used on CUDA only ("auto" = bf16 where supported, else fp16); on CPU and MPS
    a reduced-precision request runs in fp32, because CPU autocast is slow and changes the numbers
    for no gain. The effective precision goes into the feature manifest.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is not one of {PRECISIONS}.")
    if device.type != "cuda" or precision == "fp32":
        if precision in ("fp16", "bf16"):
            logger.warning("precision=%s requested on %s; running in fp32 (autocast is CUDA-only here).",
                           precision, device)
        return contextlib.nullcontext(), "fp32"
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype), precision
