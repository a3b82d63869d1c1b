"""Data processing in memory that grows with users and items, not with interactions.

The same steps as ``preprocess.preprocess_interactions`` (the in-memory reference; the outputs are
tested equal on every format), as polars queries on the streaming engine:

1. codes: each user and item string gets an int code by first appearance (one streaming group-by
   per side, O(users + items) memory); the coded rows are written to disk in user buckets;
2. duplicates: per bucket (a user's rows never leave its bucket), the reference's
   ``drop_duplicate_interactions``;
3. k-core: each round is one streaming count per side over all buckets, filtered by the users and
   items still alive (O(users + items));
4. ids: first appearance among the kept rows in file order (the reference's rule), then the rows are
   written again in buckets of consecutive new user ids;
5. time sort: bucket by bucket, so the concatenation is sorted by (user, timestamp, file row).

Buckets hold ``rows_per_bucket`` rows on average: one bucket at a time is in memory. The returned
LazyFrames read the buckets when they are sunk (``rodpo.lazy_parquet``) and remove them after the
last one; ``work_dir`` is emptied first, so a crashed run leaves nothing a later run would read.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import polars as pl

from rodpo.data.preprocess import (
    ID_DTYPE, ITEM, TIME, TIME_DTYPE, USER, EmptyDatasetError, build_sequences, drop_duplicate_interactions,
)
from rodpo.data.raw_scan import scan_frames

logger = logging.getLogger(__name__)

SPLIT = "split"  # given split label of a row (amazon2023_benchmark): 0 train, 1 valid, 2 test
_ROW = "_row"  # position in the raw file: the tie-breaker of every "first" and of the time sort
_CODE = "_code"
_BUCKET = "_bucket"
DEFAULT_ROWS_PER_BUCKET = 4_000_000
STREAMING = "streaming"


def process_interactions(raw: pl.LazyFrame, *, k_core: int = 5, drop_duplicates: bool = True,
                         work_dir: str | Path, rows_per_bucket: int = DEFAULT_ROWS_PER_BUCKET,
                         ) -> tuple[pl.LazyFrame, pl.DataFrame, pl.DataFrame]:
    """Raw string-id rows -> (interactions, user_id_map, item_id_map), as the reference computes them.

    ``interactions`` is a LazyFrame over the bucket files in ``work_dir``: sink it once (the files are
    removed after it has been read to the end). A ``split`` column in ``raw`` (the given split of the
    2023 benchmark files) is carried along and sorts before the timestamp within a user, so a given
    split stays contiguous: train rows, then valid, then test.
    """
    if k_core < 1:
        raise ValueError(f"data_processing.k_core={k_core} must be >= 1 (1 keeps everything).")
    if rows_per_bucket < 1:
        raise ValueError(f"data_processing.rows_per_bucket={rows_per_bucket} must be >= 1.")
    work = _fresh(Path(work_dir))
    with timed("codes"):
        raw = _validated(raw).with_row_index(_ROW)
        carried = [SPLIT] if SPLIT in raw.collect_schema() else []
        user_codes, item_codes = pl.collect_all(
            [_first_appearance_query(raw, column) for column in (USER, ITEM)], engine=STREAMING)
        _refuse_nulls(user_codes, item_codes)
        user_codes, item_codes = _numbered(user_codes), _numbered(item_codes)
        n_raw = int(user_codes["n"].sum())
        if n_raw == 0:
            raise EmptyDatasetError(
                "raw_interactions is empty: the parser found no interactions. Check that the raw file was "
                "downloaded completely and that the dataset preset names the right source.")
        n_buckets = max(1, math.ceil(n_raw / rows_per_bucket))
        coded = (raw.join(user_codes.lazy().select(USER, pl.col(_CODE).alias("_u")), on=USER)
                 .join(item_codes.lazy().select(ITEM, pl.col(_CODE).alias("_i")), on=ITEM)
                 .select(pl.col("_u").alias(USER), pl.col("_i").alias(ITEM), TIME, _ROW, *carried))
        _sink_buckets(coded.with_columns((pl.col(USER) % n_buckets).alias(_BUCKET)), work / "coded")

    with timed("duplicates"):
        deduplicated = work / "deduplicated"
        deduplicated.mkdir()
        n_after_duplicates = 0
        for bucket, rows in _buckets(work / "coded"):
            rows = rows.sort(_ROW)
            if drop_duplicates:
                rows = drop_duplicate_interactions(rows)
            n_after_duplicates += rows.height
            rows.write_parquet(deduplicated / f"{bucket:06d}.parquet")
        if drop_duplicates:
            logger.info("dropped %d duplicate (user, item) rows", n_raw - n_after_duplicates)
        shutil.rmtree(work / "coded")

    with timed("k_core"):
        kept = _k_core(pl.scan_parquet(deduplicated / "*.parquet"), k_core)
    with timed("ids"):
        new_users, new_items = (_first_appearance(kept, column) for column in (USER, ITEM))
    if new_users.height == 0:
        raise EmptyDatasetError(
            f"{k_core}-core filtering removed every interaction: the input had {n_raw:,} actions by "
            f"{user_codes.height:,} users on {item_codes.height:,} items ({n_after_duplicates:,} after dropping "
            f"duplicates), but no set of users and items with >= {k_core} interactions each. Lower k_core "
            "(the paper uses 5) or use a larger dataset.")
    user_id_map = _id_map(new_users, user_codes, USER)
    item_id_map = _id_map(new_items, item_codes, ITEM)
    n_users = new_users.height
    final = (kept.join(new_users.lazy().select(USER, pl.col(_CODE).alias("_u")), on=USER)
             .join(new_items.lazy().select(ITEM, pl.col(_CODE).alias("_i")), on=ITEM)
             .select(pl.col("_u").alias(USER), pl.col("_i").alias(ITEM), TIME, _ROW, *carried))
    users_per_bucket = math.ceil(n_users / n_buckets)
    with timed("ids"):
        _sink_buckets(final.with_columns(((pl.col(USER) - 1) // users_per_bucket).alias(_BUCKET)), work / "final")
    shutil.rmtree(deduplicated)
    order = [USER, *carried, TIME, _ROW]
    columns = [pl.col(USER).cast(ID_DTYPE), pl.col(ITEM).cast(ID_DTYPE), pl.col(TIME).cast(TIME_DTYPE),
               *(pl.col(SPLIT).cast(pl.Int8) for _ in carried)]

    def sorted_buckets() -> Iterator[pl.DataFrame]:
        if not (work / "final").is_dir():
            raise RuntimeError(f"{work}: the sorted buckets of this run are gone (a LazyFrame from "
                               "process_interactions is read once); rerun data_processing.")
        for _, rows in _buckets(work / "final"):
            with timed("time_sort"):
                rows = rows.sort(order).select(columns)
            yield rows
        shutil.rmtree(work, ignore_errors=True)

    schema = {USER: ID_DTYPE, ITEM: ID_DTYPE, TIME: TIME_DTYPE, **({SPLIT: pl.Int8} if carried else {})}
    return scan_frames(sorted_buckets, schema, "sorted interactions"), user_id_map, item_id_map


def build_sequences_streaming(interactions: pl.LazyFrame, *, rows_per_bucket: int = DEFAULT_ROWS_PER_BUCKET
                              ) -> pl.LazyFrame:
    """``preprocess.build_sequences`` over consecutive ranges of user ids, one range in memory at a time.

    ``interactions`` must be sorted by user (``process_interactions`` writes it so): each range is read
    with the Parquet statistics, not by a pass over the whole file. A ``split`` column becomes a
    ``splits`` list next to ``item_ids``.
    """
    counts = interactions.select(pl.len().alias("n"), pl.col(USER).max().alias("last")).collect(engine=STREAMING)
    n_rows, last_user = int(counts["n"][0]), counts["last"][0]
    has_split = SPLIT in interactions.collect_schema()
    users_per_range = max(1, math.ceil((last_user or 0) * rows_per_bucket / max(n_rows, 1)))

    def ranges() -> Iterator[pl.DataFrame]:
        for start in range(1, (last_user or 0) + 1, users_per_range):
            rows = interactions.filter(pl.col(USER).is_between(start, start + users_per_range, closed="left"))
            rows = rows.collect(engine=STREAMING)
            if not has_split:
                yield build_sequences(rows)
                continue
            # A given split is ordered (user, split, timestamp): times may step back at a split boundary.
            yield rows.group_by(USER, maintain_order=True).agg(
                pl.col(ITEM).alias("item_ids"), pl.col(TIME).alias("timestamps"), pl.col(SPLIT).alias("splits"))

    schema = {USER: ID_DTYPE, "item_ids": pl.List(ID_DTYPE), "timestamps": pl.List(TIME_DTYPE),
              **({"splits": pl.List(pl.Int8)} if has_split else {})}
    return scan_frames(ranges, schema, "sequences")


# ----------------------------------------------------------------------------- steps


@contextmanager
def timed(step: str) -> Iterator[None]:
    """Log a step's wall time (``rodpo.data.streaming`` at DEBUG; bench_processing reads the records)."""
    started = time.perf_counter()
    yield
    logger.debug("step %s %.6f", step, time.perf_counter() - started)


def _validated(raw: pl.LazyFrame) -> pl.LazyFrame:
    """The reference's column and dtype checks (nulls are counted by the first group-bys)."""
    schema = raw.collect_schema()
    missing = [c for c in (USER, ITEM, TIME) if c not in schema]
    if missing:
        raise ValueError(f"raw_interactions: missing column(s) {missing}; got {list(schema)}. Expected the parsed "
                         f"table of rodpo.data.parsers (columns {[USER, ITEM, TIME]}).")
    if not schema[TIME].is_integer():
        raise ValueError(f"raw_interactions.timestamp has dtype {schema[TIME]}, expected int64 unix seconds; "
                         "convert it in the parser.")
    carried = [SPLIT] if SPLIT in schema else []
    return raw.select(USER, ITEM, pl.col(TIME).cast(TIME_DTYPE), *carried)


def _first_appearance_query(rows: pl.LazyFrame, column: str) -> pl.LazyFrame:
    """(value, first row, n rows, null timestamps) per distinct value: one streaming group-by."""
    return rows.group_by(column).agg(pl.col(_ROW).min(), pl.len().alias("n"), pl.col(TIME).null_count().alias("_nt"))


def _numbered(firsts: pl.DataFrame) -> pl.DataFrame:
    """``_code`` 1..N by first appearance in file order."""
    firsts = firsts.sort(_ROW)
    return firsts.with_columns(pl.int_range(1, firsts.height + 1, dtype=ID_DTYPE).alias(_CODE))


def _first_appearance(rows: pl.LazyFrame, column: str) -> pl.DataFrame:
    return _numbered(_first_appearance_query(rows, column).collect(engine=STREAMING))


def _refuse_nulls(users: pl.DataFrame, items: pl.DataFrame) -> None:
    nulls = {USER: int(users.filter(pl.col(USER).is_null())["n"].sum()),
             ITEM: int(items.filter(pl.col(ITEM).is_null())["n"].sum()), TIME: int(users["_nt"].sum())}
    if any(nulls.values()):
        raise ValueError(f"raw_interactions: null values {nulls} in id/timestamp columns; the parser should drop "
                         "rows without a reviewer, item or time.")


def _id_map(new: pl.DataFrame, codes: pl.DataFrame, column: str) -> pl.DataFrame:
    """(id, original_id) sorted by the new id: new rows hold old codes in ``column``."""
    originals = codes.sort(_CODE).get_column(column)
    return pl.DataFrame({
        column: new.get_column(_CODE),
        f"original_{column}": originals.gather(new.get_column(column) - 1),
    })


def _k_core(rows: pl.LazyFrame, k: int) -> pl.LazyFrame:
    """The rows of the maximal k-core: each round drops the users and items with < k rows at once
    (the reference's rule, so the same fixpoint); only the alive id sets are held in memory."""
    if k <= 1:
        return rows
    kept, rounds = rows, 0
    while True:
        users, items = pl.collect_all([kept.group_by(USER).len(), kept.group_by(ITEM).len()], engine=STREAMING)
        rounds += 1
        if users.height == 0 or (users["len"].min() >= k and items["len"].min() >= k):
            logger.info("k-core (k=%d) stable after %d round(s): %d rows", k, rounds, int(users["len"].sum()))
            return kept
        alive_users = users.filter(pl.col("len") >= k).select(USER)
        alive_items = items.filter(pl.col("len") >= k).select(ITEM)
        kept = rows.join(alive_users.lazy(), on=USER, how="semi").join(alive_items.lazy(), on=ITEM, how="semi")


def _sink_buckets(rows: pl.LazyFrame, folder: Path) -> None:
    rows.sink_parquet(pl.PartitionBy(folder, key=_BUCKET, include_key=False), mkdir=True, engine=STREAMING)


def _buckets(folder: Path) -> Iterator[tuple[int, pl.DataFrame]]:
    """(bucket number, its rows) in bucket order; a bucket may be split over several files."""
    numbered = sorted((int(part.name.split("=", 1)[1]), part) for part in folder.iterdir() if "=" in part.name)
    for number, part in numbered:
        yield number, pl.read_parquet(sorted(part.glob("*.parquet")))


def _fresh(work: Path) -> Path:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    return work
