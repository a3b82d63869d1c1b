"""Nodes of ``data_processing``: thin adapters over ``rodpo.data`` (parsers, streaming, splits).

The large tables travel as polars LazyFrames and are written by ``rodpo.lazy_parquet`` sinks, so
memory grows with users and items, not with interactions (``rodpo.data.streaming``). Parsing reads
the raw files named in the ``raw_files`` manifest itself (block-streaming gzip with tolerance for
malformed lines is not something a catalog dataset can do), and the streaming steps spill their
buckets to ``data_processing.work_dir``: here I/O is the job. An error in a copy also names its source (from the manifest's
``copies``), the file the user can correct.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import polars as pl

from rodpo.data import amazon2023_benchmark as benchmark
from rodpo.data import preprocess, streaming
from rodpo.data.items import parse_items
from rodpo.data.parsers import ITEM_SCHEMA
from rodpo.data.provenance import naming_source
from rodpo.data.raw_scan import scan_interactions
from rodpo.data.splits import GLOBAL_TIME, LEAVE_ONE_OUT, check_protocol, given_split, global_time_split, split_statistics

logger = logging.getLogger(__name__)


@dataclass
class ProcessingParams:
    k_core: int = 5
    drop_duplicates: bool = True
    max_malformed_fraction: float = 0.001
    timestamp_unit: str = "auto"  # auto | s | ms (rodpo.data.timestamps)
    split: str = LEAVE_ONE_OUT          # leave_one_out | global_time (cut points t1 < t2, unix ms)
    t1: int | None = None
    t2: int | None = None
    work_dir: str = "data/02_intermediate/streaming_work"
    rows_per_bucket: int = streaming.DEFAULT_ROWS_PER_BUCKET

    def __post_init__(self) -> None:
        check_protocol(self.split, self.t1, self.t2)


def processing_params(data_processing: ProcessingParams | dict, dataset_spec: dict) -> ProcessingParams:
    """``data_processing`` with the preset's ``processing`` overrides (e.g. the 2023 cut points)."""
    base = data_processing if isinstance(data_processing, ProcessingParams) else ProcessingParams(**data_processing)
    overrides = dict((dataset_spec or {}).get("processing") or {})
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(ProcessingParams)})
    if unknown:
        raise ValueError(f"dataset_spec.processing: {unknown} are not data_processing parameters; expected some of "
                         f"{[f.name for f in dataclasses.fields(ProcessingParams)]}.")
    return dataclasses.replace(base, **overrides)


def parse_raw_interactions(raw_files: dict, data_processing: ProcessingParams, dataset_spec: dict) -> pl.LazyFrame:
    """Reviews file -> (user_id, item_id, timestamp) rows with original ids, in file order; for the 2023
    benchmark the train, valid and test files with each row's ``split``, histories checked first."""
    options = processing_params(data_processing, dataset_spec)
    if raw_files["source"] != benchmark.SOURCE:
        path = raw_files["files"]["reviews"]
        with naming_source(path, _source_of(raw_files, "reviews")):
            return scan_interactions(path, raw_files["source"], max_malformed_fraction=options.max_malformed_fraction,
                                     timestamp_unit=options.timestamp_unit)
    _, _, with_history = benchmark.benchmark_layout(raw_files.get("benchmark"))
    if with_history:
        benchmark.check_histories(raw_files["files"], work_dir=options.work_dir,
                                  max_malformed_fraction=options.max_malformed_fraction)
    return benchmark.scan_benchmark_interactions(raw_files["files"], with_history=with_history,
                                                 max_malformed_fraction=options.max_malformed_fraction)


def parse_raw_items(raw_files: dict, data_processing: ProcessingParams) -> pl.DataFrame:
    """Metadata file -> one row per item with text fields and an image URL (empty if no file)."""
    meta_path = raw_files["files"].get("meta")
    if meta_path is None:
        return pl.DataFrame(schema=ITEM_SCHEMA)
    source = benchmark.META_FORMAT if raw_files["source"] == benchmark.SOURCE else raw_files["source"]
    with naming_source(meta_path, _source_of(raw_files, "meta")):
        return parse_items(meta_path, source, max_malformed_fraction=data_processing.max_malformed_fraction)


def _source_of(raw_files: dict, role: str) -> str | None:
    """Where the copy of ``role`` came from (None in a manifest written before copies had records)."""
    return ((raw_files.get("copies") or {}).get(role) or {}).get("source")


def filter_and_index_interactions(
    raw_interactions: pl.LazyFrame, data_processing: ProcessingParams, dataset_spec: dict
) -> tuple[pl.LazyFrame, pl.DataFrame, pl.DataFrame]:
    """De-duplicate, iterative k-core, contiguous ids (0 = padding), stable time sort; a given split
    (the 2023 benchmark files) is kept as it is: no de-duplication, no k-core."""
    data_processing = processing_params(data_processing, dataset_spec)
    given = streaming.SPLIT in raw_interactions.collect_schema()
    if given:
        logger.info("%s: the split is read as given; k_core and drop_duplicates do not apply (the benchmark "
                    "folder's 0core/5core says which core)", benchmark.SOURCE)
    return streaming.process_interactions(
        raw_interactions,
        k_core=1 if given else data_processing.k_core,
        drop_duplicates=False if given else data_processing.drop_duplicates,
        work_dir=data_processing.work_dir,
        rows_per_bucket=data_processing.rows_per_bucket,
    )


def build_items(raw_items: pl.DataFrame, item_id_map: pl.DataFrame) -> pl.DataFrame:
    return preprocess.build_items_table(raw_items, item_id_map)


def build_sequences(interactions: pl.LazyFrame, data_processing: ProcessingParams) -> pl.LazyFrame:
    return streaming.build_sequences_streaming(interactions, rows_per_bucket=data_processing.rows_per_bucket)


def split_sequences(sequences: pl.LazyFrame, data_processing: ProcessingParams, dataset_spec: dict) -> pl.LazyFrame:
    """The protocol of ``data_processing.split`` (leave-one-out, global time), or the given split."""
    options = processing_params(data_processing, dataset_spec)
    if "splits" in sequences.collect_schema():
        if options.split != LEAVE_ONE_OUT:
            raise ValueError(
                f"data_processing.split={options.split!r}: the {benchmark.SOURCE} files carry their own split "
                f"(dataset_spec.benchmark); for the global time cut pick a timestamp folder, or use source "
                "amazon2023 (the raw reviews) with split global_time.")
        return given_split(sequences)
    if options.split == GLOBAL_TIME:
        return global_time_split(sequences, options.t1, options.t2)
    return preprocess.leave_one_out_split(sequences)


def summarise_dataset(interactions: pl.LazyFrame, sequence_splits: pl.DataFrame, dataset: str) -> tuple[dict, str]:
    """The paper's Table 5 for this dataset, as JSON and as markdown; with several targets per user
    also the targets and the users without history before a cut (evaluated and reported apart)."""
    stats = preprocess.dataset_statistics(interactions)
    targets = split_statistics(sequence_splits)
    markdown = preprocess.render_dataset_stats_markdown(stats, dataset)
    if targets:
        markdown += "\n" + "\n".join(["| Split | count |", "| --- | ---: |",
                                      *(f"| {name.replace('_', ' ')} | {value:,} |" for name, value in targets.items())])
        markdown += "\n"
    return {"dataset": dataset, **stats, **({"split": targets} if targets else {})}, markdown
