"""The RoDPO multimodal sequential encoder (paper §3.2)."""

from rodpo.model.config import ModelConfig
from rodpo.model.encoder import RoDPOModel, encode_targets

__all__ = ["ModelConfig", "RoDPOModel", "encode_targets"]
