"""Parse raw Amazon review dumps (2014, 2018, 2023 formats) and RecBole atomic files into the
intermediate tables of the contracts: ``raw_interactions`` (user_id, item_id, timestamp seconds,
file order) and ``raw_items`` (item_id, title, description, brand, categories, image_url).

Interactions come from files of tens of millions of lines, so the whole file is first read by
polars' native (multi-threaded, streaming-decompression) reader with only the three needed fields.
Only if that fails (a malformed line, a missing field) is the file re-read block by block, with a
per-line fallback inside the blocks that fail, so malformed lines are counted exactly and no good
row is lost (``rodpo.data.reading`` streams the blocks, without a UTF-8 BOM). Times are converted
to seconds by ``rodpo.data.timestamps``. Item metadata is parsed by ``rodpo.data.items``.
"""

from __future__ import annotations

import ast
import io
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import polars as pl

from rodpo.data.reading import first_line, line_blocks, prefetch, text_lines
from rodpo.data.timestamps import timestamps_in_seconds

logger = logging.getLogger(__name__)

SOURCES = ("demo", "amazon2014", "amazon2018", "amazon2023", "recbole")
_FORMAT_OF_SOURCE = {"demo": "amazon2018"}  # the demo generator writes the 2018 format

INTERACTION_SCHEMA = {"user_id": pl.Utf8, "item_id": pl.Utf8, "timestamp": pl.Int64}
ITEM_SCHEMA = {
    "item_id": pl.Utf8,
    "title": pl.Utf8,
    "description": pl.Utf8,
    "brand": pl.Utf8,
    "categories": pl.Utf8,
    "image_url": pl.Utf8,
}
SNIPPET_CHARS = 120
RECBOLE_SEP = "\t"
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # the range of the int64 timestamp column


class MalformedInputError(ValueError):
    """More lines of a raw file are unreadable than ``max_malformed_fraction`` tolerates."""


class _BadLine(Exception):
    """One unusable line; the message says why."""


@dataclass(frozen=True)
class ReviewFields:
    """Where a review format keeps the user, the item and the time (and the time's unit)."""

    user: str
    item: str
    time: str
    time_unit: str = "s"


REVIEW_FIELDS = {
    "amazon2014": ReviewFields("reviewerID", "asin", "unixReviewTime"),
    "amazon2018": ReviewFields("reviewerID", "asin", "unixReviewTime"),
    # 2023: items are keyed by parent_asin (what meta files use); timestamps are milliseconds.
    "amazon2023": ReviewFields("user_id", "parent_asin", "timestamp", "ms"),
}


# --------------------------------------------------------------------------- public API


def parse_interactions(
    path: str | Path, source: str, *, max_malformed_fraction: float = 0.001,
    timestamp_unit: str = "auto",
) -> pl.DataFrame:
    """Read a reviews file (or a RecBole ``.inter`` file) into user_id, item_id, timestamp
    (int64 seconds; ``timestamp_unit`` as in ``rodpo.data.timestamps``), one row per usable
    line, in file order."""
    fmt = _format(source)
    path = _existing(path)
    started = time.perf_counter()
    tally = _Tally(path, source, max_malformed_fraction)
    if fmt == "recbole":
        df, format_unit = _parse_recbole_inter(path, tally), None
    else:
        fields = REVIEW_FIELDS[fmt]
        df, format_unit = _parse_review_lines(path, fields, fmt == "amazon2014", tally), fields.time_unit
    tally.finish()
    if df.height == 0:
        raise ValueError(f"{path}: no interactions found (empty file?); check the download "
                         f"and that source={source!r} matches the file.")
    logger.info("%s: %d interactions in %.1fs", path.name, df.height,
                time.perf_counter() - started)
    return timestamps_in_seconds(df, timestamp_unit, path, format_unit)


def recbole_files(directory: str | Path, name: str) -> tuple[Path, Path | None]:
    """The ``<name>.inter`` file (required) and ``<name>.item`` file (None when absent)."""
    directory = Path(directory)
    inter = directory / f"{name}.inter"
    if not inter.is_file():
        raise FileNotFoundError(f"{inter}: RecBole interaction file not found; expected "
                                f"<dataset>/{name}.inter (check the dataset name and folder).")
    item = directory / f"{name}.item"
    return inter, item if item.is_file() else None


# --------------------------------------------------------------------------- malformed lines


class _Tally:
    """Counts usable and malformed lines; raises past the tolerance, else warns once."""

    def __init__(self, path: Path, source: str, max_fraction: float) -> None:
        self.path, self.source, self.max_fraction = path, source, max_fraction
        self.lines = 0
        self.bad = 0
        self.first: tuple[int, str, str] | None = None

    def good(self, n: int = 1) -> None:
        self.lines += n

    def malformed(self, line_no: int, line: bytes | str, reason: str) -> None:
        self.lines += 1
        self.bad += 1
        if self.first is None:
            text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
            self.first = (line_no, text.strip()[:SNIPPET_CHARS], reason)

    def finish(self) -> None:
        if not self.bad:
            return
        line_no, snippet, reason = self.first
        summary = (f"{self.path}: {self.bad} of {self.lines} lines malformed "
                   f"({self.bad / self.lines:.3%}); first at line {line_no} ({reason}): "
                   f"{snippet!r}")
        if self.bad / self.lines > self.max_fraction:
            raise MalformedInputError(
                f"{summary}. That is more than max_malformed_fraction={self.max_fraction}. "
                f"Check the file is complete and is a {self.source!r} file; if the damage is "
                "expected, raise max_malformed_fraction."
            )
        logger.warning("%s; skipped them (under max_malformed_fraction=%s)", summary,
                       self.max_fraction)


# --------------------------------------------------------------------------- interactions


def _parse_review_lines(path: Path, fields: ReviewFields, allow_literal: bool,
                        tally: _Tally) -> pl.DataFrame:
    schema = {fields.user: pl.Utf8, fields.item: pl.Utf8, fields.time: pl.Int64}
    try:
        df = _reviews_frame(pl.read_ndjson(path, schema=schema), fields)
    except (pl.exceptions.PolarsError, OSError) as err:  # OSError: truncated gzip
        logger.info("%s: fast read failed (%s); re-reading line by line", path.name,
                    str(err).splitlines()[0][:SNIPPET_CHARS])
    else:
        if _is_clean(df):
            tally.good(df.height)
            return df
        logger.info("%s: some lines lack a field; re-reading line by line", path.name)
    return _parse_review_blocks(path, fields, allow_literal, tally)


def _parse_review_blocks(path: Path, fields: ReviewFields, allow_literal: bool, tally: _Tally) -> pl.DataFrame:
    """Exact slow path: the frames of ``review_blocks``, concatenated."""
    frames = list(review_blocks(path, fields, allow_literal, tally))
    if not frames:
        return pl.DataFrame(schema=INTERACTION_SCHEMA)
    return pl.concat(frames, rechunk=True)


def review_blocks(path: Path, fields: ReviewFields, allow_literal: bool, tally: _Tally) -> Iterator[pl.DataFrame]:
    """JSON-lines reviews, one frame per block of lines: polars per block, per-line parsing for
    blocks that fail, so malformed lines are counted exactly and no good row is lost (the
    in-memory parser's slow path and the streaming scan's only path)."""
    schema = {fields.user: pl.Utf8, fields.item: pl.Utf8, fields.time: pl.Int64}
    for first_line_no, block in prefetch(line_blocks(path)):
        n_lines = block.count(b"\n")
        try:
            df = _reviews_frame(pl.read_ndjson(io.BytesIO(block), schema=schema), fields)
            if df.height == n_lines and _is_clean(df):
                tally.good(df.height)
                yield df
                continue
        except pl.exceptions.PolarsError:
            pass
        rows = []
        for offset, line in enumerate(block.split(b"\n")[:n_lines]):
            if not line.strip():
                continue
            try:
                rows.append(_interaction(_load_record(line, allow_literal), fields))
            except _BadLine as err:
                tally.malformed(first_line_no + offset, line, str(err))
                continue
            tally.good()
        yield pl.DataFrame(rows, schema=INTERACTION_SCHEMA, orient="row")


def _reviews_frame(df: pl.DataFrame, fields: ReviewFields) -> pl.DataFrame:
    return df.select(
        pl.col(fields.user).alias("user_id"),
        pl.col(fields.item).alias("item_id"),
        pl.col(fields.time).alias("timestamp"),
    )


def _is_clean(df: pl.DataFrame) -> bool:
    """No null field and no empty id: otherwise the slow path decides line by line."""
    return not df.select(
        pl.any_horizontal(pl.all().is_null().any())
        | (pl.col("user_id") == "").any()
        | (pl.col("item_id") == "").any()
    ).item()


def _interaction(record: dict, fields: ReviewFields) -> tuple[str, str, int]:
    user = _identifier(record.get(fields.user), fields.user)
    item = _identifier(record.get(fields.item), fields.item)
    raw_time = record.get(fields.time)
    return user, item, _timestamp(raw_time, fields.time)


def _timestamp(raw: object, key: str) -> int:
    """The whole-number time of one line (int, float or numeric string, in the file's unit).

    Anything that cannot be an int64 (missing, text, inf, nan, 1e23) is a malformed line, not
    a crash: polars would otherwise fail building the column, naming neither file nor line.
    """
    if isinstance(raw, bool) or raw is None:
        raise _BadLine(f"no usable {key!r}")
    try:
        value = raw if isinstance(raw, int) else float(raw)
    except (TypeError, ValueError, OverflowError):
        raise _BadLine(f"{key!r} is not a number: {raw!r}") from None
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _BadLine(f"{key!r} is not finite: {raw!r}")
        value = int(value)
    if not INT64_MIN <= value <= INT64_MAX:
        raise _BadLine(f"{key!r} is {raw!r}, beyond the int64 range of a timestamp")
    return value


def _identifier(value: object, key: str) -> str:
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise _BadLine(f"no usable {key!r}")


def _parse_recbole_inter(path: Path, tally: _Tally) -> pl.DataFrame:
    header = _recbole_header(path)
    columns = {
        out: _recbole_column(header, name, path)
        for out, name in (("user_id", "user_id"), ("item_id", "item_id"),
                          ("timestamp", "timestamp"))
    }
    try:
        raw = pl.read_csv(path, separator=RECBOLE_SEP, quote_char=None, infer_schema=False,
                          has_header=True, columns=[header[i] for i in columns.values()])
        df = raw.select(
            pl.col(header[columns["user_id"]]).alias("user_id"),
            pl.col(header[columns["item_id"]]).alias("item_id"),
            pl.col(header[columns["timestamp"]]).str.strip_chars()
            .cast(pl.Float64, strict=False).cast(pl.Int64, strict=False).alias("timestamp"),
        )
    except (pl.exceptions.PolarsError, OSError) as err:  # OSError: truncated gzip
        logger.info("%s: fast read failed (%s); re-reading line by line", path.name, err)
    else:
        if _is_clean(df):
            tally.good(df.height)
            return df
    rows = []
    for line_no, line in text_lines(path, skip_header=True):
        try:
            rows.append(recbole_interaction(line, header, columns))
        except _BadLine as err:
            tally.malformed(line_no, line, str(err))
            continue
        tally.good()
    return pl.DataFrame(rows, schema=INTERACTION_SCHEMA, orient="row")


def recbole_interaction(line: str, header: list[str], columns: dict[str, int]) -> tuple[str, str, int]:
    """(user_id, item_id, timestamp) of one ``.inter`` line; `columns`: their indices in `header`."""
    fields = line.rstrip("\r\n").split(RECBOLE_SEP)
    if len(fields) != len(header):
        raise _BadLine(f"{len(fields)} tab-separated fields, header has {len(header)}")
    return (_identifier(fields[columns["user_id"]], "user_id"), _identifier(fields[columns["item_id"]], "item_id"),
            _timestamp(fields[columns["timestamp"]], "timestamp"))


# --------------------------------------------------------------------------- file reading


def _format(source: str) -> str:
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; expected one of {list(SOURCES)} "
                         "(the dataset preset's `source`).")
    return _FORMAT_OF_SOURCE.get(source, source)


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; run the download step first or fix the "
                                "dataset preset (source, category, base_url).")
    return path


def _load_record(line: bytes, allow_literal: bool) -> dict:
    """One JSON object per line; 2014 files may hold Python dict literals (literal_eval only)."""
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        if not allow_literal:
            raise _BadLine("not valid JSON") from None
        try:
            record = ast.literal_eval(line.decode("utf-8"))
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError,
                UnicodeDecodeError):
            raise _BadLine("neither JSON nor a Python dict literal") from None
    if not isinstance(record, dict):
        raise _BadLine(f"a JSON {type(record).__name__}, not an object")
    return record


def _recbole_header(path: Path) -> list[str]:
    first = first_line(path)
    header = first.split(RECBOLE_SEP)
    if not first or not all(":" in name for name in header):
        raise ValueError(f"{path}: first line {first[:SNIPPET_CHARS]!r} is not a RecBole typed "
                         "header (name:type, tab-separated); is this a RecBole atomic file?")
    return header


def _recbole_column(header: list[str], name: str, path: Path, *, required: bool = True):
    for index, column in enumerate(header):
        if column.split(":", 1)[0] == name:
            return index
    if required:
        raise ValueError(f"{path}: no {name!r} column in the header {header}; RecBole "
                         f"atomic files need '{name}:<type>'.")
    return None
