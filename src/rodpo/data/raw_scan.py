"""Raw interaction files as polars LazyFrames that read block by block (bounded memory).

``parsers.parse_interactions`` reads a whole file into memory (fast, and the reference this module
is tested against). Here the same rows come out of a generator of blocks, registered as a polars IO
source: a sink pulls one decompressed block (``parsers.BLOCK_BYTES``) at a time, so a 10^8-line file
never sits in memory. Each block goes through polars' reader; a block that fails is re-read line by
line with the parser's own record rules, so malformed lines are counted exactly, reported with
their file and line number, and no good row is lost.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path

import polars as pl
from polars.io.plugins import register_io_source

from rodpo.data import parsers
from rodpo.data.parsers import INTERACTION_SCHEMA, REVIEW_FIELDS, _BadLine, _Tally
from rodpo.data.reading import PREFETCH_BLOCKS, line_blocks, prefetch
from rodpo.data.timestamps import UNITS_PER_SECOND, resolved_unit


def scan_frames(blocks: Callable[[], Iterator[pl.DataFrame]], schema: dict, name: str) -> pl.LazyFrame:
    """A LazyFrame whose rows are the DataFrames ``blocks()`` yields, in order, pulled on demand."""

    def source(with_columns, predicate, n_rows, _batch_size) -> Iterator[pl.DataFrame]:
        left = n_rows
        for frame in blocks():
            if with_columns is not None:
                frame = frame.select(with_columns)
            if predicate is not None:
                frame = frame.filter(predicate)
            if left is not None:
                frame = frame.head(left)
                left -= frame.height
            yield frame
            if left is not None and left <= 0:
                return

    return register_io_source(source, schema=schema, explain_name=name)


def scan_interactions(path: str | Path, source: str, *, max_malformed_fraction: float = 0.001,
                      timestamp_unit: str = "auto") -> pl.LazyFrame:
    """The rows ``parsers.parse_interactions(path, source)`` returns, as a block-streaming LazyFrame.

    Malformed lines are tallied as the blocks pass; past ``max_malformed_fraction`` the sink fails
    with the parser's error (file, first bad line, the parameter). Raises at once for an unknown
    source or a missing file. Timestamps come out in seconds (``rodpo.data.timestamps``: the
    format's unit, or with ``auto`` and none, the median of one streaming pass decides).
    """
    fmt = parsers._format(source)
    path = parsers._existing(path)
    scan = _scan(path, source, fmt, max_malformed_fraction)
    unit = resolved_unit(timestamp_unit, None if fmt == "recbole" else REVIEW_FIELDS[fmt].time_unit, path,
                         lambda: scan.select(pl.col("timestamp").median()).collect(engine="streaming").item())
    if UNITS_PER_SECOND[unit] == 1:
        return scan
    return scan.with_columns(pl.col("timestamp") // UNITS_PER_SECOND[unit])


def _scan(path: Path, source: str, fmt: str, max_malformed_fraction: float) -> pl.LazyFrame:
    if fmt == "recbole":
        header = parsers._recbole_header(path)
        columns = {name: parsers._recbole_column(header, name, path) for name in INTERACTION_SCHEMA}

        def blocks() -> Iterator[pl.DataFrame]:
            tally = _Tally(path, source, max_malformed_fraction)
            yield from _checked(_recbole_blocks(path, header, columns, tally), tally, path, source)
    else:
        fields = REVIEW_FIELDS[fmt]

        def blocks() -> Iterator[pl.DataFrame]:
            tally = _Tally(path, source, max_malformed_fraction)
            frames = parsers.review_blocks(path, fields, fmt == "amazon2014", tally)
            yield from _checked(frames, tally, path, source)

    return scan_frames(blocks, INTERACTION_SCHEMA, f"{source}:{path.name}")


def _checked(frames: Iterator[pl.DataFrame], tally: _Tally, path: Path, source: str) -> Iterator[pl.DataFrame]:
    """Pass the frames on; at the end apply the malformed-line tolerance and refuse an empty file."""
    rows = 0
    for frame in frames:
        rows += frame.height
        yield frame
    tally.finish()
    if rows == 0:
        raise ValueError(f"{path}: no interactions found (empty file?); check the download and that "
                         f"source={source!r} matches the file.")


def _recbole_blocks(path: Path, header: list[str], columns: dict[str, int], tally: _Tally) -> Iterator[pl.DataFrame]:
    """A RecBole ``.inter`` file after its typed header, one frame per block."""
    names = [f"c{i}" for i in range(len(header))]
    for first_line_no, block in prefetch(line_blocks(path), PREFETCH_BLOCKS):
        if first_line_no == 1:  # drop the header line
            block = block[block.index(b"\n") + 1:]
            first_line_no = 2
        if not block:
            continue
        lines = [line for line in block.split(b"\n")[:-1]]
        try:
            raw = pl.read_csv(io.BytesIO(block), separator=parsers.RECBOLE_SEP, quote_char=None,
                              has_header=False, new_columns=names, infer_schema=False)
            frame = raw.select(
                pl.col(names[columns["user_id"]]).alias("user_id"),
                pl.col(names[columns["item_id"]]).alias("item_id"),
                pl.col(names[columns["timestamp"]]).str.strip_chars()
                .cast(pl.Float64, strict=False).cast(pl.Int64, strict=False).alias("timestamp"),
            )
            if frame.height == sum(1 for line in lines if line.strip()) and parsers._is_clean(frame):
                tally.good(frame.height)
                yield frame
                continue
        except pl.exceptions.PolarsError:
            pass
        rows = []
        for offset, raw_line in enumerate(lines):
            if not raw_line.strip():
                continue
            line = raw_line.decode("utf-8", "replace")
            try:
                rows.append(parsers.recbole_interaction(line, header, columns))
            except _BadLine as err:
                tally.malformed(first_line_no + offset, line, str(err))
                continue
            tally.good()
        yield pl.DataFrame(rows, schema=INTERACTION_SCHEMA, orient="row")
