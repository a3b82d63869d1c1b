"""The RoDPO multimodal sequential encoder (paper §3.2)."""

from rodpo.model.config import ModelConfig
from rodpo.model.encoder import RoDPOModel

__all__ = ["ModelConfig", "RoDPOModel"]
