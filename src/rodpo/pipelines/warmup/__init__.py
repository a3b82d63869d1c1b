"""``warmup``: stage 1, cross-entropy next-item training of the multimodal encoder (pi_sft)."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
