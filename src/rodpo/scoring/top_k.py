"""The exact top-K items per row, streamed over the catalog, and the uniform draw from a pool."""

from __future__ import annotations

import numbers

import torch

from rodpo.scoring.chunks import (
    _autocast_off,
    _check_scoring_inputs,
    _Chunk,
    _chunks,
    _ChunkWork,
    _exclusion_ids,
    _id_mask,
    _local,
    _matmul_dtype,
    resolve_chunk_items,
)


def top_k_items(states: torch.Tensor, table: torch.Tensor, k: int, *, exclude_targets: torch.Tensor | None = None,
                exclude_ids: torch.Tensor | None = None,
                chunk_items: int | str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """The exact k best-scored real items per row: scores (N, k) and item ids (N, k), best first.

    Never padding, never exclude_targets[row] (N,), never an id of exclude_ids[row] (N, L) padded
    with 0 (the user's history: top-N recommendations; with the positive as target and the items of
    `rodpo.dpo.exclude_from_pool`: the DPO negative pool). Ties: lower item id first; NaN above
    +inf. Rows with fewer than k items left end in item 0 with score -inf (as does any item scored
    -inf). No gradient.
    """
    n_rows, n_items = _check_scoring_inputs(states, table)
    pool = TopKPool(n_rows, n_items, k, _matmul_dtype(states, table), states.device, exclude_ids=exclude_ids,
                    exclude_targets=exclude_targets)
    width = resolve_chunk_items(chunk_items, n_rows, n_items, states.device)
    with torch.no_grad(), _autocast_off(states.device):
        states_c = states.to(pool.dtype)
        work = _ChunkWork(n_rows, width, pool.dtype, states.device)
        for chunk in _chunks(n_items, width):
            pool.add(work.scores(states_c, table, chunk), chunk, overwrite=True)
    return pool.result()


class TopKPool:
    """The running top-k of the chunks scored so far, under the tie rule (see `top_k_items`): any
    pass over the catalog that has each chunk's scores (the CE forward too) can fill it."""

    def __init__(self, n_rows: int, n_items: int, k: int, dtype: torch.dtype, device: torch.device, *,
                 exclude_ids: torch.Tensor | None = None, exclude_targets: torch.Tensor | None = None) -> None:
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
            raise ValueError(f"k={k!r}: expected an integer >= 1 (items kept per row).")
        self.k, self.dtype = int(k), dtype
        self.excluded = _exclusion_ids(n_rows, n_items, exclude_ids, exclude_targets, device)  # (N, L') or None
        self.scores = torch.full((n_rows, self.k), float("-inf"), dtype=torch.promote_types(dtype, torch.float32),
                                 device=device)
        self.items = torch.zeros(n_rows, self.k, dtype=torch.long, device=device)

    def add(self, scores: torch.Tensor, chunk: _Chunk, *, overwrite: bool = False) -> None:
        """Merge one chunk's scores (N, stop - fresh) of items fresh..stop - 1. With `overwrite` the
        excluded items' scores are set to -inf in `scores` itself (no copy); else it is not modified."""
        if self.excluded is not None and overwrite:
            local, inside = _local(self.excluded, chunk.fresh, chunk.stop)
            rows = torch.arange(scores.shape[0], device=scores.device)[:, None].expand_as(local)
            scores.index_put_((rows[inside], local[inside]), scores.new_tensor(float("-inf")))
        elif self.excluded is not None:
            scores = scores.masked_fill(_id_mask(self.excluded, chunk.fresh, chunk.stop), float("-inf"))
        chunk_scores, chunk_columns = _chunk_top_k(scores, self.k)
        self.scores, self.items = _merge_top_k(self.scores, self.items, chunk_scores, chunk_columns + chunk.fresh,
                                               self.k)

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores (N, k) and item ids (N, k), best first; item 0 where no item is left."""
        return self.scores, self.items.masked_fill(self.scores == float("-inf"), 0)


def _chunk_top_k(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k columns of one chunk (N, C) under the tie rule. torch.topk picks arbitrarily among equal
    scores, so rows whose k-th and (k+1)-th scores tie (not at -inf) are redone by a stable sort."""
    if scores.shape[1] <= k:
        columns = torch.arange(scores.shape[1], device=scores.device).expand(scores.shape[0], -1)
        return scores, columns
    values, columns = scores.topk(k + 1, dim=1)
    last, after = values[:, k - 1], values[:, k]
    boundary_tie = ((last == after) | (last.isnan() & after.isnan())) & (last != float("-inf"))
    values, columns = values[:, :k], columns[:, :k]
    if bool(boundary_tie.any()):
        rows = boundary_tie.nonzero().squeeze(1)
        exact_values, exact_columns = scores[rows].sort(dim=1, descending=True, stable=True)
        values[rows], columns[rows] = exact_values[:, :k], exact_columns[:, :k]
    return values, columns


def _merge_top_k(scores_a: torch.Tensor, items_a: torch.Tensor, scores_b: torch.Tensor, items_b: torch.Tensor,
                 k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Best k of two candidate sets (N, *), ordered by score descending, then item id ascending."""
    scores, items = torch.cat([scores_a, scores_b], dim=1), torch.cat([items_a, items_b], dim=1)
    by_id = items.argsort(dim=1)
    scores, items = scores.gather(1, by_id), items.gather(1, by_id)
    order = scores.sort(dim=1, descending=True, stable=True).indices[:, :k]
    return scores.gather(1, order), items.gather(1, order)


def draw_from_pool(pool_items: torch.Tensor, valid: torch.Tensor, m: int,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """(N, m) distinct items per row, uniformly without replacement from the row's valid pool entries.

    The top-m of i.i.d. uniform keys is a uniform random m-subset (Gumbel-top-m with equal weights);
    invalid entries (the positive, padding, excluded items) get key -inf and are never drawn.
    `pool_items` (N, K) int64, `valid` (N, K) bool; `generator` must live on their device.
    """
    if pool_items.dim() != 2 or valid.shape != pool_items.shape or valid.dtype != torch.bool:
        raise ValueError(f"draw_from_pool: expected pool_items (N, K) and a bool valid mask of the same shape, got "
                         f"{tuple(pool_items.shape)} and {valid.dtype} {tuple(valid.shape)}.")
    if m < 1:
        raise ValueError(f"draw_from_pool: m={m}; rodpo.dpo.n_negatives must be >= 1.")
    n_valid = valid.sum(dim=1)  # (N,)
    short = n_valid < m
    if bool(short.any()):
        raise ValueError(f"draw_from_pool: {int(short.sum())} row(s) have fewer than m={m} valid pool items "
                         f"(fewest: {int(n_valid.min())}); lower rodpo.dpo.n_negatives, raise rodpo.dpo.k, or set "
                         "rodpo.dpo.exclude_from_pool=none.")
    keys = torch.rand(pool_items.shape, generator=generator, device=pool_items.device)
    keys = keys.masked_fill(~valid, float("-inf"))
    picked = keys.topk(m, dim=1).indices  # (N, m) positions in the pool
    return pool_items.gather(1, picked)
