"""``recommend``: top-N recommendations for every user from a trained model, with original ids."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
