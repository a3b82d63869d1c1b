"""The losers y_l of stage 2: the top-K pool of Eq. 4 and the paper's ablations (argmax, random), and
what `rodpo.dpo.exclude_from_pool` leaves out of a pool. A training step takes the pool from its CE
pass (`rodpo.scoring.cross_entropy_and_top_k`) and draws with `draw_negatives`."""

from __future__ import annotations

import torch

from rodpo.scoring import draw_from_pool, top_k_items

NEGATIVE_STRATEGIES = ("topk_uniform", "argmax", "random")
# What `rodpo.dpo.exclude_from_pool` leaves out of a target's negative pool, besides the positive:
# none (the paper), earlier_items (the items before the target in its training window: what the
# user had interacted with at that step), window_items (the whole window, later targets included).
POOL_EXCLUSIONS = ("none", "earlier_items", "window_items")
MAX_REJECTION_ROUNDS = 200


def sample_negatives(states: torch.Tensor, table: torch.Tensor, positives: torch.Tensor,
                     strategy: str = "topk_uniform", k: int = 50, generator: torch.Generator | None = None, *,
                     exclude_ids: torch.Tensor | None = None, n_negatives: int = 1,
                     chunk_items: int | str = "auto") -> torch.Tensor:
    """M = `n_negatives` distinct losing items y_l per row (N, M), never the positive nor padding (0).

    Scores are the policy's s(x, i) = states (N, D) . table[i] (scoring core, chunked: no dense logits).
    topk_uniform: y_l ~ U(TopK({s(x, i) : i != y_w}, K))  (Eq. 4, RoDPO's stochastic top-K);
    argmax:       the best-scored non-positive item (hard negative ablation; M = 1);
    random:       uniform over all real items except the positive (random ablation).
    `exclude_ids` (N, L) item ids, 0-padded, leave more items out of every strategy's pool (see
    `pool_exclusions`; none in the paper). `generator` must live on the states' device. A training
    step gets the pool from its CE pass instead (`rodpo.scoring.cross_entropy_and_top_k`) and calls
    `draw_negatives`: the same losers for the same generator state.
    """
    size = pool_size(strategy, k)
    pool = None
    if size is not None:
        _, pool = top_k_items(states.detach(), table.detach(), size, exclude_targets=positives.view(-1),
                              exclude_ids=exclude_ids, chunk_items=chunk_items)  # (N, K), 0 = no item left
    return draw_negatives(strategy, pool, positives, table.shape[0] - 1, generator, exclude_ids=exclude_ids,
                          n_negatives=n_negatives)


def pool_size(strategy: str, k: int) -> int | None:
    """K of the top-K pool `strategy` draws from (argmax: 1); None for random, which needs no scores."""
    _check_strategy(strategy)
    return None if strategy == "random" else 1 if strategy == "argmax" else k


def draw_negatives(strategy: str, pool: torch.Tensor | None, positives: torch.Tensor, n_items: int,
                   generator: torch.Generator | None = None, *, exclude_ids: torch.Tensor | None = None,
                   n_negatives: int = 1) -> torch.Tensor:
    """The losers (N, M) of `sample_negatives` from an already scored pool: `pool` (N, pool_size)
    item ids best first, 0 = no item left, which excludes the positives and `exclude_ids` (None for
    random, which draws from all n_items items but those)."""
    _check_strategy(strategy)
    positives = positives.view(-1)
    if strategy == "random":
        return _uniform_negatives(positives, n_items, n_negatives, generator, exclude_ids)
    if strategy == "argmax":
        if bool((pool[:, 0] == 0).any()):
            raise ValueError("sample_negatives: a row has no candidate negative left (every item is the positive, "
                             "padding or excluded); set rodpo.dpo.exclude_from_pool=none.")
        return pool[:, :1]
    return draw_from_pool(pool, pool > 0, n_negatives, generator)


def _check_strategy(strategy: str) -> None:
    if strategy not in NEGATIVE_STRATEGIES:
        raise ValueError(f"sample_negatives: strategy={strategy!r}, expected one of {NEGATIVE_STRATEGIES}.")


def _uniform_negatives(positives: torch.Tensor, n_items: int, m: int, generator: torch.Generator | None,
                       exclude_ids: torch.Tensor | None) -> torch.Tensor:
    """(N, m) distinct items uniform over 1..n_items minus the positive (and `exclude_ids`), by
    rejection: slots that hit a forbidden item or repeat an earlier slot are drawn again."""
    forbidden = positives.view(-1, 1)
    if exclude_ids is not None:
        forbidden = torch.cat([forbidden, exclude_ids.to(positives.device)], dim=1)
    shape = (positives.shape[0], m)
    draws = torch.randint(1, n_items + 1, shape, generator=generator, device=positives.device)
    for _ in range(MAX_REJECTION_ROUNDS):
        clash = (draws[:, :, None] == forbidden[:, None, :]).any(dim=2)
        repeated = (draws[:, :, None] == draws[:, None, :]).tril(diagonal=-1).any(dim=2)  # an earlier slot has it
        redraw = clash | repeated
        if not bool(redraw.any()):
            return draws
        fresh = torch.randint(1, n_items + 1, shape, generator=generator, device=positives.device)
        draws = torch.where(redraw, fresh, draws)
    raise ValueError(f"sample_negatives: could not draw {m} distinct random negatives per row in "
                     f"{MAX_REJECTION_ROUNDS} rounds; the catalog of {n_items} items is too small once the positive "
                     "and the excluded items are left out. Lower rodpo.dpo.n_negatives or set "
                     "rodpo.dpo.exclude_from_pool=none.")


def pool_exclusions(windows: torch.Tensor, is_target: torch.Tensor, exclude_from_pool: str) -> torch.Tensor | None:
    """Item ids (N, L + 1), 0-padded, that each target leaves out of its negative pool; None for "none".

    `windows` (B, L + 1) are right-padded training windows; `is_target` (B, L) marks their real
    targets (window position t + 1), and the N targets are taken in its row-major order, as the
    trainer gathers them. earlier_items: the window's items at positions 0..t, i.e. the input
    sequence the model saw before predicting this target (older items of a user whose sequence was
    cut into several windows are not in it); window_items: every item of the window, later targets
    included.
    """
    if exclude_from_pool not in POOL_EXCLUSIONS:
        raise ValueError(f"rodpo.dpo.exclude_from_pool={exclude_from_pool!r}: expected one of {POOL_EXCLUSIONS}.")
    if exclude_from_pool == "none":
        return None
    window_of_target = torch.arange(windows.shape[0], device=windows.device)[:, None].expand_as(is_target)[is_target]
    excluded = windows[window_of_target]  # (N, L + 1)
    if exclude_from_pool == "earlier_items":
        position = torch.arange(is_target.shape[1], device=windows.device).expand_as(is_target)[is_target]  # t, (N,)
        later = torch.arange(windows.shape[1], device=windows.device)[None, :] > position[:, None]
        excluded = excluded.masked_fill(later, 0)
    return excluded
