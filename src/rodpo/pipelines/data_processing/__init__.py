"""``data_processing``: parse raw files, k-core filter, re-index, sort and split (leave-one-out, global
time or the given split), streaming in bounded memory."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
