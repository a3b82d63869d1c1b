"""Full-ranking evaluation metrics for next-item prediction (paper Eq. 7 and 8).

Every real item (ids 1..n_items) is a candidate; column 0 is padding. Ties count against the
target, so a collapsed model (all scores equal) gets the worst rank instead of a lucky one.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

DEFAULT_KS: tuple[int, ...] = (5, 10, 20)
METRIC_NAMES: tuple[str, ...] = ("ndcg", "mrr", "hit")
HISTORY_MASKED = ":masked"   # "ndcg@5:masked": the metric with the user's history left out of the ranking


def history_masked(metric: str) -> str:
    """The key of `metric` under the masked protocol (S3-Rec's / BSARec's lineage of Beauty numbers)."""
    return f"{metric}{HISTORY_MASKED}"


def target_ranks(
    scores: torch.Tensor,
    targets: torch.Tensor,
    exclude: torch.Tensor | None = None,
) -> torch.Tensor:
    """1-based rank of each target among all real items, ties and NaNs counted against it.

    rank = 1 + #{j : j != target, j != 0, not exclude[j], scores[j] >= scores[target] or NaN}.
    A NaN target score gets the worst rank (the number of candidate items). ``exclude`` drops
    items from the ranking (history masking) but never the target itself.

    Args:
        scores: (batch, n_items + 1) item scores; column 0 is padding.
        targets: (batch,) target item ids in 1..n_items.
        exclude: optional (batch, n_items + 1) bool mask of items to leave out of the ranking.

    Returns:
        (batch,) int64 ranks on the device of ``scores``.
    """
    if scores.dim() != 2:
        raise ValueError(
            f"scores: expected shape (batch, n_items + 1), got {tuple(scores.shape)}; "
            "score every item for every user (full ranking)."
        )
    batch, n_columns = scores.shape
    if targets.shape != (batch,):
        raise ValueError(
            f"targets: expected shape ({batch},) to match scores {tuple(scores.shape)}, "
            f"got {tuple(targets.shape)}; pass one target item id per user."
        )
    targets = targets.to(device=scores.device, dtype=torch.long)
    if batch and bool(((targets < 1) | (targets >= n_columns)).any()):
        raise ValueError(
            f"targets: item ids must be in 1..{n_columns - 1} (0 is padding), got min "
            f"{int(targets.min())}, max {int(targets.max())}; check the item id mapping."
        )
    if exclude is not None:
        if exclude.shape != scores.shape or exclude.dtype != torch.bool:
            raise ValueError(
                f"exclude: expected a bool tensor of shape {tuple(scores.shape)}, got "
                f"{exclude.dtype} {tuple(exclude.shape)}; build it with history_exclusion_mask."
            )

    target_scores = scores.gather(1, targets.unsqueeze(1))  # (batch, 1)
    # NaN anywhere must not help the target: NaN competitors beat it, a NaN target loses to all.
    beats_target = (scores >= target_scores) | scores.isnan() | target_scores.isnan()
    beats_target[:, 0] = False  # padding column is never a candidate
    if exclude is not None:
        beats_target &= ~exclude.to(scores.device)
    beats_target.scatter_(1, targets.unsqueeze(1), False)  # the target does not beat itself
    return beats_target.sum(dim=1) + 1


def history_exclusion_mask(histories: torch.Tensor, n_items: int) -> torch.Tensor:
    """Bool mask (batch, n_items + 1) marking the items in each 0-padded history.

    Pass it as ``exclude`` to ``target_ranks`` to rank only items the user has not seen.
    """
    if histories.dim() != 2:
        raise ValueError(
            "histories: expected shape (batch, seq_len) padded with 0, "
            f"got {tuple(histories.shape)}."
        )
    histories = histories.long()
    if histories.numel() and bool(((histories < 0) | (histories > n_items)).any()):
        raise ValueError(
            f"histories: item ids must be in 0..{n_items} (0 = padding), got min "
            f"{int(histories.min())}, max {int(histories.max())}; is n_items={n_items} right?"
        )
    mask = torch.zeros(histories.shape[0], n_items + 1, dtype=torch.bool, device=histories.device)
    mask.scatter_(1, histories, True)
    mask[:, 0] = False
    return mask


def _as_rank_array(ranks: np.ndarray | torch.Tensor | Sequence[int]) -> np.ndarray:
    if isinstance(ranks, torch.Tensor):
        ranks = ranks.detach().cpu().numpy()
    ranks = np.asarray(ranks)
    if ranks.ndim != 1 or ranks.size == 0:
        raise ValueError(
            f"ranks: expected a non-empty 1-D array (one rank per user), got shape {ranks.shape}."
        )
    numeric = np.issubdtype(ranks.dtype, np.number)
    if not numeric or not np.all(np.isfinite(ranks)) or ranks.min() < 1:
        raise ValueError(
            "ranks: expected finite 1-based ranks (>= 1); compute them with target_ranks."
        )
    return ranks.astype(np.float64)


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    ks = tuple(ks)
    if not ks or any(isinstance(k, bool) or int(k) != k or k < 1 for k in ks):
        raise ValueError(f"ks: expected positive integer cut-offs such as (5, 10), got {ks}.")
    return tuple(int(k) for k in ks)


def per_user_metrics(
    ranks: np.ndarray | torch.Tensor | Sequence[int], ks: Sequence[int] = DEFAULT_KS
) -> dict[str, np.ndarray]:
    """Per-user NDCG@K, MRR@K and Hit@K (float64 arrays), for paired tests and intervals.

    One target per user, so IDCG = 1 and NDCG@K = 1 / log2(rank + 1) when rank <= K, else 0.
    Keys are ordered by metric, then K: "ndcg@5", "ndcg@10", ..., "mrr@5", ..., "hit@5", ...
    """
    ranks = _as_rank_array(ranks)
    ks = _check_ks(ks)
    ndcg = 1.0 / np.log2(ranks + 1.0)
    mrr = 1.0 / ranks
    per_metric = {"ndcg": ndcg, "mrr": mrr, "hit": np.ones_like(ranks)}
    return {
        f"{name}@{k}": np.where(ranks <= k, per_metric[name], 0.0)
        for name in METRIC_NAMES
        for k in ks
    }


def ranking_metrics(
    ranks: np.ndarray | torch.Tensor | Sequence[int], ks: Sequence[int] = DEFAULT_KS
) -> dict[str, float]:
    """NDCG@K, MRR@K and Hit@K averaged over users (paper Eq. 7 and 8), as plain floats."""
    return {key: float(values.mean()) for key, values in per_user_metrics(ranks, ks).items()}
