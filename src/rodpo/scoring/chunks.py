"""Chunks of the catalog and the checks every scoring pass shares (see rodpo.scoring)."""

from __future__ import annotations

import numbers
from collections.abc import Iterator
from typing import NamedTuple

import torch

AUTO_CHUNK_BYTES = 256 * 2**20  # "auto": fp32 logits per chunk (CPU; also the cap on CUDA)
AUTO_CUDA_FREE_FRACTION = 1 / 8  # "auto" on CUDA: a chunk's logits may take this share of free memory
SCORE_ALIGN = 64  # matmul widths are multiples of this; chunks of at least this are rounded down to one
LOGIT_BYTES = 4  # fp32 working logits


# ---------------------------------------------------------------------------------------- chunks
def resolve_chunk_items(value: int | str, n_rows: int, n_items: int, device: str | torch.device) -> int:
    """Items scored per chunk: an int >= 1, or "auto" = AUTO_CHUNK_BYTES of fp32 logits for n_rows
    rows (on CUDA at most AUTO_CUDA_FREE_FRACTION of free memory); clamped to [1, n_items]."""
    if n_items < 1:
        raise ValueError(f"n_items={n_items}: the item table needs at least one real item after padding row 0.")
    if isinstance(value, str) and value == "auto":
        budget = AUTO_CHUNK_BYTES
        device = torch.device(device)
        if device.type == "cuda":
            free_bytes, _ = torch.cuda.mem_get_info(device)
            budget = min(budget, int(free_bytes * AUTO_CUDA_FREE_FRACTION))
        width = budget // (LOGIT_BYTES * max(n_rows, 1))
    elif isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1:
        width = int(value)
    else:
        raise ValueError(
            f"score_chunk_items={value!r}: expected an integer >= 1 (items scored per chunk; larger is "
            f"faster, smaller uses less memory) or 'auto' (sized from free memory)."
        )
    return max(1, min(width, n_items))


class _Chunk(NamedTuple):
    """Items [fresh, stop) of the table, scored together."""
    fresh: int
    stop: int


def _aligned(n: int) -> int:
    return -(-n // SCORE_ALIGN) * SCORE_ALIGN


def _chunks(n_items: int, width: int) -> Iterator[_Chunk]:
    """Chunks tiling 1..n_items in id order; a `width` >= SCORE_ALIGN is rounded down to a multiple of it."""
    step = width - width % SCORE_ALIGN if width >= SCORE_ALIGN else width
    for fresh in range(1, n_items + 1, step):
        yield _Chunk(fresh, min(fresh + step, n_items + 1))


def _matmul_dtype(states: torch.Tensor, table: torch.Tensor) -> torch.dtype:
    device_type = states.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return torch.promote_types(states.dtype, table.dtype)


def _autocast_off(device: torch.device):
    """Casts are explicit in this module, so the backward pass (run outside autocast) matches."""
    return torch.autocast(device.type, enabled=False)


def _scores(states: torch.Tensor, rows: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """states (N, D) already in `dtype`, rows (C, D) -> (N, C) in the reduction dtype, from one
    matmul whose width is C filled up with zero rows to a multiple of SCORE_ALIGN."""
    n_rows = rows.shape[0]
    rows = rows.to(dtype)
    if n_rows % SCORE_ALIGN:
        rows = torch.cat([rows, rows.new_zeros(_aligned(n_rows) - n_rows, rows.shape[1])])
    return (states @ rows.T)[:, :n_rows].to(torch.promote_types(dtype, torch.float32))


def _chunk_scores(states: torch.Tensor, table: torch.Tensor, chunk: _Chunk, dtype: torch.dtype) -> torch.Tensor:
    """(N, stop - fresh) scores of the chunk's items."""
    return _scores(states, table[chunk.fresh:chunk.stop], dtype)


class _ChunkWork:
    """Memory one pass reuses for every chunk: the matmul output (and its fp32 copy after a half
    matmul) and a float flag matrix. A fresh (N, chunk) tensor per chunk costs page faults (large
    blocks go back to the OS when freed) and made the passes copy-bound; the values are the same."""

    def __init__(self, n_rows: int, width: int, dtype: torch.dtype, device: torch.device) -> None:
        self.n_rows, self.dtype, self.device = n_rows, dtype, device
        self.reduce_dtype = torch.promote_types(dtype, torch.float32)
        self.max_width = _aligned(width)
        self.cells = n_rows * self.max_width
        self._product = torch.empty(self.cells, dtype=dtype, device=device)
        self._reduced = (None if self.reduce_dtype == dtype
                         else torch.empty(self.cells, dtype=self.reduce_dtype, device=device))
        self._flags = None

    def scores(self, states: torch.Tensor, table: torch.Tensor, chunk: _Chunk) -> torch.Tensor:
        """As `_chunk_scores` (the same values), as a view into this memory: valid until the next call."""
        rows = table[chunk.fresh:chunk.stop].to(self.dtype)
        n_items = rows.shape[0]
        if n_items % SCORE_ALIGN:
            rows = torch.cat([rows, rows.new_zeros(_aligned(n_items) - n_items, rows.shape[1])])
        product = self._product[:self.n_rows * rows.shape[0]].view(self.n_rows, rows.shape[0])
        torch.mm(states, rows.T, out=product)
        if self._reduced is None:
            return product[:, :n_items]
        return self._reduced[:self.n_rows * n_items].view(self.n_rows, n_items).copy_(product[:, :n_items])

    def flags(self, width: int) -> torch.Tensor:
        """(N, width + 1) float32 scratch: 0/1 flags of a chunk and a spare column for ids outside it."""
        if self._flags is None:
            self._flags = torch.empty(self.n_rows * (self.max_width + 1), device=self.device)
        return self._flags[:self.n_rows * (width + 1)].view(self.n_rows, width + 1)


EXACT_FLOAT_COUNT = 2**24  # a float32 sum of 0/1 flags is exact below this


def _count_flags(flags: torch.Tensor) -> torch.Tensor:
    """Per-row number of 1.0 flags (N, C) as int64: float sums (vectorised, unlike bool sums, which
    copy to int64 first), exact in blocks of fewer than EXACT_FLOAT_COUNT columns."""
    counts = torch.zeros(flags.shape[0], dtype=torch.long, device=flags.device)
    for first in range(0, flags.shape[1], EXACT_FLOAT_COUNT - 1):
        counts += flags[:, first:first + EXACT_FLOAT_COUNT - 1].sum(dim=1).long()
    return counts


def _local(ids: torch.Tensor, fresh: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Column of each id inside the fresh range [fresh, stop) (clamped when outside) and whether inside."""
    inside = (ids >= fresh) & (ids < stop)
    return (ids - fresh).clamp(0, stop - fresh - 1), inside


def _id_mask(ids: torch.Tensor, fresh: int, stop: int) -> torch.Tensor:
    """(N, L) item ids -> (N, stop - fresh) bool, True where the column's item is among the row's ids."""
    width = stop - fresh
    local, inside = _local(ids, fresh, stop)
    mask = torch.zeros(ids.shape[0], width + 1, dtype=torch.bool, device=ids.device)
    mask.scatter_(1, torch.where(inside, local, width), True)  # ids outside the chunk land in a spare column
    return mask[:, :width]


# ------------------------------------------------------------------------------------ validation
def _check_scoring_inputs(states: torch.Tensor, table: torch.Tensor) -> tuple[int, int]:
    if states.dim() != 2 or table.dim() != 2 or states.shape[1] != table.shape[1]:
        raise ValueError(
            f"states {tuple(states.shape)} and table {tuple(table.shape)}: expected (N, D) sequence states and "
            f"the (n_items + 1, D) table of RoDPOModel.scoring_table() with the same D."
        )
    if table.shape[0] < 2:
        raise ValueError(f"table has {table.shape[0]} rows: row 0 is padding, so at least one item row must follow.")
    return states.shape[0], table.shape[0] - 1


def _check_ids(name: str, ids: torch.Tensor | None, n_rows: int, ndim: int, low: int, n_items: int,
               device: torch.device) -> torch.Tensor | None:
    """Item ids (n_rows,) or (n_rows, L) as int64 on `device`, checked to lie in low..n_items (one host sync)."""
    if ids is None:
        return None
    if ids.dim() != ndim or ids.shape[0] != n_rows or ids.dtype.is_floating_point or ids.dtype == torch.bool:
        expected = f"({n_rows},)" if ndim == 1 else f"({n_rows}, L)"
        raise ValueError(f"{name}: expected integer item ids of shape {expected}, got {ids.dtype} "
                         f"{tuple(ids.shape)}.")
    ids = ids.to(device=device, dtype=torch.long)
    if ids.numel() and bool(((ids < low) | (ids > n_items)).any()):
        raise ValueError(
            f"{name}: item ids must be in {low}..{n_items}" + (" (0 = padding)" if low == 0 else "")
            + f", got min {int(ids.min())}, max {int(ids.max())}; check the item id mapping."
        )
    return ids


def _exclusion_ids(n_rows: int, n_items: int, exclude_ids: torch.Tensor | None,
                   exclude_targets: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    """One (N, L') id tensor of everything a row leaves out (0 = nothing), or None."""
    exclude_ids = _check_ids("exclude_ids", exclude_ids, n_rows, 2, 0, n_items, device)
    exclude_targets = _check_ids("exclude_targets", exclude_targets, n_rows, 1, 0, n_items, device)
    parts = [ids for ids in (exclude_ids, None if exclude_targets is None else exclude_targets[:, None])
             if ids is not None]
    return torch.cat(parts, dim=1) if parts else None
