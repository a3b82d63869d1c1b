"""``feature_extraction``: frozen BERT text and CLIP image features per item (paper §3.2)."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
