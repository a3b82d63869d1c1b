"""A Parquet dataset that saves a polars LazyFrame with a streaming sink, never collecting it.

kedro-datasets' ``LazyPolarsDataset`` collects a LazyFrame before writing (kedro-plugins #702), so
a 10^8-row table would be built in memory just to be saved. This dataset hands the query to
``sink_parquet`` on polars' streaming engine: the rows flow through in batches. The file is written
under a temporary name and renamed when complete, so a failed or interrupted save never leaves a
half-written file where a later load would take it for the current version. Loading is lazy
(``scan_parquet``) unless ``load_args: {lazy: false}``, for consumers that need the whole table.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import polars as pl
from kedro.io.core import DatasetError, Version

from rodpo.datasets import _VersionedFileDataset

PARTIAL_SUFFIX = ".partial"  # a save in progress; renamed to the real name when complete


class LazyParquetDataset(_VersionedFileDataset):
    """One Parquet file; ``save`` takes a LazyFrame (sunk, streaming) or a DataFrame."""

    def __init__(self, *, filepath: str, load_args: dict[str, Any] | None = None, version: Version | None = None,
                 credentials: dict[str, Any] | None = None, fs_args: dict[str, Any] | None = None,
                 metadata: dict[str, Any] | None = None) -> None:
        super().__init__(filepath=filepath, version=version, credentials=credentials, fs_args=fs_args,
                         metadata=metadata)
        self._lazy = bool((load_args or {}).get("lazy", True))
        if self._protocol != "file":
            raise DatasetError(f"{filepath}: LazyParquetDataset writes local files only (a streaming sink "
                               "needs a local path); use polars.EagerPolarsDataset for remote stores.")

    def load(self) -> pl.LazyFrame | pl.DataFrame:
        path = self._load_path()
        return pl.scan_parquet(path) if self._lazy else pl.read_parquet(path)

    def save(self, data: pl.LazyFrame | pl.DataFrame) -> None:
        if not isinstance(data, (pl.LazyFrame, pl.DataFrame)):
            raise DatasetError(f"{self._filepath}: expected a polars LazyFrame or DataFrame to save, got "
                               f"{type(data).__name__}; return a polars frame from the node.")
        final = Path(self._save_path())
        final.parent.mkdir(parents=True, exist_ok=True)
        partial = final.with_name(final.name + PARTIAL_SUFFIX)
        try:
            if isinstance(data, pl.LazyFrame):
                data.sink_parquet(partial, engine="streaming")
            else:
                data.write_parquet(partial)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        os.replace(partial, final)
        self._release()

    def _describe(self) -> dict[str, Any]:
        return {**super()._describe(), "lazy": self._lazy}
