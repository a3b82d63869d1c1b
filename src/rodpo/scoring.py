"""The scoring core: sequence states (N, D) against the item table (n_items + 1, D), streamed in chunks.

s(x, i) = states[x] . table[i] (Eq. 3, with `RoDPOModel.scoring_table()`); row 0 of the table is
padding and never a candidate. Training (CE, negatives), evaluation (target ranks) and
recommendation (top-N) all score through here, so no caller builds an (N, n_items) tensor: the
catalog is visited `chunk_items` items at a time and peak extra memory is O(N * chunk_items).

Scores are matmuls in the autocast dtype when autocast is on (else the inputs' promoted dtype),
reduced in fp32 (fp64 for fp64 inputs). Every matmul is a multiple of SCORE_ALIGN items wide (a
short last chunk is filled with zero rows): BLAS kernels treat narrow or ragged widths
differently, and an item's score must not depend on where it falls. Deterministic tie rule everywhere: equal scores -> lower item id first; NaN ranks above
+inf (as in torch.topk); an item scored -inf is never returned.
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Iterator
from typing import NamedTuple

import torch
from torch.autograd.function import once_differentiable

AUTO_CHUNK_BYTES = 256 * 2**20  # "auto": fp32 logits per chunk (CPU; also the cap on CUDA)
AUTO_CUDA_FREE_FRACTION = 1 / 8  # "auto" on CUDA: a chunk's logits may take this share of free memory
SCORE_ALIGN = 64  # matmul widths are multiples of this; chunks of at least this are rounded down to one
LOGIT_BYTES = 4  # fp32 working logits
KERNEL_IMPL = "cce_exact"  # cut-cross-entropy without gradient filtering: the exact gradient
REDUCTIONS = ("mean", "none")
BACKENDS = ("auto", "chunked", "kernel")


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


# --------------------------------------------------------------------------------- cross-entropy
@functools.cache
def _kernel_cross_entropy():
    try:
        from cut_cross_entropy import linear_cross_entropy
    except ImportError:
        return None
    return linear_cross_entropy


def cross_entropy_backend(device: str | torch.device) -> str:
    """'kernel' (Apple's cut-cross-entropy, CUDA only, when installed) or 'chunked' (pure torch)."""
    return "kernel" if torch.device(device).type == "cuda" and _kernel_cross_entropy() is not None else "chunked"


def chunked_cross_entropy(states: torch.Tensor, table: torch.Tensor, targets: torch.Tensor, *,
                          chunk_items: int | str = "auto", reduction: str = "mean",
                          backend: str = "auto") -> torch.Tensor:
    """Softmax cross-entropy of the target over all real items 1..n_items, never the dense logits.

    Equals F.cross_entropy(states @ table.T with column 0 = -inf, targets) in value and in gradient
    (wrt states and table, both may require grad), in fp32 for half inputs. reduction 'mean' gives
    a scalar, 'none' the (N,) per-row losses. backend 'auto' takes the cut-cross-entropy kernel on
    CUDA when installed (untested on hardware here), else the chunked autograd Function below.
    """
    n_rows, n_items = _check_scoring_inputs(states, table)
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction={reduction!r}: expected one of {REDUCTIONS}.")
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}: expected one of {BACKENDS}.")
    targets = _check_ids("targets", targets, n_rows, 1, 1, n_items, states.device)
    if backend == "auto":
        backend = cross_entropy_backend(states.device)
    if backend == "kernel":
        kernel = _kernel_cross_entropy()
        if kernel is None or states.device.type != "cuda":
            raise ValueError("backend='kernel' needs the cut_cross_entropy package and CUDA tensors; "
                             "use backend='auto' or 'chunked'.")
        return _kernel_loss(kernel, states, table, targets, reduction)
    width = resolve_chunk_items(chunk_items, n_rows, n_items, states.device)
    return _ChunkedCrossEntropy.apply(states, table, targets, width, reduction)


def _kernel_loss(kernel, states: torch.Tensor, table: torch.Tensor, targets: torch.Tensor,
                 reduction: str) -> torch.Tensor:
    """Row 0 (padding) is left out of the kernel's classifier, so its class c is item c + 1."""
    dtype = _matmul_dtype(states, table)
    return kernel(states.to(dtype), table[1:].to(dtype), targets - 1, reduction=reduction, impl=KERNEL_IMPL)


class _ChunkedCrossEntropy(torch.autograd.Function):
    """CE over item chunks. Forward keeps per-row log-sum-exp and target logit only; backward
    recomputes each chunk's logits: d loss / d logits = (softmax - onehot(target)) * grad_out (/ N).
    When the whole catalog fits in one chunk (width >= n_items), forward keeps its logits instead
    (the same memory bound; SCORE_ALIGN rounding may split it in two), no recompute."""

    @staticmethod
    def forward(ctx, states, table, targets, width, reduction):
        n_rows, n_items = states.shape[0], table.shape[0] - 1
        dtype = _matmul_dtype(states, table)
        reduce_dtype = torch.promote_types(dtype, torch.float32)
        keep_logits = width >= n_items and any(ctx.needs_input_grad[:2])
        lse = torch.full((n_rows,), float("-inf"), dtype=reduce_dtype, device=states.device)
        target_logit = torch.zeros_like(lse)
        kept = []
        with _autocast_off(states.device):
            states_c = states.to(dtype)
            for chunk in _chunks(n_items, width):
                logits = _chunk_scores(states_c, table, chunk, dtype)  # (N, stop - fresh)
                lse = torch.logaddexp(lse, torch.logsumexp(logits, dim=1))
                local, inside = _local(targets, chunk.fresh, chunk.stop)
                target_logit = torch.where(inside, logits.gather(1, local[:, None]).squeeze(1), target_logit)
                if keep_logits:
                    kept.append(logits)
        ctx.save_for_backward(states, table, targets, lse, *kept)
        ctx.width, ctx.reduction, ctx.dtype = width, reduction, dtype
        losses = lse - target_logit
        return losses.mean() if reduction == "mean" else losses

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        states, table, targets, lse, *kept = ctx.saved_tensors
        n_rows, n_items = states.shape[0], table.shape[0] - 1
        need_states, need_table = ctx.needs_input_grad[:2]
        row_scale = grad_output.to(lse.dtype).expand(n_rows)  # (N,) d loss / d loss_row
        if ctx.reduction == "mean":
            row_scale = row_scale / n_rows
        grad_states = torch.zeros(states.shape, dtype=lse.dtype, device=states.device) if need_states else None
        grad_table = torch.zeros_like(table) if need_table else None  # row 0 (padding) keeps 0
        with _autocast_off(states.device):
            states_c = states.to(ctx.dtype)
            for index, chunk in enumerate(_chunks(n_items, ctx.width)):
                fresh, stop = chunk.fresh, chunk.stop
                logits = kept[index] if kept else _chunk_scores(states_c, table, chunk, ctx.dtype)
                grad_logits = (logits - lse[:, None]).exp_().mul_(row_scale[:, None])  # softmax * scale
                local, inside = _local(targets, fresh, stop)
                grad_logits.scatter_add_(1, local[:, None], (-row_scale * inside)[:, None])  # - onehot * scale
                grad_logits = grad_logits.to(ctx.dtype)
                if need_states:
                    grad_states.add_(grad_logits @ table[fresh:stop].to(ctx.dtype))
                if need_table:
                    grad_table[fresh:stop] = grad_logits.T @ states_c
        grad_states = grad_states.to(states.dtype) if need_states else None
        return grad_states, grad_table, None, None, None


# ------------------------------------------------------------------------------- top-K and ranks
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
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise ValueError(f"k={k!r}: expected an integer >= 1 (items kept per row).")
    excluded = _exclusion_ids(n_rows, n_items, exclude_ids, exclude_targets, states.device)
    width = resolve_chunk_items(chunk_items, n_rows, n_items, states.device)
    dtype = _matmul_dtype(states, table)
    best_scores = torch.full((n_rows, k), float("-inf"), dtype=torch.promote_types(dtype, torch.float32),
                             device=states.device)
    best_items = torch.zeros(n_rows, k, dtype=torch.long, device=states.device)
    with torch.no_grad(), _autocast_off(states.device):
        states_c = states.to(dtype)
        for chunk in _chunks(n_items, width):
            scores = _chunk_scores(states_c, table, chunk, dtype)
            if excluded is not None:
                scores = scores.masked_fill(_id_mask(excluded, chunk.fresh, chunk.stop), float("-inf"))
            chunk_scores, chunk_columns = _chunk_top_k(scores, k)
            best_scores, best_items = _merge_top_k(best_scores, best_items, chunk_scores, chunk_columns + chunk.fresh,
                                                   k)
    return best_scores, best_items.masked_fill(best_scores == float("-inf"), 0)


def _exclusion_ids(n_rows: int, n_items: int, exclude_ids: torch.Tensor | None,
                   exclude_targets: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    """One (N, L') id tensor of everything a row leaves out (0 = nothing), or None."""
    exclude_ids = _check_ids("exclude_ids", exclude_ids, n_rows, 2, 0, n_items, device)
    exclude_targets = _check_ids("exclude_targets", exclude_targets, n_rows, 1, 0, n_items, device)
    parts = [ids for ids in (exclude_ids, None if exclude_targets is None else exclude_targets[:, None])
             if ids is not None]
    return torch.cat(parts, dim=1) if parts else None


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
    return _ranks(states, table, targets, [exclude_ids], chunk_items)[0]


def target_ranks_unmasked_and_masked(states: torch.Tensor, table: torch.Tensor, targets: torch.Tensor,
                                     history_ids: torch.Tensor, *, chunk_items: int | str = "auto"
                                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(ranks with the history rankable, ranks with `history_ids` (N, L) masked) from one pass over
    the catalog: both protocols of the published Beauty numbers (RecBole's keeps history items,
    S3-Rec's / BSARec's masks them) for the price of one. Each equals its own target_ranks call."""
    unmasked, masked = _ranks(states, table, targets, [None, history_ids], chunk_items)
    return unmasked, masked


def _ranks(states: torch.Tensor, table: torch.Tensor, targets: torch.Tensor,
           exclusions: list[torch.Tensor | None], chunk_items: int | str) -> list[torch.Tensor]:
    """target_ranks for each exclusion set (None = nothing excluded), sharing the chunk matmuls."""
    n_rows, n_items = _check_scoring_inputs(states, table)
    targets = _check_ids("targets", targets, n_rows, 1, 1, n_items, states.device)
    excluded = [_exclusion_ids(n_rows, n_items, ids, targets, states.device) if ids is not None else None
                for ids in exclusions]
    width = resolve_chunk_items(chunk_items, n_rows, n_items, states.device)
    dtype = _matmul_dtype(states, table)
    with torch.no_grad(), _autocast_off(states.device):
        states_c = states.to(dtype)
        provisional = _target_scores(states_c, table, targets, width, dtype)
        counts, own = _count_beating(states_c, table, targets, provisional, excluded, width, dtype)
        same = (own == provisional) | (own.isnan() & provisional.isnan())
        if not bool(same.all()):
            counts, _ = _count_beating(states_c, table, targets, own, excluded, width, dtype)
    return [count + 1 for count in counts]


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
                   exclusions: list[torch.Tensor | None], width: int, dtype: torch.dtype
                   ) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Per exclusion set, per row: competitors j with not (s_j < target_scores), i.e. >= or NaN on
    either side; and the target's own score from its chunk. An exclusion (N, L') must contain the
    target; None excludes the target alone."""
    n_items = table.shape[0] - 1
    counts = [torch.zeros(states.shape[0], dtype=torch.long, device=states.device) for _ in exclusions]
    own = target_scores.clone()
    for chunk in _chunks(n_items, width):
        fresh, stop = chunk.fresh, chunk.stop
        scores = _chunk_scores(states, table, chunk, dtype)
        local, inside = _local(targets, fresh, stop)
        own = torch.where(inside, scores.gather(1, local[:, None]).squeeze(1), own)
        not_beating = scores < target_scores[:, None]
        for count, excluded in zip(counts, exclusions):
            if excluded is not None:
                count += (stop - fresh) - (not_beating | _id_mask(excluded, fresh, stop)).sum(dim=1)
            else:  # the target itself sits among the "beating" columns of its chunk: take it off
                count += (stop - fresh) - not_beating.sum(dim=1) - inside.long()
    return counts, own


# ---------------------------------------------------------------------------------------- pools
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
