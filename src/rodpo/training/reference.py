"""The frozen reference of stage 2 (π_ref = π_sft): its copy or its cached states, its pair scores
s_ref(x, y_w), s_ref(x, y_l) (Eq. 5), and TRL-style implicit-reward statistics."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from rodpo.model import encode_targets

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


def frozen_reference(policy: nn.Module) -> nn.Module:
    """pi_ref <- pi_sft: a deep copy in eval mode (no dropout, no router noise) without gradients.

    Frozen feature buffers are shared with the policy instead of copied.
    """
    shared = {id(buffer): buffer for buffer in policy.buffers()}  # deepcopy's memo: reuse, do not copy
    reference = copy.deepcopy(policy, memo=shared)
    reference.eval()
    reference.requires_grad_(False)
    return reference


class ReferenceScorer:
    """s_ref(x, y) for the pairs of a step. mode "model": a frozen copy of pi_sft encodes each batch;
    mode "cached_states": pi_sft's states at every training target are computed once (the reference
    never changes) and the copy is dropped. The reference's item table is computed once either way."""

    def __init__(self, sft: nn.Module, data_items: torch.Tensor, data_times: torch.Tensor, mode: str,
                 encoder_chunks: int, autocast) -> None:
        self.mode, self.encoder_chunks, self.autocast = mode, encoder_chunks, autocast
        self.model = frozen_reference(sft).to(data_items.device)
        with torch.no_grad(), autocast():
            self.table = self.model.scoring_table().detach()  # (I+1, D)
        self.cached = None
        if mode == "cached_states":
            self.cached, self.offsets = self._all_target_states(data_items, data_times)
            self.model = None  # the states are all a step needs

    def _all_target_states(self, items: torch.Tensor, times: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """States at each window's targets, concatenated in window order; offsets (W,) into them."""
        n_targets = ((items > 0).sum(dim=1) - 1).clamp(min=0)
        offsets = torch.cumsum(n_targets, 0) - n_targets
        parts = []
        with torch.no_grad(), self.autocast():
            for start in range(0, items.shape[0], 1024):
                window_items, window_times = items[start:start + 1024], times[start:start + 1024]
                is_target = window_items[:, 1:] > 0
                states, _ = encode_targets(self.model, window_items[:, :-1], window_times[:, :-1], is_target,
                                           self.encoder_chunks)
                parts.append(states.detach())
        return torch.cat(parts), offsets

    def scores(self, rows: torch.Tensor, inputs: torch.Tensor, input_times: torch.Tensor, is_target: torch.Tensor,
               pairs: torch.Tensor) -> torch.Tensor:
        """(N, 1 + M) reference scores of (y_w, y_l...) for windows `rows` (in the batch's order)."""
        if self.cached is not None:
            positions = torch.arange(is_target.shape[1], device=rows.device)
            states = self.cached[(self.offsets[rows][:, None] + positions[None, :])[is_target]]
        else:
            with torch.no_grad(), self.autocast():
                states, _ = encode_targets(self.model, inputs, input_times, is_target, self.encoder_chunks)
        return torch.einsum("nd,nmd->nm", states.float(), F.embedding(pairs, self.table).float())
