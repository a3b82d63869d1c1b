"""The official split files of the Amazon Reviews 2023 benchmark, read as given (not re-split).

Layout under ``benchmark/`` (McAuley Lab, ``benchmark_scripts/{last_out,timestamp}_split.py``):
``{0core,5core}/{last_out,timestamp}[_w_his]/<Category>.{train,valid,test}.csv[.gz]``, each with the
header ``user_id,parent_asin,rating,timestamp`` (unix milliseconds), the ``_w_his`` folders adding
``history``: the user's earlier items, space-separated, in time order across train, valid and test.
The files were de-duplicated (earliest review per user and item) and k-cored before the split, so
rodpo applies neither again: a row's file says whether it is train, valid or test.

A ``history`` is checked against the rows themselves: it must be exactly the user's items on the
rows before it (train file, then valid, then test, each in file order). A file that fails names the
file, the line, the history found and the one expected. Reading streams block by block.
"""

from __future__ import annotations

import io
import math
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import polars as pl

from rodpo.data import parsers
from rodpo.data import reading
from rodpo.data.download import local_source
from rodpo.data.parsers import _BadLine, _Tally
from rodpo.data.raw_scan import scan_frames
from rodpo.data.splits import TEST, TRAIN, VALID

SOURCE = "amazon2023_benchmark"
META_FORMAT = "amazon2023"  # metadata: the raw release's meta_<Category>.jsonl.gz
HEADER = ("user_id", "parent_asin", "rating", "timestamp")
HISTORY = "history"
SPLIT_FILES = {"train": TRAIN, "valid": VALID, "test": TEST}  # read in this order
_FOLDER = re.compile(r"^(0core|5core)/(last_out|timestamp)(_w_his)?$")
_FIELD_SEP, _HISTORY_SEP = ",", " "
SCHEMA = {"user_id": pl.Utf8, "item_id": pl.Utf8, "timestamp": pl.Int64, "split": pl.Int8}
_BYTES_PER_CHECK_BUCKET = 256 << 20  # rows with their histories, in memory at once while checking
_GZIP_EXPANSION = 8  # rough size of a decompressed split file, to size the check's buckets
_SNIPPET = 80


class BenchmarkFileError(ValueError):
    """A benchmark split file is not what the official release holds."""


def benchmark_layout(benchmark: str | None, split: str | None = None) -> tuple[str, str, bool]:
    """(core folder, split protocol, has history) of ``dataset_spec.benchmark``, e.g. ``5core/last_out_w_his``."""
    match = _FOLDER.match(str(benchmark or ""))
    if match is None:
        raise ValueError(
            f"dataset_spec.benchmark={benchmark!r}: expected a folder under benchmark/ of the Amazon 2023 release: "
            "{0core,5core}/{last_out,timestamp}[_w_his], e.g. 5core/last_out_w_his.")
    core, protocol, history = match.group(1), match.group(2), bool(match.group(3))
    if split is not None and split != protocol:
        raise ValueError(
            f"dataset_spec.split={split!r} but dataset_spec.benchmark={benchmark!r} holds the {protocol!r} split; "
            f"set dataset_spec.split={protocol} too (or pick the {split} folder).")
    return core, protocol, history


def benchmark_file_urls(spec: dict, urls: dict[str, str]) -> dict[str, str]:
    """The split files' URLs; in a local folder the plain ``.csv`` stands in for a missing ``.csv.gz``
    and a category without its files is an error listing the categories the folder has."""
    benchmark_layout(spec.get("benchmark"), spec.get("split"))
    resolved = dict(urls)
    for role in SPLIT_FILES:
        path = local_source(urls[role])
        if path is None or path.is_file():
            continue
        plain = path.with_name(path.name.removesuffix(".gz"))
        if plain.is_file():
            resolved[role] = str(plain)
            continue
        present = sorted({p.name.split(".")[0] for p in path.parent.glob("*.train.csv*")}) if path.parent.is_dir() else []
        raise FileNotFoundError(
            f"{path.parent}: no {plain.name}[.gz] for category {spec.get('category')!r} in this benchmark folder "
            f"(it has: {present or 'nothing'}). Fix dataset_spec.category (exact spelling, e.g. Toys_and_Games), "
            "dataset_spec.benchmark or base_url (the folder holding benchmark/'s subfolders).")
    return resolved


def scan_benchmark_interactions(files: dict[str, str | Path], *, with_history: bool,
                                max_malformed_fraction: float = 0.001) -> pl.LazyFrame:
    """(user_id, item_id = parent_asin, timestamp in seconds, split 0/1/2) of the train, valid and test
    files, in that order and file order within each; a block-streaming LazyFrame."""
    paths = _split_paths(files, with_history)

    def blocks() -> Iterator[pl.DataFrame]:
        for part, path in paths.items():
            for frame in _rows(path, with_history, max_malformed_fraction):
                yield frame.select("user_id", "item_id", pl.col("timestamp") // 1000,
                                   pl.lit(SPLIT_FILES[part], dtype=pl.Int8).alias("split"))

    return scan_frames(blocks, SCHEMA, "amazon2023 benchmark split")


def check_histories(files: dict[str, str | Path], *, work_dir: str | Path, max_malformed_fraction: float = 0.001) -> None:
    """Every ``history`` equals the user's items on the rows before it; else a BenchmarkFileError naming
    the file and line. Rows go to disk in buckets of users (hash), one bucket in memory at a time."""
    paths = _split_paths(files, with_history=True)
    work = Path(work_dir) / "history_check"
    shutil.rmtree(work, ignore_errors=True)
    size = sum(p.stat().st_size * (_GZIP_EXPANSION if _is_gzip(p) else 1) for p in paths.values())
    n_buckets = max(1, math.ceil(size / _BYTES_PER_CHECK_BUCKET))
    names = list(paths)

    def blocks() -> Iterator[pl.DataFrame]:
        for index, (part, path) in enumerate(paths.items()):
            for frame in _rows(path, True, max_malformed_fraction, with_lines=True):
                yield frame.select("user_id", "item_id", HISTORY, "line", pl.lit(index, dtype=pl.Int8).alias("file"))

    schema = {"user_id": pl.Utf8, "item_id": pl.Utf8, HISTORY: pl.Utf8, "line": pl.Int64, "file": pl.Int8}
    rows = scan_frames(blocks, schema, "benchmark histories").with_row_index("_row")
    rows = rows.with_columns((pl.col("user_id").hash() % n_buckets).alias("_bucket"))
    rows.sink_parquet(pl.PartitionBy(work, key="_bucket", include_key=False), mkdir=True, engine="streaming")
    try:
        for part in sorted(p for p in work.iterdir() if p.is_dir()):
            _check_bucket(pl.read_parquet(sorted(part.glob("*.parquet"))), [paths[n] for n in names])
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _check_bucket(rows: pl.DataFrame, paths: list[Path]) -> None:
    """Within each user (rows in file order), history_i == history_(i-1) + item_(i-1)."""
    rows = rows.sort("user_id", "_row")
    same_user = pl.col("user_id") == pl.col("user_id").shift(1)
    previous_history, previous_item = pl.col(HISTORY).shift(1), pl.col("item_id").shift(1)
    expected = (pl.when(~same_user.fill_null(False)).then(pl.lit(""))
                .when(previous_history == "").then(previous_item)
                .otherwise(pl.concat_str(previous_history, pl.lit(_HISTORY_SEP), previous_item)))
    wrong = rows.with_columns(expected.alias("expected")).filter(pl.col(HISTORY) != pl.col("expected"))
    if wrong.height == 0:
        return
    first = wrong.sort("file", "line").row(0, named=True)
    raise BenchmarkFileError(
        f"{paths[first['file']]} line {first['line']}: history {first[HISTORY][:_SNIPPET]!r} disagrees with user "
        f"{first['user_id']}'s earlier rows in the train/valid/test files, which give {first['expected'][:_SNIPPET]!r} "
        f"({wrong.height} row(s) disagree). The _w_his files must come from one download of one folder: fetch "
        "the folder again, or use the folder without _w_his (rodpo builds histories from the rows).")


def _rows(path: Path, with_history: bool, max_malformed_fraction: float, *, with_lines: bool = False
          ) -> Iterator[pl.DataFrame]:
    """(user_id, item_id, timestamp ms, history ("" without one)[, line]) frames of one split file;
    the header is checked first."""
    expected = [*HEADER, HISTORY] if with_history else list(HEADER)
    tally = _Tally(path, SOURCE, max_malformed_fraction)
    for first_line_no, block in reading.prefetch(reading.line_blocks(path), reading.PREFETCH_BLOCKS):
        if first_line_no == 1:
            block, first_line_no = _after_header(path, block, expected), 2
        lines = block.split(b"\n")[:-1]
        frame = _fast_block(block, len(expected), len(lines))
        if frame is None:
            frame = _slow_block(lines, first_line_no, path, len(expected), tally)
        else:
            tally.good(frame.height)
            frame = frame.with_columns(pl.int_range(first_line_no, first_line_no + frame.height).alias("line"))
        yield frame if with_lines else frame.drop("line")
    tally.finish()


def _after_header(path: Path, block: bytes, expected: list[str]) -> bytes:
    end = block.find(b"\n") if b"\n" in block else len(block)
    found = block[:end].decode("utf-8", "replace").lstrip("\ufeff").rstrip("\r").split(_FIELD_SEP)
    if found != expected:
        raise BenchmarkFileError(
            f"{path} line 1: header {_FIELD_SEP.join(found)[:_SNIPPET]!r}, expected {_FIELD_SEP.join(expected)!r} "
            "(the official benchmark header; _w_his folders add history). Is the file from the folder that "
            "dataset_spec.benchmark names, and complete?")
    return block[end + 1:]


def _fast_block(block: bytes, n_fields: int, n_lines: int) -> pl.DataFrame | None:
    """The block through polars' CSV reader, or None when any line needs a closer look. polars fills a
    short line with nulls, so the block's commas are counted first: exactly n_fields - 1 per line."""
    if not block:
        return pl.DataFrame(schema={"user_id": pl.Utf8, "item_id": pl.Utf8, "timestamp": pl.Int64, HISTORY: pl.Utf8})
    if block.count(_FIELD_SEP.encode()) != n_lines * (n_fields - 1):
        return None
    names = ["user_id", "item_id", "rating", "timestamp", HISTORY][:n_fields]
    try:
        raw = pl.read_csv(io.BytesIO(block), has_header=False, new_columns=names, infer_schema=False,
                          quote_char=None, empty_string_is_null=False)
    except pl.exceptions.PolarsError:
        return None
    history = pl.col(HISTORY).str.strip_chars("\r") if n_fields > len(HEADER) else pl.lit("")
    frame = raw.select("user_id", "item_id", pl.col("timestamp").str.strip_chars("\r").cast(pl.Int64, strict=False),
                       history.alias(HISTORY))
    if frame.height != n_lines or not parsers._is_clean(frame.drop(HISTORY)):
        return None
    return frame


def _slow_block(lines: list[bytes], first_line_no: int, path: Path, n_fields: int, tally: _Tally) -> pl.DataFrame:
    rows = []
    for offset, raw_line in enumerate(lines):
        if not raw_line.strip():
            continue
        line = raw_line.decode("utf-8", "replace").rstrip("\r")
        values = line.split(_FIELD_SEP)
        try:
            if len(values) != n_fields:
                raise _BadLine(f"{len(values)} comma-separated fields, the header has {n_fields}")
            user = parsers._identifier(values[0], "user_id")
            item = parsers._identifier(values[1], "parent_asin")
            if not values[3].strip().isdigit():
                raise _BadLine(f"'timestamp' is not whole milliseconds: {values[3]!r}")
            timestamp = parsers._timestamp(int(values[3]), "timestamp")
        except _BadLine as err:
            tally.malformed(first_line_no + offset, line, str(err))
            continue
        tally.good()
        rows.append((user, item, timestamp, values[4] if n_fields > len(HEADER) else "", first_line_no + offset))
    return pl.DataFrame(rows, schema={"user_id": pl.Utf8, "item_id": pl.Utf8, "timestamp": pl.Int64, HISTORY: pl.Utf8,
                                      "line": pl.Int64}, orient="row")


def _split_paths(files: dict[str, str | Path], with_history: bool) -> dict[str, Path]:
    """The three files, each checked to exist and to start with the official header (at once, before
    any row is read)."""
    missing = [part for part in SPLIT_FILES if not files.get(part)]
    if missing:
        raise ValueError(f"raw_files: no {missing} file(s) for source {SOURCE!r}; rerun data_download.")
    paths = {part: parsers._existing(files[part]) for part in SPLIT_FILES}
    expected = [*HEADER, HISTORY] if with_history else list(HEADER)
    for path in paths.values():
        with reading.open_binary(path) as handle:
            _after_header(path, handle.readline(), expected)
    return paths


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(2) == b"\x1f\x8b"
