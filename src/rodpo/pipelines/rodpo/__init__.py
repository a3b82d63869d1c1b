"""``rodpo``: warm-up if needed, stage 2 DPO with stochastic top-K negatives, then evaluation."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
