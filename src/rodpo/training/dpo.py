"""RoDPO's stage-2 pieces: the DPO loss on logit margins (Eq. 5), negative samplers (Eq. 4 and the
paper's ablations), the frozen reference policy, and TRL-style implicit-reward statistics.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from rodpo.scoring import draw_from_pool, top_k_items

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
    `exclude_ids` (N, L) item ids, 0-padded, leave more items out of the pool (the user's history;
    off in the paper). `generator` must live on the states' device.
    """
    if strategy not in NEGATIVE_STRATEGIES:
        raise ValueError(f"sample_negatives: strategy={strategy!r}, expected one of {NEGATIVE_STRATEGIES}.")
    positives = positives.view(-1)
    if strategy == "random":
        return _uniform_negatives(positives, table.shape[0] - 1, n_negatives, generator, exclude_ids)
    pool_size = 1 if strategy == "argmax" else k
    _, pool = top_k_items(states.detach(), table.detach(), pool_size, exclude_targets=positives,
                          exclude_ids=exclude_ids, chunk_items=chunk_items)  # (N, K), 0 = no item left
    if strategy == "argmax":
        if bool((pool[:, 0] == 0).any()):
            raise ValueError("sample_negatives: a row has no candidate negative left (every item is the positive, "
                             "padding or excluded); drop rodpo.dpo.exclude_history.")
        return pool[:, :1]
    return draw_from_pool(pool, pool > 0, n_negatives, generator)


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
                     "and the excluded history are left out. Lower rodpo.dpo.n_negatives or drop "
                     "rodpo.dpo.exclude_history.")


def frozen_reference(policy: nn.Module) -> nn.Module:
    """pi_ref <- pi_sft: a deep copy in eval mode (no dropout, no router noise) without gradients.

    Frozen feature buffers are shared with the policy instead of copied.
    """
    shared = {id(buffer): buffer for buffer in policy.buffers()}  # deepcopy's memo: reuse, do not copy
    reference = copy.deepcopy(policy, memo=shared)
    reference.eval()
    reference.requires_grad_(False)
    return reference
