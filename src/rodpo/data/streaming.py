"""Data processing in memory that grows with users and items, not with interactions.

The same steps as ``preprocess.preprocess_interactions`` (the in-memory reference; the outputs are
tested equal on every format), over buckets of users on disk:

1. codes: each user and item id gets an int code by first appearance (one polars streaming group-by
   per side on a hash key of the id, O(users + items)); the coded rows go to disk in user buckets;
2. duplicates: per bucket (a user's rows never leave its bucket), the earliest row of each pair;
3. k-core, 4. ids by first appearance among the kept rows in file order: array lookups on the dense
   codes (``rodpo.data.buckets``), then the rows go to buckets of consecutive new user ids;
5. time sort: bucket by bucket, so the concatenation is sorted by (user, timestamp, file row).

A bucket holds ``rows_per_bucket`` rows on average, and one bucket at a time is in memory. The
returned LazyFrame reads the sorted buckets when it is sunk (``rodpo.lazy_parquet``) and removes them
after the last one; ``work_dir`` is emptied first, so a crashed run leaves nothing a later run reads.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import polars as pl

from rodpo.data import buckets
from rodpo.data.preprocess import ID_DTYPE, ITEM, TIME, TIME_DTYPE, USER, EmptyDatasetError, build_sequences
from rodpo.data.raw_scan import scan_frames

logger = logging.getLogger(__name__)

SPLIT = "split"  # given split label of a row (amazon2023_benchmark): 0 train, 1 valid, 2 test
_ROW = buckets.ROW  # position in the raw file: the tie-breaker of every "first" and of the time sort
_CODE = "_code"
_BUCKET = "_bucket"
DEFAULT_ROWS_PER_BUCKET = 4_000_000
_KEYS = {USER: "_uk", ITEM: "_ik"}  # 64-bit keys of the id strings (see _keyed)
_HASH_SEEDS = (0x9E3779B97F4A7C15, 0xD1B54A32D192ED03)
_USER_CHECK = "_uk2"  # a second hash of the user id, carried into the buckets for the key check
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
        keyed = _keyed(_validated(raw).with_row_index(_ROW))
        carried = [SPLIT] if SPLIT in keyed.collect_schema() else []
        # one query at a time: collected together, polars shares one scan and holds twice the memory
        _refuse_nulls(keyed.select(pl.col(USER, ITEM, TIME).null_count()).collect(engine=STREAMING).row(0, named=True))
        user_codes, item_codes = (_first_appearance_query(keyed, column).collect(engine=STREAMING)
                                  for column in (USER, ITEM))
        _refuse_shared_keys(item_codes.filter(pl.col("_k2_min") != pl.col("_k2_max")).height, ITEM)
        user_codes, item_codes = _numbered(user_codes), _numbered(item_codes)
        n_raw = int(user_codes["n"].sum())
        if n_raw == 0:
            raise EmptyDatasetError(
                "raw_interactions is empty: the parser found no interactions. Check that the raw file was "
                "downloaded completely and that the dataset preset names the right source.")
        n_buckets = max(1, math.ceil(n_raw / rows_per_bucket))
        coded = (keyed.join(user_codes.lazy().select(_KEYS[USER], pl.col(_CODE).alias("_u")), on=_KEYS[USER])
                 .join(item_codes.lazy().select(_KEYS[ITEM], pl.col(_CODE).alias("_i")), on=_KEYS[ITEM])
                 .select(pl.col("_u").alias(USER), pl.col("_i").alias(ITEM), TIME, _ROW, *carried,
                         _USER_CHECK))
        _sink_buckets(coded.with_columns((pl.col(USER) % n_buckets).alias(_BUCKET)), work / "coded")

    with timed("duplicates"):
        deduplicated = work / "deduplicated"
        deduplicated.mkdir()
        stems, n_after_duplicates = [], 0
        for bucket, rows in _buckets(work / "coded"):
            # a user code's rows all land in this bucket: two ids under one key differ in the second hash
            _refuse_shared_keys(rows.select(pl.col(_USER_CHECK).n_unique() - pl.col(USER).n_unique()).item(), USER)
            rows = rows.drop(_USER_CHECK).sort(_ROW)
            if drop_duplicates:
                rows = buckets.earliest_per_pair(rows)
            n_after_duplicates += rows.height
            stems.append(deduplicated / f"{bucket:06d}")
            rows.write_parquet(f"{stems[-1]}.parquet")
            buckets.save_arrays(rows, stems[-1])
        if drop_duplicates:
            logger.info("dropped %d duplicate (user, item) rows", n_raw - n_after_duplicates)
        shutil.rmtree(work / "coded")

    with timed("k_core"):
        alive_users, alive_items = buckets.k_core_members(stems, user_codes.height, item_codes.height, k_core,
                                                          n_buckets, work)
    with timed("ids"):
        new_users, new_items = buckets.first_appearance_ids(stems, alive_users, alive_items)
    n_users = int(new_users.max(initial=0))
    if n_users == 0:
        raise EmptyDatasetError(
            f"{k_core}-core filtering removed every interaction: the input had {n_raw:,} actions by "
            f"{user_codes.height:,} users on {item_codes.height:,} items ({n_after_duplicates:,} after dropping "
            f"duplicates), but no set of users and items with >= {k_core} interactions each. Lower k_core "
            "(the paper uses 5) or use a larger dataset.")
    with timed("id_maps"):
        user_id_map = _id_map(new_users, user_codes, USER, keyed)
        item_id_map = _id_map(new_items, item_codes, ITEM, keyed)
    del user_codes, item_codes
    users_per_bucket = math.ceil(n_users / n_buckets)
    with timed("ids"):  # rows again in buckets, now of consecutive new user ids
        for stem in stems:
            rows = buckets.relabelled(pl.read_parquet(f"{stem}.parquet"), new_users, new_items)
            for (target,), part in rows.group_by(((pl.col(USER) - 1) // users_per_bucket).alias(_BUCKET)):
                folder = work / "final" / f"{_BUCKET}={target}"
                folder.mkdir(parents=True, exist_ok=True)
                part.write_parquet(folder / f"{stem.name}.parquet")
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


def _keyed(raw: pl.LazyFrame) -> pl.LazyFrame:
    """Each user and item id also as a 64-bit key (a seeded hash): a streaming group-by over 10^7
    distinct ids takes a third of the memory with integer keys. Keys are checked against a second,
    independent hash (users in their bucket, items in their group-by), so two ids under one key stop
    the run unless both hashes collide at once (~ n^2 / 2^129)."""
    return raw.with_columns(pl.col(USER).hash(_HASH_SEEDS[0]).alias(_KEYS[USER]),
                            pl.col(USER).hash(_HASH_SEEDS[1]).alias(_USER_CHECK),
                            pl.col(ITEM).hash(_HASH_SEEDS[0]).alias(_KEYS[ITEM]),
                            pl.col(ITEM).hash(_HASH_SEEDS[1]).alias("_k2"))


def _first_appearance_query(rows: pl.LazyFrame, column: str) -> pl.LazyFrame:
    """Per distinct key of ``column``: first row and n rows: one streaming group-by. On coded rows
    (int ids) the column itself is the key; item keys also carry their second hash's range."""
    key = _KEYS[column] if _KEYS[column] in rows.collect_schema() else column
    checks = [pl.col("_k2").min().alias("_k2_min"), pl.col("_k2").max().alias("_k2_max")] if key == _KEYS[ITEM] else []
    return rows.group_by(key).agg(pl.col(_ROW).min(), pl.len().alias("n"), *checks)


def _numbered(firsts: pl.DataFrame) -> pl.DataFrame:
    """``_code`` 1..N by first appearance in file order."""
    firsts = firsts.sort(_ROW)
    return firsts.with_columns(pl.int_range(1, firsts.height + 1, dtype=ID_DTYPE).alias(_CODE))


def _refuse_nulls(nulls: dict[str, int]) -> None:
    if any(nulls.values()):
        raise ValueError(f"raw_interactions: null values {nulls} in id/timestamp columns; the parser should drop "
                         "rows without a reviewer, item or time.")


def _refuse_shared_keys(n_shared: int, column: str) -> None:
    if n_shared:
        raise RuntimeError(f"raw_interactions: {n_shared} {column} key(s) stand for several ids (a 64-bit hash "
                           "collision, about one in 10^7 for 10^7 ids); please report it with the dataset.")


def _id_map(new_ids: np.ndarray, codes: pl.DataFrame, column: str, keyed: pl.LazyFrame) -> pl.DataFrame:
    """(id, original_id) sorted by the new id. ``new_ids[old code]`` is the new id (0 = dropped); the
    original strings of the kept ids are read back from the raw rows by their keys (one pass)."""
    key = _KEYS[column]
    old_codes = np.flatnonzero(new_ids)
    keys = codes.sort(_CODE).get_column(key).gather(old_codes - 1)
    kept = pl.DataFrame({key: keys, "_new": new_ids[old_codes]})
    originals = (keyed.select(key, column).join(kept.lazy(), on=key)
                 .group_by("_new").agg(pl.col(column).first())
                 .collect(engine=STREAMING).sort("_new"))
    return originals.select(pl.col("_new").cast(ID_DTYPE).alias(column), pl.col(column).alias(f"original_{column}"))


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
