import numpy as np
import polars as pl
import pytest
import torch

from rodpo.sequences import build_sequence_data, trim_to_longest


@pytest.fixture
def splits(split_schema) -> pl.DataFrame:
    rows = [
        (1, [1, 2, 3, 4, 5, 6, 7], [10, 20, 30, 40, 50, 60, 70], 8, 80, 9, 90),
        (2, [5], [15], 6, 16, 7, 17),  # one train item: no training target
        (3, [], [], 2, 5, 3, 6),  # empty train: empty validation history
    ]
    return pl.DataFrame(rows, schema=split_schema, orient="row")


def test_windows_supervise_every_target_once_newest_window_has_full_context(splits):
    data = build_sequence_data(splits, max_seq_len=3)
    # 7 items, L = 3: newest window items 4..7 (targets 5, 6, 7), then items 1..4 (targets 2, 3, 4)
    assert data.train.items.tolist() == [[4, 5, 6, 7], [1, 2, 3, 4]]
    assert data.train.timestamps.tolist() == [[40, 50, 60, 70], [10, 20, 30, 40]]
    assert data.train.user_ids.tolist() == [1, 1]
    targets = data.train.items[:, 1:]
    assert sorted(targets[targets > 0].tolist()) == [2, 3, 4, 5, 6, 7]


def test_short_windows_are_right_padded(splits):
    data = build_sequence_data(splits, max_seq_len=5)
    assert data.train.items.tolist() == [[2, 3, 4, 5, 6, 7], [1, 2, 0, 0, 0, 0]]


def test_valid_and_test_histories_keep_the_most_recent_items(splits):
    data = build_sequence_data(splits, max_seq_len=3)
    assert data.valid.items.tolist() == [[5, 6, 7], [5, 0, 0], [0, 0, 0]]
    assert data.valid.timestamps.tolist() == [[50, 60, 70], [15, 0, 0], [0, 0, 0]]
    assert data.valid.targets.tolist() == [8, 6, 2]
    assert data.test.items.tolist() == [[6, 7, 8], [5, 6, 0], [2, 0, 0]]
    assert data.test.timestamps.tolist() == [[60, 70, 80], [15, 16, 0], [5, 0, 0]]
    assert data.test.targets.tolist() == [9, 7, 3]
    assert (data.n_items, data.time_min, data.time_max) == (9, 10, 70)


def test_fingerprint_changes_with_the_data(splits):
    first = build_sequence_data(splits, max_seq_len=3).fingerprint()
    assert first == build_sequence_data(splits, max_seq_len=3).fingerprint()
    changed = splits.with_columns(pl.when(pl.col("user_id") == 1).then(4).otherwise(pl.col("test_item_id"))
                                  .alias("test_item_id"))
    assert build_sequence_data(changed, max_seq_len=3).fingerprint() != first


def test_missing_columns_and_bad_item_ids_are_reported(splits):
    with pytest.raises(ValueError, match="valid_item_id"):
        build_sequence_data(splits.drop("valid_item_id"), max_seq_len=3)
    with pytest.raises(ValueError, match="n_items=5"):
        build_sequence_data(splits, max_seq_len=3, n_items=5)


def test_trim_to_longest_drops_only_padding_columns():
    items = torch.tensor([[1, 2, 0, 0], [3, 0, 0, 0]])
    times = torch.arange(8).view(2, 4)
    trimmed_items, trimmed_times = trim_to_longest(items, times)
    assert trimmed_items.tolist() == [[1, 2], [3, 0]]
    assert trimmed_times.tolist() == [[0, 1], [4, 5]]


def test_many_users_every_target_supervised_once():
    rng = np.random.default_rng(0)
    n_users = 2000
    lengths = rng.integers(3, 120, size=n_users)
    items = [rng.integers(1, 500, size=n).tolist() for n in lengths]
    splits = pl.DataFrame({
        "user_id": np.arange(1, n_users + 1), "train_item_ids": items,
        "train_timestamps": [list(range(n)) for n in lengths], "valid_item_id": np.ones(n_users, dtype=np.int64),
        "valid_timestamp": lengths, "test_item_id": np.ones(n_users, dtype=np.int64), "test_timestamp": lengths + 1,
    })
    data = build_sequence_data(splits, max_seq_len=50)
    targets = data.train.items[:, 1:]
    assert (targets > 0).sum() == int((lengths - 1).sum())  # every target exactly once
