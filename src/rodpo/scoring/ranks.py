"""1-based target ranks among all real items (the evaluation's full ranking), in one chunked pass."""

from __future__ import annotations

import torch

from rodpo.scoring.chunks import (
    _aligned,
    _autocast_off,
    _check_ids,
    _check_scoring_inputs,
    _chunks,
    _ChunkWork,
    _count_flags,
    _exclusion_ids,
    _local,
    _matmul_dtype,
    _scores,
    resolve_chunk_items,
)
from rodpo.scoring.top_k import TopKPool


def target_ranks(states: torch.Tensor, table: torch.Tensor, targets: torch.Tensor, *,
                 exclude_ids: torch.Tensor | None = None, chunk_items: int | str = "auto") -> torch.Tensor:
    """1-based rank (N,) int64 of each target among the real items, as rodpo.metrics.target_ranks.

    rank = 1 + #{j in 1..n_items, j != target, j not in exclude_ids[row] (N, L, 0-padded):
    s_j >= s_target or s_j is NaN}; a NaN target gets the worst rank (the number of candidates).
    Float guarantee: s_target is the target's own entry of the chunk matmul that holds it, and
    every s_j comes from its chunk matmul of the same call, so the ranks are exact for that one
    score matrix (counts run against a separate matmul of the target rows first and are redone in
    full if any row's value differs in any bit). Against dense ranks (one (N, n_items+1) matmul):
    equal wherever no competitor's score lies within float rounding (~1e-6 relative) of the
    target's; exact for data whose products and sums are exact (small integers, dyadic values).
    Identical table rows tie exactly when the BLAS scores a column independently of its position
    and of the matmul width (widths are multiples of SCORE_ALIGN for this); tested for MKL on x86.
    """
    return ranks_and_top_k(states, table, targets, [exclude_ids], chunk_items=chunk_items)[0][0]


def target_ranks_unmasked_and_masked(states: torch.Tensor, table: torch.Tensor, targets: torch.Tensor,
                                     history_ids: torch.Tensor, *, chunk_items: int | str = "auto"
                                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(ranks with the history rankable, ranks with `history_ids` (N, L) masked) from one pass over
    the catalog: both protocols of the published Beauty numbers (RecBole's keeps history items,
    S3-Rec's / BSARec's masks them) for the price of one. Each equals its own target_ranks call."""
    (unmasked, masked), _ = ranks_and_top_k(states, table, targets, [None, history_ids], chunk_items=chunk_items)
    return unmasked, masked


def ranks_and_top_k(states: torch.Tensor, table: torch.Tensor, targets: torch.Tensor,
                    exclusions: list[torch.Tensor | None], *, top_k: int | None = None,
                    chunk_items: int | str = "auto"
                    ) -> tuple[list[torch.Tensor], tuple[torch.Tensor, torch.Tensor] | None]:
    """target_ranks for each exclusion set (None = the target alone excluded), sharing the chunk
    matmuls, and with `top_k` the k best items other than the target, (scores, ids) as
    `top_k_items(..., exclude_targets=targets)` returns them: the evaluation's ranks and Figure 4's
    negative pool from one pass over the catalog."""
    n_rows, n_items = _check_scoring_inputs(states, table)
    targets = _check_ids("targets", targets, n_rows, 1, 1, n_items, states.device)
    excluded = [_exclusion_ids(n_rows, n_items, ids, targets, states.device) if ids is not None else None
                for ids in exclusions]
    width = resolve_chunk_items(chunk_items, n_rows, n_items, states.device)
    dtype = _matmul_dtype(states, table)
    pool = None if top_k is None else TopKPool(n_rows, n_items, top_k, dtype, states.device,
                                               exclude_targets=targets)
    with torch.no_grad(), _autocast_off(states.device):
        states_c = states.to(dtype)
        provisional = _target_scores(states_c, table, targets, width, dtype)
        counts, own = _count_beating(states_c, table, targets, provisional, excluded, width, dtype, pool)
        same = (own == provisional) | (own.isnan() & provisional.isnan())
        if not bool(same.all()):
            counts, _ = _count_beating(states_c, table, targets, own, excluded, width, dtype)
    return [count + 1 for count in counts], None if pool is None else pool.result()


def _target_scores(states: torch.Tensor, table: torch.Tensor, targets: torch.Tensor, width: int,
                   dtype: torch.dtype) -> torch.Tensor:
    """s(x, target) (N,) from chunk-like matmuls (N, D) x (D, SCORE_ALIGN multiple): target rows as columns."""
    n_rows = states.shape[0]
    out = torch.empty(n_rows, dtype=torch.promote_types(dtype, torch.float32), device=states.device)
    group = _aligned(max(1, min(n_rows, width)))
    for first in range(0, n_rows, group):
        rows = slice(first, min(first + group, n_rows))
        out[rows] = _scores(states, table[targets[rows]], dtype)[rows].diagonal()
    return out


def _count_beating(states: torch.Tensor, table: torch.Tensor, targets: torch.Tensor, target_scores: torch.Tensor,
                   exclusions: list[torch.Tensor | None], width: int, dtype: torch.dtype,
                   pool: TopKPool | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Per exclusion set, per row: competitors j with not (s_j < target_scores), i.e. >= or NaN on
    either side; and the target's own score from its chunk. An exclusion (N, L') must contain the
    target; None excludes the target alone. `pool` is fed each chunk's scores once counted."""
    n_items = table.shape[0] - 1
    counts = [torch.zeros(states.shape[0], dtype=torch.long, device=states.device) for _ in exclusions]
    own = target_scores.clone()
    work = _ChunkWork(states.shape[0], width, dtype, states.device)
    for chunk in _chunks(n_items, width):
        fresh, stop = chunk.fresh, chunk.stop
        scores = work.scores(states, table, chunk)
        local, inside = _local(targets, fresh, stop)
        own = torch.where(inside, scores.gather(1, local[:, None]).squeeze(1), own)
        flags = work.flags(stop - fresh)  # 1.0 = not beating the target: s_j < s_target, or left out
        for count, excluded in zip(counts, exclusions):
            torch.lt(scores, target_scores[:, None], out=flags[:, :stop - fresh])
            if excluded is not None:
                excluded_local, excluded_inside = _local(excluded, fresh, stop)
                flags.scatter_(1, torch.where(excluded_inside, excluded_local, stop - fresh), 1.0)  # spare column
                count += (stop - fresh) - _count_flags(flags[:, :stop - fresh])
            else:  # the target itself sits among the "beating" columns of its chunk: take it off
                count += (stop - fresh) - _count_flags(flags[:, :stop - fresh]) - inside.long()
        if pool is not None:
            pool.add(scores, chunk, overwrite=True)  # last use of this chunk's scores
    return counts, own
