"""ModelConfig: every architecture choice of the RoDPO encoder (paper §3.2), json-serialisable.

Stored next to each checkpoint so that `RoDPOModel(ModelConfig.from_dict(json))` rebuilds it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from rodpo.parameters import Number, check_numbers

MODALITIES = ("id", "text", "image")
MOE_MODES = ("sparse", "mlp", "none")
_SIZE = Number(int, at_least=1)
_MODEL_NUMBERS = {
    "n_items": Number(int, at_least=1, why="ids are 1..n_items"),
    "hidden_size": _SIZE, "max_seq_len": _SIZE, "n_layers": _SIZE, "n_heads": _SIZE, "inner_size": _SIZE,
    "hidden_dropout": Number(at_least=0, at_most=1), "attn_dropout": Number(at_least=0, at_most=1),
    "layer_norm_eps": Number(above=0), "init_std": Number(above=0),
    "text_dim": Number(int, at_least=1, optional=True), "image_dim": Number(int, at_least=1, optional=True),
    "n_experts": _SIZE, "moe_top_k": _SIZE, "moe_noise_std": Number(at_least=0, why="0 = no gate noise"),
    "moe_aux_weight": Number(at_least=0),
    "temporal": Number(bool),
    "n_gap_buckets": Number(int, at_least=2, why="bucket 0 is padding"),
    "n_time_buckets": Number(int, at_least=2, why="bucket 0 is padding"),
    "time_min": Number(int, optional=True), "time_max": Number(int, optional=True),
    "n_temporal_experts": _SIZE,
}


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
        check_numbers("model", self, _MODEL_NUMBERS)
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
