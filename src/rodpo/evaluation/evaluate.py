"""Batched full-ranking evaluation of a next-item model (RecBole's protocol) and the logit samples
behind the paper's Figure 4.

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
from rodpo.evaluation.metrics import DEFAULT_KS, history_exclusion_mask, ranking_metrics, target_ranks
from rodpo.training.batching import EvalSequences, trim_to_longest
from rodpo.training.dpo import sample_negatives

DEFAULT_EVAL_BATCH_SIZE = 2048


def _device_of(model: nn.Module, device: str | torch.device | None) -> torch.device:
    if device is None:
        return next(model.parameters()).device
    return resolve_device(device) if isinstance(device, str) else torch.device(device)


def _scored_batches(model: nn.Module, sequences: EvalSequences, batch_size: int,
                    device: torch.device) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield (row indices, history items (B, L), targets (B,), scores (B, n_items+1)) in eval mode, no grad.

    Users are visited by history length so each batch is cut to its own longest history (less padding).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: need at least 1 sequence per batch.")
    by_length = np.argsort((sequences.items > 0).sum(axis=1), kind="stable")
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(by_length), batch_size):
                rows = by_length[start:start + batch_size]
                items = torch.from_numpy(sequences.items[rows]).to(device)
                timestamps = torch.from_numpy(sequences.timestamps[rows]).to(device)
                targets = torch.from_numpy(sequences.targets[rows]).to(device)
                items, timestamps = trim_to_longest(items, timestamps)
                yield rows, items, targets, model.score_next(items, timestamps).float()
    finally:
        model.train(was_training)


def evaluate_model(model: nn.Module, sequences: EvalSequences, *, ks: Sequence[int] = DEFAULT_KS,
                   batch_size: int = DEFAULT_EVAL_BATCH_SIZE, device: str | torch.device | None = None,
                   mask_history: bool = False) -> dict:
    """Full-ranking NDCG/MRR/Hit@K over all users of a valid or test split.

    Returns {"metrics": {"ndcg@10": ...}, "ranks": (N,) int64 1-based, "user_ids": (N,)}.
    `mask_history` removes the (last max_seq_len) history items from the ranking.
    """
    device = _device_of(model, device)
    model.to(device)
    ranks = np.zeros(len(sequences.targets), dtype=np.int64)
    for rows, items, targets, scores in _scored_batches(model, sequences, batch_size, device):
        exclude = history_exclusion_mask(items, scores.shape[1] - 1) if mask_history else None
        ranks[rows] = target_ranks(scores, targets, exclude).cpu().numpy()
    return {"metrics": ranking_metrics(ranks, ks), "ranks": ranks, "user_ids": sequences.user_ids}


def collect_logit_samples(model: nn.Module, sequences: EvalSequences, *, k: int = 50, seed: int = 0,
                          batch_size: int = DEFAULT_EVAL_BATCH_SIZE,
                          device: str | torch.device | None = None) -> dict[str, np.ndarray]:
    """Test-time logits of each user's positive and of one negative drawn by the stochastic top-K
    sampler (Eq. 4) from the same scores: the two distributions of the paper's Figure 4."""
    device = _device_of(model, device)
    model.to(device)
    generator = torch.Generator(device=device).manual_seed(seed)
    positive = np.zeros(len(sequences.targets), dtype=np.float32)
    negative = np.zeros_like(positive)
    for rows, _, targets, scores in _scored_batches(model, sequences, batch_size, device):
        negatives = sample_negatives(scores, targets, "topk_uniform", k=k, generator=generator)
        positive[rows] = scores.gather(1, targets.unsqueeze(1)).squeeze(1).cpu().numpy()
        negative[rows] = scores.gather(1, negatives.unsqueeze(1)).squeeze(1).cpu().numpy()
    return {"positive": positive, "negative": negative}
