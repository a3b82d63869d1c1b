"""Split protocols beside leave-one-out: one global time cut for every user, and a split given by files.

``data_processing.split``:

- ``leave_one_out`` (``preprocess.leave_one_out_split``): each user's last item is the test target,
  the second-to-last the valid target; one target each, scalar columns.
- ``global_time``: cut points ``t1 < t2`` (unix milliseconds, the unit the Amazon 2023 release
  publishes them in) shared by every user: train = interactions before ``t1``, valid = ``[t1, t2)``,
  test = from ``t2`` on. A user may have several valid or test targets, or none (only trained on).
- a given split (``source: amazon2023_benchmark``): each row's file says train, valid or test.

Both multi-target protocols give list columns (``valid_item_ids``, ``valid_timestamps``,
``test_item_ids``, ``test_timestamps``). Histories follow the cut: a valid target is predicted from
the train items, a test target from the train and valid items (everything before the cut), so two
test targets of one user share one history. Sequences are sorted by time, so each part is a slice:
the splits below are row-wise list expressions, equally lazy (streaming) or eager.
Timestamps are whole seconds: an interaction in the very second of a cut belongs to the earlier side.
"""

from __future__ import annotations

import polars as pl

from rodpo.data.preprocess import ID_DTYPE, USER

LEAVE_ONE_OUT, GLOBAL_TIME = "leave_one_out", "global_time"
SPLIT_PROTOCOLS = (LEAVE_ONE_OUT, GLOBAL_TIME)
TRAIN, VALID, TEST = 0, 1, 2  # labels of a given split (the `split` column)
MS_PER_SECOND = 1000
# The Amazon Reviews 2023 benchmark's global cuts (benchmark_scripts/timestamp_split.py), ms.
AMAZON2023_T1, AMAZON2023_T2 = 1628643414042, 1658002729837
TARGET_LIST_COLUMNS = ("valid_item_ids", "valid_timestamps", "test_item_ids", "test_timestamps")


def check_protocol(split: str, t1: int | None, t2: int | None) -> None:
    """Refuse an unknown protocol and unusable cut points, naming the parameter and the fix."""
    if split not in SPLIT_PROTOCOLS:
        raise ValueError(f"data_processing.split={split!r}: expected one of {list(SPLIT_PROTOCOLS)}.")
    if split != GLOBAL_TIME:
        return
    for name, value in (("t1", t1), ("t2", t2)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(
                f"data_processing.{name}={value!r}: split=global_time needs both cut points as integer unix "
                f"milliseconds, e.g. the Amazon 2023 release's t1={AMAZON2023_T1}, t2={AMAZON2023_T2}.")
    if t1 >= t2:
        raise ValueError(
            f"data_processing.t1={t1} >= data_processing.t2={t2}: the valid period [t1, t2) would be empty or "
            "reversed. Set t1 < t2 (unix milliseconds; the Amazon 2023 release uses "
            f"t1={AMAZON2023_T1}, t2={AMAZON2023_T2}).")


def global_time_split(sequences: pl.LazyFrame | pl.DataFrame, t1: int, t2: int) -> pl.LazyFrame | pl.DataFrame:
    """Per user: train items before ``t1``, valid targets in ``[t1, t2)``, test targets from ``t2``
    (milliseconds; the sequences' timestamps are seconds)."""
    check_protocol(GLOBAL_TIME, t1, t2)

    def before(cut: int) -> pl.Expr:
        return pl.col("timestamps").list.eval((pl.element() * MS_PER_SECOND < cut).cast(pl.Int64)).list.sum()

    n_before_t1 = before(t1)
    return _sliced(sequences, n_before_t1, before(t2) - n_before_t1)


def given_split(sequences: pl.LazyFrame | pl.DataFrame) -> pl.LazyFrame | pl.DataFrame:
    """The split read from files: ``splits`` labels each item train, valid or test, in that order
    (``streaming.process_interactions`` sorts a user's rows by label first)."""

    def count(label: int) -> pl.Expr:
        return pl.col("splits").list.eval((pl.element() == label).cast(pl.Int64)).list.sum()

    return _sliced(sequences, count(TRAIN), count(VALID))


def _sliced(sequences: pl.LazyFrame | pl.DataFrame, n_train: pl.Expr, n_valid: pl.Expr):
    items, times = pl.col("item_ids"), pl.col("timestamps")
    n_history = n_train + n_valid
    return sequences.select(
        pl.col(USER).cast(ID_DTYPE),
        items.list.slice(0, n_train).alias("train_item_ids"),
        times.list.slice(0, n_train).alias("train_timestamps"),
        items.list.slice(n_train, n_valid).alias("valid_item_ids"),
        times.list.slice(n_train, n_valid).alias("valid_timestamps"),
        items.list.slice(n_history, items.list.len() - n_history).alias("test_item_ids"),
        times.list.slice(n_history, times.list.len() - n_history).alias("test_timestamps"),
    )


def split_statistics(sequence_splits: pl.LazyFrame | pl.DataFrame) -> dict[str, int]:
    """Targets of a multi-target split and what evaluation cannot rank: targets of users with no
    history before the cut (reported apart, never silently dropped); {} for leave-one-out."""
    frame = sequence_splits.lazy()
    if "valid_item_ids" not in frame.collect_schema():
        return {}
    train, valid, test = (pl.col(c).list.len() for c in ("train_item_ids", "valid_item_ids", "test_item_ids"))
    no_valid_history, no_test_history = train == 0, (train + valid) == 0
    row = frame.select(
        valid.sum().alias("valid_targets"),
        test.sum().alias("test_targets"),
        (valid > 0).sum().alias("valid_users"),
        (test > 0).sum().alias("test_users"),
        ((valid == 0) & (test == 0)).sum().alias("users_only_in_train"),
        (no_valid_history & (valid > 0)).sum().alias("valid_users_without_history"),
        valid.filter(no_valid_history).sum().alias("valid_targets_without_history"),
        (no_test_history & (test > 0)).sum().alias("test_users_without_history"),
        test.filter(no_test_history).sum().alias("test_targets_without_history"),
    ).collect(engine="streaming").row(0, named=True)
    return {key: int(value or 0) for key, value in row.items()}
