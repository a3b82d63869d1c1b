"""``case_study``: Figure 5 of the paper, a few test users' history and the top-5 of warm-up vs RoDPO."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
