"""ModelConfig: every architecture choice of the RoDPO encoder (paper §3.2), json-serialisable.

Stored next to each checkpoint so that `RoDPOModel(ModelConfig.from_dict(json))` rebuilds it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

MODALITIES = ("id", "text", "image")
MOE_MODES = ("sparse", "mlp", "none")


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of `RoDPOModel`. Defaults follow the paper (§4.1) and RecBole's SASRec."""

    n_items: int
    hidden_size: int = 64
    max_seq_len: int = 50
    n_layers: int = 2
    n_heads: int = 2
    inner_size: int = 256
    hidden_dropout: float = 0.5
    attn_dropout: float = 0.5
    layer_norm_eps: float = 1e-12
    init_std: float = 0.02
    # Any of them, at least one ("text" alone = the text-only ablation, no ID embedding);
    # "text" / "image" need their feature width below.
    modalities: tuple[str, ...] = ("id", "text", "image")
    text_dim: int | None = None
    image_dim: int | None = None
    # Sparse noisy MoE refinement of the item embeddings (Shazeer et al. 2017).
    # "mlp" = the paper's "w/o Sparse MoE" ablation (one expert-sized MLP), "none" = identity.
    moe_mode: str = "sparse"
    n_experts: int = 4
    moe_top_k: int = 2
    # Scale of Shazeer's learned gate noise: std = moe_noise_std * softplus(W_noise h); 0 = no noise.
    moe_noise_std: float = 1.0
    moe_aux_weight: float = 0.01
    # Timestamp-conditioned temporal experts (HM4SR-style), see model/temporal.py.
    temporal: bool = True
    n_gap_buckets: int = 32
    n_time_buckets: int = 64
    time_min: int | None = None  # unix seconds, from the training data
    time_max: int | None = None
    n_temporal_experts: int = 4

    def __post_init__(self) -> None:
        object.__setattr__(self, "modalities", tuple(self.modalities))
        if self.n_items < 1:
            raise ValueError(f"ModelConfig.n_items={self.n_items}: need at least one item (ids 1..n_items).")
        unknown = set(self.modalities) - set(MODALITIES)
        if unknown or not self.modalities or len(set(self.modalities)) != len(self.modalities):
            raise ValueError(
                f"ModelConfig.modalities={self.modalities}: must list one or more of {MODALITIES}, each once."
            )
        for name, dim in (("text", self.text_dim), ("image", self.image_dim)):
            if name in self.modalities and not dim:
                raise ValueError(
                    f"ModelConfig: modality '{name}' is enabled but {name}_dim={dim}; set {name}_dim to the "
                    f"feature width or drop '{name}' from modalities."
                )
        if self.moe_mode not in MOE_MODES:
            raise ValueError(f"ModelConfig.moe_mode={self.moe_mode!r}: expected one of {MOE_MODES}.")
        if self.moe_mode == "sparse" and not 1 <= self.moe_top_k <= self.n_experts:
            raise ValueError(
                f"ModelConfig: moe_top_k={self.moe_top_k} must be between 1 and n_experts={self.n_experts}."
            )
        if self.hidden_size % self.n_heads:
            raise ValueError(
                f"ModelConfig: hidden_size={self.hidden_size} is not divisible by n_heads={self.n_heads}."
            )
        if self.temporal and (self.n_gap_buckets < 2 or self.n_time_buckets < 2):
            raise ValueError("ModelConfig: n_gap_buckets and n_time_buckets need >= 2 (bucket 0 is padding).")

    def to_dict(self) -> dict[str, Any]:
        """Plain json-ready dict (tuples become lists)."""
        out = asdict(self)
        out["modalities"] = list(self.modalities)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        """Inverse of `to_dict`; unknown keys are an error so a stale config is not silently half-read."""
        known = {f.name for f in fields(cls)}
        extra = set(values) - known
        if extra:
            raise ValueError(f"ModelConfig.from_dict: unknown keys {sorted(extra)}; is this a newer config?")
        return cls(**values)
