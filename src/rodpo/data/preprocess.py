"""Turn parsed raw interactions into the paper's sequences (S3-Rec / RecBole protocol).

Steps, in the order ``preprocess_interactions`` applies them: encode string ids as integer codes,
drop repeated (user, item) pairs, iterative k-core on users and items, contiguous ids (0 = padding),
stable sort into per-user histories. ``build_sequences`` and ``leave_one_out_split`` then give the
tables the model reads. All steps are vectorised polars (no Python loop over rows or users), so the
10M-interaction Amazon categories fit in a couple of minutes and a few GB on 2 cores.

Tables and dtypes follow the contracts: ``interactions`` (user_id int32, item_id int32,
timestamp int64), ``user_id_map`` / ``item_id_map``, ``items``, ``sequences``, ``sequence_splits``.
"""

from __future__ import annotations

import logging

import polars as pl

logger = logging.getLogger(__name__)

USER, ITEM, TIME = "user_id", "item_id", "timestamp"
ID_DTYPE = pl.Int32
TIME_DTYPE = pl.Int64
_ROW = "_row_idx"  # source-file position, the tie-breaker that makes the time sort stable
ITEM_TEXT_COLUMNS = ("title", "description", "brand", "categories")
ITEM_IMAGE_COLUMN = "image_url"
MIN_SEQUENCE_LENGTH = 3  # one train item + valid target + test target


class EmptyDatasetError(ValueError):
    """No interaction is left to train on (empty input, or k-core filtering removed everything)."""


def _require_columns(df: pl.DataFrame, columns: tuple[str, ...], name: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(
            f"{name}: missing column(s) {missing}; got {df.columns}. Expected the parsed table "
            f"of rodpo.data.parsers (columns {list(columns)})."
        )


def drop_duplicate_interactions(df: pl.DataFrame) -> pl.DataFrame:
    """Keep one row per (user_id, item_id): the earliest by timestamp, ties broken by file order.

    Amazon dumps repeat reviews (re-posts, the same review under product variants). S3-Rec and
    RecBole count a user-item pair once; keeping the *earliest* occurrence puts the item where the
    user first met it in the history, and among equal timestamps the first row in the file wins so
    the result does not depend on hashing or thread scheduling. Row order is preserved.
    """
    pair = [USER, ITEM]
    return df.filter(
        pl.col(TIME) == pl.col(TIME).min().over(pair)
    ).filter(pl.struct(pair).is_first_distinct())


def k_core_filter(df: pl.DataFrame, k: int = 5) -> pl.DataFrame:
    """Iteratively drop users and items with fewer than ``k`` interactions until none are left.

    Removing a user can push an item below ``k`` (and back), so one pass is not enough; the loop
    stops at the unique maximal k-core where every remaining user and item has >= k rows. Each
    round is one vectorised group count per side; row order is preserved.
    """
    if k < 1:
        raise ValueError(f"k_core_filter: k={k} must be >= 1 (1 keeps everything).")
    rounds = 0
    while True:
        enough = (pl.len().over(USER) >= k) & (pl.len().over(ITEM) >= k)
        kept = df.filter(enough)
        rounds += 1
        logger.debug("k-core (k=%d) round %d: %d -> %d rows", k, rounds, df.height, kept.height)
        if kept.height == df.height:
            logger.info("k-core (k=%d) stable after %d round(s): %d rows", k, rounds, kept.height)
            return kept
        df = kept


def sort_histories(df: pl.DataFrame) -> pl.DataFrame:
    """Sort by user then timestamp; equal timestamps keep their incoming (source file) order.

    Amazon timestamps have day granularity, so many rows of a user tie. The source order is the
    only information on their true order (and the order S3-Rec's splits use), so it is made an
    explicit last sort key rather than trusting sort stability.
    """
    return (
        df.with_row_index(_ROW)
        .sort([USER, TIME, _ROW])
        .drop(_ROW)
    )


def _first_appearance_ids(column: pl.Series, new_name: str) -> tuple[pl.Series, pl.DataFrame]:
    """Number distinct values 1..N in order of first appearance; return ids and the (id, value) map."""
    originals = column.unique(maintain_order=True)
    ids = pl.int_range(1, len(originals) + 1, dtype=ID_DTYPE, eager=True)
    mapped = column.replace_strict(originals, ids, return_dtype=ID_DTYPE).alias(column.name)
    id_map = pl.DataFrame({new_name: ids, f"original_{new_name}": originals})
    return mapped, id_map


def assign_contiguous_ids(
    df: pl.DataFrame,
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Replace user and item ids by int32 ids 1..U and 1..I (0 is the padding id).

    Ids follow first appearance in ``df``'s row order. ``preprocess_interactions`` calls this on the
    filtered rows in source-file order, which is RecBole's remapping (``pd.factorize`` after
    filtering): ids then match a RecBole run on the same atomic file, and do not depend on hashing.
    Returns (interactions, user_id_map[user_id, original_user_id], item_id_map[item_id,
    original_item_id]); maps are sorted by the new id.
    """
    users, user_id_map = _first_appearance_ids(df.get_column(USER), USER)
    items, item_id_map = _first_appearance_ids(df.get_column(ITEM), ITEM)
    interactions = df.with_columns(users, items, pl.col(TIME).cast(TIME_DTYPE)).select(
        USER, ITEM, TIME
    )
    return interactions, user_id_map, item_id_map


def _validate_raw_interactions(raw: pl.DataFrame) -> pl.DataFrame:
    _require_columns(raw, (USER, ITEM, TIME), "raw_interactions")
    if raw.height == 0:
        raise EmptyDatasetError(
            "raw_interactions is empty: the parser found no interactions. Check that the raw "
            "file was downloaded completely and that the dataset preset names the right source."
        )
    null_counts = raw.select(pl.col(USER, ITEM, TIME).null_count()).row(0, named=True)
    if any(null_counts.values()):
        raise ValueError(
            f"raw_interactions: null values {null_counts} in id/timestamp columns; the parser "
            "should drop rows without a reviewer, item or time."
        )
    if not raw.schema[TIME].is_integer():
        raise ValueError(
            f"raw_interactions.timestamp has dtype {raw.schema[TIME]}, expected int64 unix "
            "seconds; convert it in the parser."
        )
    return raw.select(USER, ITEM, pl.col(TIME).cast(TIME_DTYPE))


def preprocess_interactions(
    raw_interactions: pl.DataFrame,
    *,
    k_core: int = 5,
    drop_duplicates: bool = True,
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Raw (string-id) interactions -> (interactions, user_id_map, item_id_map) per the contracts.

    String ids are first replaced by integer codes so the repeated k-core rounds group integers,
    not strings (several times faster, a fraction of the memory). Duplicates are dropped before
    k-core so a repeated review cannot keep a user or item above ``k``. ``drop_duplicates=False``
    keeps repeats (as RecBole does by default, e.g. for re-purchase data).
    """
    raw = _validate_raw_interactions(raw_interactions)
    user_codes, user_originals = _first_appearance_ids(raw.get_column(USER), USER)
    item_codes, item_originals = _first_appearance_ids(raw.get_column(ITEM), ITEM)
    n_users_in, n_items_in = user_originals.height, item_originals.height
    encoded = pl.DataFrame([user_codes, item_codes, raw.get_column(TIME)])
    del raw

    if drop_duplicates:
        n_before = encoded.height
        encoded = drop_duplicate_interactions(encoded)
        logger.info("dropped %d duplicate (user, item) rows", n_before - encoded.height)
    filtered = k_core_filter(encoded, k_core)
    if filtered.height == 0:
        raise EmptyDatasetError(
            f"{k_core}-core filtering removed every interaction: the input had "
            f"{raw_interactions.height:,} actions by {n_users_in:,} users on {n_items_in:,} items "
            f"({encoded.height:,} after dropping duplicates), but no set of users and items with "
            f">= {k_core} interactions each. Lower k_core (the paper uses 5) or use a larger dataset."
        )

    interactions, user_id_map, item_id_map = assign_contiguous_ids(filtered)
    # Maps currently point to the 1-based codes; translate them back to the original strings.
    user_id_map = user_id_map.with_columns(
        user_originals.get_column(f"original_{USER}").gather(
            user_id_map.get_column(f"original_{USER}") - 1
        )
    )
    item_id_map = item_id_map.with_columns(
        item_originals.get_column(f"original_{ITEM}").gather(
            item_id_map.get_column(f"original_{ITEM}") - 1
        )
    )
    return sort_histories(interactions), user_id_map, item_id_map


def build_items_table(raw_items: pl.DataFrame | None, item_id_map: pl.DataFrame) -> pl.DataFrame:
    """One metadata row per kept item, row i-1 = item i; missing text -> "", missing image -> null.

    Metadata of filtered-out items is dropped; repeated metadata rows for one item (present in the
    2018 dumps) keep the first. Text columns absent from ``raw_items`` (e.g. a RecBole .item file has
    no description) are filled with "" so every source yields the same schema.
    """
    text_defaults = [pl.lit("", dtype=pl.Utf8).alias(c) for c in ITEM_TEXT_COLUMNS]
    image_default = pl.lit(None, dtype=pl.Utf8).alias(ITEM_IMAGE_COLUMN)
    if raw_items is None:
        meta = pl.DataFrame(schema={ITEM: pl.Utf8}).with_columns(*text_defaults, image_default)
    else:
        _require_columns(raw_items, (ITEM,), "raw_items")
        meta = raw_items.with_columns(
            [d for d in text_defaults if d.meta.output_name() not in raw_items.columns]
            + ([image_default] if ITEM_IMAGE_COLUMN not in raw_items.columns else [])
        )
    meta = (
        meta.select(pl.col(ITEM).cast(pl.Utf8), *ITEM_TEXT_COLUMNS, ITEM_IMAGE_COLUMN)
        .unique(subset=ITEM, keep="first", maintain_order=True)
        .rename({ITEM: f"original_{ITEM}"})
    )
    return (
        item_id_map.select(pl.col(ITEM).cast(ID_DTYPE), f"original_{ITEM}")
        .join(meta, on=f"original_{ITEM}", how="left")
        .with_columns(pl.col(c).fill_null("") for c in ITEM_TEXT_COLUMNS)
        .sort(ITEM)
    )


def _check_history_sorted(interactions: pl.DataFrame) -> None:
    step_user = pl.col(USER).diff()
    unsorted = (step_user < 0) | ((step_user == 0) & (pl.col(TIME).diff() < 0))
    if interactions.select(unsorted.any()).item():
        raise ValueError(
            "interactions are not sorted by (user_id, timestamp); pass them through "
            "sort_histories (preprocess_interactions already returns them sorted)."
        )


def build_sequences(interactions: pl.DataFrame) -> pl.DataFrame:
    """Per-user histories in time order: user_id, item_ids list<int32>, timestamps list<int64>.

    Expects the sorted ``interactions`` of ``preprocess_interactions`` (checked, not re-sorted:
    re-sorting would lose the source order of same-day items that only the input still carries).
    """
    _check_history_sorted(interactions)
    return (
        interactions.group_by(USER, maintain_order=True)
        .agg(
            pl.col(ITEM).cast(ID_DTYPE).alias("item_ids"),
            pl.col(TIME).cast(TIME_DTYPE).alias("timestamps"),
        )
        .with_columns(pl.col(USER).cast(ID_DTYPE))
    )


def leave_one_out_split(sequences: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame | pl.LazyFrame:
    """Leave-one-out by time: last item = test target, second-to-last = valid target, rest = train.

    Validation input history is the train items; test input history is train items + valid item.
    Every user needs >= 3 items (one to condition on plus the two targets). A LazyFrame gives a
    LazyFrame (row-wise expressions: the streaming engine splits it in batches).
    """
    n_items = pl.col("item_ids").list.len()
    short = sequences.lazy().filter(n_items < MIN_SEQUENCE_LENGTH).select(USER).collect(engine="streaming")
    if short.height:
        raise ValueError(
            f"sequences: {short.height:,} user(s) have fewer than {MIN_SEQUENCE_LENGTH} items "
            f"(e.g. user_id {short.get_column(USER).head(5).to_list()}), too short for a "
            f"leave-one-out split. Use k_core >= {MIN_SEQUENCE_LENGTH} in preprocessing."
        )
    n_train = n_items - 2
    return sequences.select(
        pl.col(USER).cast(ID_DTYPE),
        pl.col("item_ids").list.slice(0, n_train).alias("train_item_ids"),
        pl.col("timestamps").list.slice(0, n_train).alias("train_timestamps"),
        pl.col("item_ids").list.get(-2).cast(ID_DTYPE).alias("valid_item_id"),
        pl.col("timestamps").list.get(-2).cast(TIME_DTYPE).alias("valid_timestamp"),
        pl.col("item_ids").list.get(-1).cast(ID_DTYPE).alias("test_item_id"),
        pl.col("timestamps").list.get(-1).cast(TIME_DTYPE).alias("test_timestamp"),
    )


def dataset_statistics(interactions: pl.DataFrame | pl.LazyFrame) -> dict[str, float | int]:
    """The paper's Table 5 figures; sparsity is a fraction (0.9993 for Beauty), averages unrounded.
    Counted in one streaming pass, so a LazyFrame over a 10^8-row file works too."""
    users, items, actions = (
        interactions.lazy().select(pl.col(USER).n_unique(), pl.col(ITEM).n_unique(), pl.len())
        .collect(engine="streaming").row(0)
    )
    if actions == 0:
        raise EmptyDatasetError("dataset_statistics: interactions is empty; nothing to describe.")
    return {
        "users": users,
        "items": items,
        "actions": actions,
        "avg_actions_per_user": actions / users,
        "avg_actions_per_item": actions / items,
        "sparsity": 1.0 - actions / (users * items),
    }


def render_dataset_stats_markdown(stats: dict[str, float | int], dataset_name: str) -> str:
    """A markdown table in the layout of the paper's Table 5 (one column for this dataset)."""
    rows = [
        ("# Users", f"{stats['users']:,}"),
        ("# Items", f"{stats['items']:,}"),
        ("# Actions", f"{stats['actions']:,}"),
        ("Avg. Actions/User", f"{stats['avg_actions_per_user']:.2f}"),
        ("Avg. Actions/Item", f"{stats['avg_actions_per_item']:.2f}"),
        ("# Sparsity", f"{stats['sparsity']:.2%}"),
    ]
    lines = [f"| Datasets | {dataset_name} |", "| --- | ---: |"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    return "\n".join(lines) + "\n"
