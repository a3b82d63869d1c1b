"""Batched full-ranking evaluation of a next-item model (RecBole's protocol) and the logit samples
behind the paper's Figure 4: the ranking loop that training (validation) and evaluation share.

Every real item is ranked (no sampled candidates), ties count against the target, and the user's
history is NOT masked unless asked (RecBole's sequential default, used by the paper).
Scores are computed in fp32 even on GPU: half-precision logits would create ties that cost the
target rank positions.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from rodpo.devices import resolve_device
from rodpo.distributed import SINGLE_PROCESS, DistributedContext, all_gather_rows
from rodpo.metrics import DEFAULT_KS, ranking_metrics
from rodpo.scoring import draw_from_pool, ranks_and_top_k
from rodpo.sequences import EvalSequences, trim_to_longest

DEFAULT_EVAL_BATCH_SIZE = 2048


def _device_of(model: nn.Module, device: str | torch.device | None) -> torch.device:
    if device is None:
        return next(model.parameters()).device
    return resolve_device(device) if isinstance(device, str) else torch.device(device)


def state_batches(model: nn.Module, items: np.ndarray, timestamps: np.ndarray, batch_size: int,
                  device: torch.device, rows: np.ndarray | None = None
                  ) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield (row indices, history items (B, L), fp32 last states (B, D), fp32 item table) in eval
    mode, no grad, for right-padded histories `items`/`timestamps` (users, L): the one batching of
    evaluation and recommendation; the scoring core then ranks the states against the table.

    Users (all, or `rows`) are visited by history length so each batch is cut to its own longest
    history (less padding). The table is computed once.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: need at least 1 sequence per batch.")
    rows = np.arange(len(items)) if rows is None else rows
    by_length = rows[np.argsort((items[rows] > 0).sum(axis=1), kind="stable")]
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            table = model.scoring_table().float()
            for start in range(0, len(by_length), batch_size):
                batch = by_length[start:start + batch_size]
                history = torch.from_numpy(items[batch]).to(device)
                times = torch.from_numpy(timestamps[batch]).to(device)
                history, times = trim_to_longest(history, times)
                yield batch, history, model.last_states(history, times).float(), table
    finally:
        model.train(was_training)


def evaluate_model(model: nn.Module, sequences: EvalSequences, *, ks: Sequence[int] = DEFAULT_KS,
                   batch_size: int = DEFAULT_EVAL_BATCH_SIZE, device: str | torch.device | None = None,
                   mask_history: bool = False, chunk_items: int | str = "auto",
                   context: DistributedContext = SINGLE_PROCESS, logit_sample_k: int | None = None,
                   seed: int = 0, with_history_masked: bool = False) -> dict:
    """Full-ranking NDCG/MRR/Hit@K over all users of a valid or test split.

    Returns {"metrics": {"ndcg@10": ...}, "ranks": (N,) int64 1-based, "user_ids": (N,)} and, with
    `logit_sample_k`, "logit_samples" (Figure 4) from the same pass. `mask_history` removes the
    (last max_seq_len) history items from the ranking; `with_history_masked` adds
    "ranks_history_masked" / "metrics_history_masked" (that protocol) from the same pass. Ranks are exact counts (rodpo.scoring), the
    same for every batch and chunk size; in a distributed run each rank scores every
    world_size-th user and the ranks are gathered.
    """
    device = _device_of(model, device)
    model.to(device)
    n_users = len(sequences.targets)
    mine = np.arange(context.rank, n_users, context.world_size)
    ranks = np.zeros(n_users, dtype=np.int64)
    masked_ranks = np.zeros(n_users, dtype=np.int64)
    samples = {"positive": np.zeros(n_users, dtype=np.float32), "negative": np.zeros(n_users, dtype=np.float32)}
    generator = torch.Generator(device=device).manual_seed(seed) if logit_sample_k else None
    all_targets = torch.from_numpy(sequences.targets)
    for rows, items, states, table in state_batches(model, sequences.items, sequences.timestamps, batch_size,
                                                    device, mine):
        targets = all_targets[rows].to(device)
        # the reported protocol first; the masked one once more only if it is not already that one
        exclusions = [items if mask_history else None] + ([items] if with_history_masked and not mask_history else [])
        found, pool = ranks_and_top_k(states, table, targets, exclusions, top_k=logit_sample_k or None,
                                      chunk_items=chunk_items)
        ranks[rows] = found[0].cpu().numpy()
        if with_history_masked:
            masked_ranks[rows] = found[-1].cpu().numpy()
        if logit_sample_k:
            positive, negative = _logit_pair(states, table, targets, pool[1], generator)
            samples["positive"][rows], samples["negative"][rows] = positive, negative
    if context.enabled:
        ranks = _gathered(ranks, mine, context)
        masked_ranks = _gathered(masked_ranks, mine, context) if with_history_masked else masked_ranks
        samples = {name: _gathered(values, mine, context) for name, values in samples.items()}
    result = {"metrics": ranking_metrics(ranks, ks), "ranks": ranks, "user_ids": sequences.user_ids}
    if with_history_masked:
        result.update(metrics_history_masked=ranking_metrics(masked_ranks, ks), ranks_history_masked=masked_ranks)
    if logit_sample_k:
        result["logit_samples"] = samples
    return result


def _gathered(values: np.ndarray, mine: np.ndarray, context: DistributedContext) -> np.ndarray:
    """Every rank's entries of `values` (each rank filled the rows of `mine`), on every rank."""
    as_float = torch.from_numpy(values[mine].astype(np.float64))
    full = np.zeros_like(values)
    for rank, part in enumerate(all_gather_rows(as_float, context)):
        full[np.arange(rank, len(values), context.world_size)] = part.numpy().astype(values.dtype)
    return full


def _logit_pair(states: torch.Tensor, table: torch.Tensor, targets: torch.Tensor, pool: torch.Tensor,
                generator: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The positive's score and one top-K-uniform negative's (Eq. 4, from the rank pass's pool) per row."""
    negatives = draw_from_pool(pool, pool > 0, 1, generator).squeeze(1)
    positive = (states * table[targets]).sum(dim=1)
    negative = (states * table[negatives]).sum(dim=1)
    return positive.cpu().numpy(), negative.cpu().numpy()


def collect_logit_samples(model: nn.Module, sequences: EvalSequences, *, k: int = 50, seed: int = 0,
                          batch_size: int = DEFAULT_EVAL_BATCH_SIZE, device: str | torch.device | None = None,
                          chunk_items: int | str = "auto") -> dict[str, np.ndarray]:
    """Test-time logits of each user's positive and of one negative drawn by the stochastic top-K
    sampler (Eq. 4) from the same scores: the two distributions of the paper's Figure 4."""
    return evaluate_model(model, sequences, batch_size=batch_size, device=device, chunk_items=chunk_items,
                          logit_sample_k=k, seed=seed)["logit_samples"]
