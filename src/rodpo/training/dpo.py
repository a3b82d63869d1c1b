"""RoDPO's stage-2 pieces: the DPO loss on logit margins (Eq. 5), negative samplers (Eq. 4 and the
paper's ablations), the frozen reference policy, and TRL-style implicit-reward statistics.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

NEGATIVE_STRATEGIES = ("topk_uniform", "argmax", "random")


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, reference_chosen: torch.Tensor,
             reference_rejected: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-pair L_DPO = -log sigmoid(beta * [(s(y_w) - s(y_l)) - (s_ref(y_w) - s_ref(y_l))])  (Eq. 5).

    The softmax partition function cancels in the log-ratio, so raw logits s are enough.
    """
    policy_margin = policy_chosen - policy_rejected
    reference_margin = reference_chosen - reference_rejected
    return -F.logsigmoid(beta * (policy_margin - reference_margin))


def implicit_reward_stats(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
                          reference_chosen: torch.Tensor, reference_rejected: torch.Tensor,
                          beta: float) -> dict[str, torch.Tensor]:
    """Sums (not means, so epochs can be pooled) of TRL's DPO diagnostics over the pairs.

    reward = beta * (s - s_ref); margin = reward(y_w) - reward(y_l); accuracy = margin > 0.
    """
    with torch.no_grad():
        chosen = beta * (policy_chosen - reference_chosen).float()
        rejected = beta * (policy_rejected - reference_rejected).float()
        margin = chosen - rejected
        return {
            "rewards_chosen": chosen.sum(),
            "rewards_rejected": rejected.sum(),
            "rewards_margin": margin.sum(),
            "rewards_accuracy": (margin > 0).float().sum(),
        }


def _pick_nth_valid(candidates: torch.Tensor, valid: torch.Tensor, limit: int,
                    generator: torch.Generator | None) -> torch.Tensor:
    """Per row, uniformly pick one of the first `limit` valid entries of `candidates` (N, C)."""
    n_valid = valid.sum(dim=1).clamp(max=limit)
    if bool((n_valid == 0).any()):
        raise ValueError("sample_negatives: a row has no candidate negative left (every item is the positive, "
                         "padding or excluded); lower k or drop the exclusion mask.")
    draw = torch.rand(candidates.shape[0], generator=generator, device=candidates.device)
    nth = (draw * n_valid).long().clamp(max=n_valid - 1)  # (N,) in 0..n_valid-1
    is_nth = valid & (valid.long().cumsum(dim=1) == (nth + 1).unsqueeze(1))
    return candidates.gather(1, is_nth.long().argmax(dim=1, keepdim=True)).squeeze(1)


def sample_negatives(logits: torch.Tensor, positives: torch.Tensor, strategy: str = "topk_uniform", k: int = 50,
                     generator: torch.Generator | None = None, exclude: torch.Tensor | None = None) -> torch.Tensor:
    """One losing item y_l per row of policy scores (N, n_items+1), never the positive nor padding (0).

    topk_uniform: y_l ~ U(TopK({s(x, i) : i != y_w}, K))  (Eq. 4, RoDPO's stochastic top-K);
    argmax:       the best-scored non-positive item (hard negative ablation);
    random:       uniform over all real items except the positive (random ablation).
    `exclude` (N, n_items+1) bool removes more items from the pool (e.g. the user's history; off
    in the paper). `generator` must live on the logits' device.
    """
    if strategy not in NEGATIVE_STRATEGIES:
        raise ValueError(f"sample_negatives: strategy={strategy!r}, expected one of {NEGATIVE_STRATEGIES}.")
    logits = logits.detach()
    positives = positives.view(-1, 1)
    n_columns = logits.shape[1]
    if exclude is not None:
        logits = logits.masked_fill(exclude, float("-inf"))

    if strategy == "random":
        if exclude is None:  # shift a draw from n_items - 1 values past the positive: uniform, O(N)
            draw = torch.randint(1, n_columns - 1, positives.shape, generator=generator, device=logits.device)
            return (draw + (draw >= positives).long()).squeeze(1)
        allowed = ~exclude
        allowed[:, 0] = False
        allowed.scatter_(1, positives, False)
        return torch.multinomial(allowed.float(), 1, generator=generator).squeeze(1)

    pool_size = 1 if strategy == "argmax" else k
    # Two spare slots: the positive and column 0 may both sit in the top; invalid ones are skipped.
    top_scores, top_items = logits.topk(min(pool_size + 2, n_columns), dim=1)
    valid = (top_items != positives) & (top_items != 0) & torch.isfinite(top_scores)
    return _pick_nth_valid(top_items, valid, pool_size, generator)


def frozen_reference(policy: nn.Module) -> nn.Module:
    """pi_ref <- pi_sft: a deep copy in eval mode (no dropout, no router noise) without gradients.

    Frozen feature buffers are shared with the policy instead of copied.
    """
    shared = {id(buffer): buffer for buffer in policy.buffers()}  # deepcopy's memo: reuse, do not copy
    reference = copy.deepcopy(policy, memo=shared)
    reference.eval()
    reference.requires_grad_(False)
    return reference
