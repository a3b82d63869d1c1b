"""Timestamp-conditioned temporal experts (the paper's "temporal module", HM4SR-style).

For position l with item timestamp t_l (unix seconds):
  gap bucket  g_l = 1 + min(floor(log2(1 + max(t_l - t_{l-1}, 0) / 3600)), n_gap_buckets - 2)
              (hours on a log scale); the first item and padding get bucket 0.
  time bucket a_l = 1 + floor((n_time_buckets - 2) * clamp((t_l - time_min) / (time_max - time_min), 0, 1))
              (absolute time, linear between the training data's min and max); padding gets bucket 0.
  tau_l = GapEmb(g_l) + TimeEmb(a_l)                                   (d)
  h_l  <- h_l + sum_j softmax(W_gate tau_l)_j * MLP_j([h_l ; tau_l])   (residual, soft gating)

Negative gaps (clock noise) are clamped to 0 *before* the log and padded slots never reach it:
HM4SR's public code took log2 of negative padded gaps and produced NaN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SECONDS_PER_HOUR = 3600.0


def gap_buckets(timestamps: torch.Tensor, is_real: torch.Tensor, n_buckets: int) -> torch.Tensor:
    """(B, L) int64 unix seconds, right-padded -> (B, L) bucket ids of the gap to the previous item."""
    gaps = torch.zeros_like(timestamps)
    gaps[:, 1:] = timestamps[:, 1:] - timestamps[:, :-1]
    has_previous = torch.zeros_like(is_real)
    has_previous[:, 1:] = is_real[:, 1:] & is_real[:, :-1]
    hours = gaps.clamp(min=0).float() / SECONDS_PER_HOUR  # float32: MPS has no float64
    bucket = 1 + torch.floor(torch.log2(1.0 + hours)).long().clamp(max=n_buckets - 2)
    return torch.where(has_previous, bucket, torch.zeros_like(bucket))


def time_buckets(timestamps: torch.Tensor, is_real: torch.Tensor, n_buckets: int,
                 time_min: int | None, time_max: int | None) -> torch.Tensor:
    """(B, L) unix seconds -> (B, L) absolute-time bucket ids; 0 for padding, 1 for all if no range."""
    if time_min is None or time_max is None or time_max <= time_min:
        bucket = torch.ones_like(timestamps)
    else:
        fraction = ((timestamps - time_min).float() / float(time_max - time_min)).clamp(0.0, 1.0)
        bucket = 1 + torch.floor(fraction * (n_buckets - 2)).long()
    return torch.where(is_real, bucket, torch.zeros_like(bucket))


class TemporalExperts(nn.Module):
    """Soft-gated temporal experts mixing time embeddings into the item sequence (see module doc)."""

    def __init__(self, hidden_size: int, n_experts: int, n_gap_buckets: int, n_time_buckets: int,
                 time_min: int | None, time_max: int | None) -> None:
        super().__init__()
        self.n_gap_buckets = n_gap_buckets
        self.n_time_buckets = n_time_buckets
        self.time_min = time_min
        self.time_max = time_max
        self.gap_embedding = nn.Embedding(n_gap_buckets, hidden_size)
        self.time_embedding = nn.Embedding(n_time_buckets, hidden_size)
        self.gate = nn.Linear(hidden_size, n_experts)
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(2 * hidden_size, hidden_size), nn.GELU(), nn.Linear(hidden_size, hidden_size))
            for _ in range(n_experts)
        )

    def time_embedding_of(self, timestamps: torch.Tensor, is_real: torch.Tensor) -> torch.Tensor:
        """(B, L) unix seconds -> tau (B, L, d)."""
        gaps = gap_buckets(timestamps, is_real, self.n_gap_buckets)
        times = time_buckets(timestamps, is_real, self.n_time_buckets, self.time_min, self.time_max)
        return self.gap_embedding(gaps) + self.time_embedding(times)

    def forward(self, hidden: torch.Tensor, time_embedding: torch.Tensor) -> torch.Tensor:
        """hidden, time_embedding (B, L, d) -> hidden + gated temporal experts (B, L, d)."""
        gate = F.softmax(self.gate(time_embedding), dim=-1)  # (B, L, E_t)
        expert_input = torch.cat([hidden, time_embedding], dim=-1)  # (B, L, 2d)
        expert_out = torch.stack([expert(expert_input) for expert in self.experts], dim=-2)  # (B, L, E_t, d)
        return hidden + (gate.unsqueeze(-1) * expert_out).sum(dim=-2)
