"""``experiments``: the paper's ablations and sensitivity (Tables 2-3, Figures 3-4) over seeds, with
paired significance tests; built from the warmup / rodpo / evaluation nodes under namespaces."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
