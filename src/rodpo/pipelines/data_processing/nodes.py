"""Nodes of ``data_processing``: thin adapters over ``rodpo.data.parsers`` and ``preprocess``.

Parsing reads the raw files named in the ``raw_files`` manifest itself (streaming gzip with
tolerance for malformed lines is not something a catalog dataset can do). An error in a copy also
names its source (from the manifest's ``copies``), the file the user can correct.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from rodpo.data import preprocess
from rodpo.data.provenance import naming_source
from rodpo.data.parsers import ITEM_SCHEMA, parse_interactions, parse_items


@dataclass
class ProcessingParams:
    k_core: int = 5
    drop_duplicates: bool = True
    max_malformed_fraction: float = 0.001
    timestamp_unit: str = "auto"  # auto | s | ms (rodpo.data.timestamps)


def parse_raw_interactions(raw_files: dict, data_processing: ProcessingParams) -> pl.DataFrame:
    """Reviews file -> (user_id, item_id, timestamp seconds) rows with original ids, in file order."""
    path = raw_files["files"]["reviews"]
    with naming_source(path, _source_of(raw_files, "reviews")):
        return parse_interactions(
            path,
            raw_files["source"],
            max_malformed_fraction=data_processing.max_malformed_fraction,
            timestamp_unit=data_processing.timestamp_unit,
        )


def parse_raw_items(raw_files: dict, data_processing: ProcessingParams) -> pl.DataFrame:
    """Metadata file -> one row per item with text fields and an image URL (empty if no file)."""
    meta_path = raw_files["files"].get("meta")
    if meta_path is None:
        return pl.DataFrame(schema=ITEM_SCHEMA)
    with naming_source(meta_path, _source_of(raw_files, "meta")):
        return parse_items(
            meta_path,
            raw_files["source"],
            max_malformed_fraction=data_processing.max_malformed_fraction,
        )


def _source_of(raw_files: dict, role: str) -> str | None:
    """Where the copy of ``role`` came from (None in a manifest written before copies had records)."""
    return ((raw_files.get("copies") or {}).get(role) or {}).get("source")


def filter_and_index_interactions(
    raw_interactions: pl.DataFrame, data_processing: ProcessingParams
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """De-duplicate, iterative k-core, stable time sort, contiguous ids (0 = padding)."""
    return preprocess.preprocess_interactions(
        raw_interactions,
        k_core=data_processing.k_core,
        drop_duplicates=data_processing.drop_duplicates,
    )


def build_items(raw_items: pl.DataFrame, item_id_map: pl.DataFrame) -> pl.DataFrame:
    return preprocess.build_items_table(raw_items, item_id_map)


def build_sequences(interactions: pl.DataFrame) -> pl.DataFrame:
    return preprocess.build_sequences(interactions)


def split_leave_one_out(sequences: pl.DataFrame) -> pl.DataFrame:
    return preprocess.leave_one_out_split(sequences)


def summarise_dataset(interactions: pl.DataFrame, dataset: str) -> tuple[dict, str]:
    """The paper's Table 5 for this dataset, as JSON and as markdown."""
    stats = preprocess.dataset_statistics(interactions)
    return {"dataset": dataset, **stats}, preprocess.render_dataset_stats_markdown(stats, dataset)
