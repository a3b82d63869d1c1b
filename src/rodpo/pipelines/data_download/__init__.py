"""``data_download``: fetch (or generate) the raw files of the chosen dataset preset."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
