"""Tiny synthetic sequence_splits with a planted pattern, shared by the training tests."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from rodpo.model import ModelConfig, RoDPOModel
from rodpo.sequences import build_sequence_data

SPLIT_SCHEMA = {
    "user_id": pl.Int32, "train_item_ids": pl.List(pl.Int32), "train_timestamps": pl.List(pl.Int64),
    "valid_item_id": pl.Int32, "valid_timestamp": pl.Int64, "test_item_id": pl.Int32, "test_timestamp": pl.Int64,
}


def planted_splits(n_users: int = 120, n_items: int = 20, seed: int = 0) -> pl.DataFrame:
    """Every user walks the item ring: the next item is (item mod n_items) + 1, 90% of the time."""
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(1, n_users + 1):
        length = int(rng.integers(5, 13))
        items = [int(rng.integers(1, n_items + 1))]
        for _ in range(length - 1):
            follows = rng.random() < 0.9
            items.append(items[-1] % n_items + 1 if follows else int(rng.integers(1, n_items + 1)))
        times = (1_500_000_000 + np.cumsum(rng.integers(0, 5 * 86_400, size=length))).tolist()
        rows.append((user, items[:-2], times[:-2], items[-2], times[-2], items[-1], times[-1]))
    return pl.DataFrame(rows, schema=SPLIT_SCHEMA, orient="row")


@pytest.fixture
def split_schema():
    return SPLIT_SCHEMA


@pytest.fixture(scope="module")
def planted_data():
    return build_sequence_data(planted_splits(), max_seq_len=8)


@pytest.fixture
def make_model(planted_data):
    """Factory of tiny models for `planted_data`; keyword arguments override ModelConfig fields."""

    def make(**overrides) -> RoDPOModel:
        data = planted_data
        values = dict(n_items=data.n_items, max_seq_len=data.max_seq_len, hidden_size=16, inner_size=32, n_heads=2,
                      modalities=("id",), moe_mode="sparse", temporal=True, time_min=data.time_min,
                      time_max=data.time_max, hidden_dropout=0.2, attn_dropout=0.2)
        values.update(overrides)
        return RoDPOModel(ModelConfig(**values))

    return make
