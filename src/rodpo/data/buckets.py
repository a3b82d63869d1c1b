"""The middle of streaming processing on dense integer codes, one user bucket at a time.

After ``streaming`` has numbered users and items 1..N (first appearance) and written the rows into
buckets of users (``user code % n_buckets``, each bucket sorted by file row), the steps that would
otherwise be hash joins over 10^7 ids are array lookups: a user's or item's state lives at its
code in a NumPy array (O(users + items) memory), and each bucket is read, filtered and counted with
vectorised gathers and ``bincount``. The results equal the reference's (``preprocess``; tested).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import polars as pl

from rodpo.data.preprocess import ID_DTYPE, ITEM, TIME, USER

logger = logging.getLogger(__name__)

ROW = "_row"
_NO_ROW = np.iinfo(np.int64).max
_ARRAYS = (USER, ITEM, ROW)


def earliest_per_pair(rows: pl.DataFrame) -> pl.DataFrame:
    """``preprocess.drop_duplicate_interactions`` on coded rows sorted by file row: per (user, item)
    the earliest timestamp, ties by file row, in file-row order; as two sorts on a packed pair key."""
    pair = pl.col(USER).cast(pl.Int64) * (1 << 32) + pl.col(ITEM).cast(pl.Int64)  # codes are < 2^31
    ordered = rows.with_columns(pair.alias("_pair")).sort("_pair", TIME, ROW)
    first = ordered.filter(pl.col("_pair") != pl.col("_pair").shift(1).fill_null(-1))
    return first.drop("_pair").sort(ROW)


def save_arrays(rows: pl.DataFrame, stem: Path) -> None:
    """The bucket's user codes, item codes and file rows as ``.npy`` (read back memory-mapped)."""
    for column in _ARRAYS:
        np.save(f"{stem}.{column}.npy", rows.get_column(column).to_numpy())


def load_arrays(stem: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return tuple(np.load(f"{stem}.{column}.npy", mmap_mode="r") for column in _ARRAYS)


def k_core_members(stems: list[Path], n_users: int, n_items: int, k: int, n_buckets: int, work: Path
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Boolean arrays (index = code) of the users and items of the maximal k-core.

    Each round counts the rows whose user and item are both still alive and drops every user and
    item under ``k`` at once: the reference's rule, so the same fixpoint. A bucket holds the users
    ``code % n_buckets == b``, so its user counts are a short ``bincount`` of ``code // n_buckets``.
    Once the alive rows fall under half of those a round reads, they are copied out (``work``).
    """
    alive_users = np.ones(n_users + 1, dtype=bool)
    alive_items = np.ones(n_items + 1, dtype=bool)
    alive_users[0] = alive_items[0] = False
    if k <= 1:
        return alive_users, alive_items
    pairs = [load_arrays(stem)[:2] for stem in stems]
    scanned, rounds = None, 0
    while True:
        user_counts = np.zeros(n_users + 1, dtype=np.int64)
        item_counts = np.zeros(n_items + 1, dtype=np.int64)
        n_rows = 0
        for bucket, (users, items) in zip(_bucket_numbers(stems), pairs):
            alive = alive_users[users] & alive_items[items]
            kept_users, kept_items = users[alive], items[alive]
            local = np.bincount(kept_users // n_buckets, minlength=(n_users - bucket) // n_buckets + 1)
            user_counts[bucket::n_buckets] += local[:len(user_counts[bucket::n_buckets])]
            item_counts += np.bincount(kept_items, minlength=n_items + 1)
            n_rows += kept_users.size
        rounds += 1
        scanned = n_rows if scanned is None else scanned
        present_users, present_items = user_counts > 0, item_counts > 0
        if (user_counts[present_users] >= k).all() and (item_counts[present_items] >= k).all():
            logger.info("k-core (k=%d) stable after %d round(s): %d rows", k, rounds, n_rows)
            return present_users, present_items
        if 2 * n_rows < scanned:  # most rows read are dead: keep a compact copy of the living ones
            pairs = [_compacted(users, items, alive_users, alive_items, work / f"core_{rounds}_{index}")
                     for index, (users, items) in enumerate(pairs)]
            scanned = n_rows
        alive_users, alive_items = user_counts >= k, item_counts >= k


def first_appearance_ids(stems: list[Path], alive_users: np.ndarray, alive_items: np.ndarray
                         ) -> tuple[np.ndarray, np.ndarray]:
    """New ids 1..N by first appearance among the kept rows in file order (0 = dropped), indexed by
    old code: the reference's ``assign_contiguous_ids`` on the filtered rows."""
    first_user = np.full(alive_users.size, _NO_ROW, dtype=np.int64)
    first_item = np.full(alive_items.size, _NO_ROW, dtype=np.int64)
    for stem in stems:
        users, items, rows = load_arrays(stem)
        alive = alive_users[users] & alive_items[items]
        users, items, rows = users[alive], items[alive], np.asarray(rows[alive], dtype=np.int64)
        codes, where = np.unique(users, return_index=True)  # rows are in file order: index = first row
        first_user[codes] = rows[where]  # a user's rows are all in one bucket
        codes, where = np.unique(items, return_index=True)
        first_item[codes] = np.minimum(first_item[codes], rows[where])
    return _ranked(first_user), _ranked(first_item)


def relabelled(rows: pl.DataFrame, new_users: np.ndarray, new_items: np.ndarray) -> pl.DataFrame:
    """The bucket's kept rows with the new ids in place of the old codes."""
    users, items = rows.get_column(USER).to_numpy(), rows.get_column(ITEM).to_numpy()
    user_ids, item_ids = new_users[users], new_items[items]
    kept = (user_ids > 0) & (item_ids > 0)
    return rows.filter(pl.Series(kept)).with_columns(
        pl.Series(USER, user_ids[kept], dtype=ID_DTYPE), pl.Series(ITEM, item_ids[kept], dtype=ID_DTYPE))


def _ranked(first_rows: np.ndarray) -> np.ndarray:
    present = np.flatnonzero(first_rows != _NO_ROW)
    order = present[np.argsort(first_rows[present], kind="stable")]
    ids = np.zeros(first_rows.size, dtype=np.int32)
    ids[order] = np.arange(1, order.size + 1, dtype=np.int32)
    return ids


def _compacted(users, items, alive_users, alive_items, stem: Path) -> tuple[np.ndarray, np.ndarray]:
    alive = alive_users[users] & alive_items[items]
    np.save(f"{stem}.u.npy", users[alive])
    np.save(f"{stem}.i.npy", items[alive])
    return np.load(f"{stem}.u.npy", mmap_mode="r"), np.load(f"{stem}.i.npy", mmap_mode="r")


def _bucket_numbers(stems: list[Path]) -> list[int]:
    return [int(Path(stem).name) for stem in stems]
