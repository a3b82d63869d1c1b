"""The dense path of benchmarks/bench_scale.py: the implementation before the chunked scoring core,
kept as the reference it is measured against ((N, n_items + 1) logits everywhere)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rodpo import scoring
from rodpo.metrics import target_ranks as dense_target_ranks
from rodpo.model import RoDPOModel
from rodpo.sequences import EvalSequences, trim_to_longest
from rodpo.training.objectives import dpo as dpo_objective
from rodpo.training.stage import Stage

# Bytes per (row, item) cell at the dense path's peak: fp32 log_softmax output and its two backward
# grads (warmup), one more for gather's dense backward (dpo), logits + index_fill copy + bool masks
# (eval), with slack. Measured at 12k items, CPU: 2.11 / 2.67 GB above setup for 12,800 x 12,001 cells.
DENSE_BYTES_PER_CELL = {"warmup": 14, "dpo": 18, "eval": 12}


def dense_predicted_bytes(stage: str, n_rows: int, n_items: int) -> int:
    return DENSE_BYTES_PER_CELL[stage] * n_rows * (n_items + 1)


def dense_step_loss(stage: Stage, items: torch.Tensor, timestamps: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """One step's loss as before the scoring core: (N, n_items + 1) logits, dense CE, a torch.topk
    pool of the K best non-positive items, y_l uniform from it, pair scores gathered from the logits."""
    by_length = (items > 0).sum(dim=1).argsort()
    items, timestamps, rows = items[by_length], timestamps[by_length], rows[by_length]
    inputs, targets, input_times = items[:, :-1], items[:, 1:], timestamps[:, :-1]
    is_target = targets > 0
    positive_item = targets[is_target]  # y_w, (N,)
    with stage.autocast():
        target_states, aux_loss, _ = stage.forward(inputs, input_times, is_target)
        logits = stage.policy.all_item_logits(target_states)  # (N, n_items + 1)
    loss = F.cross_entropy(logits.float(), positive_item) + stage.aux_weight * aux_loss
    if stage.is_dpo:
        dpo = stage.config.dpo
        top_scores, top_items = logits.detach().topk(dpo.k + 2, dim=1)  # the positive and padding may be in it
        valid = (top_items != positive_item[:, None]) & (top_items != 0) & torch.isfinite(top_scores)
        valid &= valid.long().cumsum(dim=1) <= dpo.k  # the top-K pool without the positive
        sampled_negative = scoring.draw_from_pool(top_items, valid, 1, stage.sample_generator)  # (N, 1)
        pairs = torch.cat([positive_item[:, None], sampled_negative], dim=1)  # (N, 2): y_w, y_l
        policy_scores = logits.gather(1, pairs).float()
        reference_scores = stage.reference.scores(rows, inputs, input_times, is_target, pairs)
        loss = loss + dpo.lambda_dpo * dpo_objective(policy_scores[:, 0], policy_scores[:, 1:], reference_scores[:, 0],
                                                     reference_scores[:, 1:], beta=dpo.beta).mean()
    return loss


def dense_ranks(model: RoDPOModel, sequences: EvalSequences, device: torch.device) -> torch.Tensor:
    """Full ranking as before the scoring core: model.score_next (B, n_items + 1), then metrics.target_ranks."""
    model.eval()
    with torch.inference_mode():
        items = torch.from_numpy(sequences.items).to(device)
        timestamps = torch.from_numpy(sequences.timestamps).to(device)
        targets = torch.from_numpy(sequences.targets).to(device)
        items, timestamps = trim_to_longest(items, timestamps)
        return dense_target_ranks(model.score_next(items, timestamps).float(), targets)
