"""``evaluation``: full-ranking metrics of the warm-up and RoDPO models, and the paper's reports."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
