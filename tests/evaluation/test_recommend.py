"""Top-N recommendations: hand-made scores with a known answer, then a real (tiny) RoDPO model."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest
import torch
from torch import nn

from rodpo.evaluation.recommend import recommend_top_n, right_padded, top_n_items
from rodpo.model import ModelConfig, RoDPOModel

# Item scores every user gets: item 2 > 4 > 3 > 5 > 1. The padding column scores highest on purpose.
SCORES = [99.0, 1.0, 5.0, 3.0, 4.0, 2.0]


class FixedScorer(nn.Module):
    """Every user gets SCORES (a one-dimensional state of 1 against a table of SCORES) and the scorer
    remembers the histories it was given."""

    def __init__(self, max_seq_len: int = 3) -> None:
        super().__init__()
        self.config = SimpleNamespace(max_seq_len=max_seq_len)
        self.anchor = nn.Parameter(torch.zeros(()))
        self.seen: list[torch.Tensor] = []

    def scoring_table(self) -> torch.Tensor:
        return torch.tensor(SCORES)[:, None]

    def last_states(self, items: torch.Tensor, timestamps: torch.Tensor) -> torch.Tensor:
        self.seen.append(items.clone())
        return torch.ones(items.shape[0], 1)


def _tables():
    sequences = pl.DataFrame(
        {"user_id": [1, 2], "item_ids": [[5, 1, 2, 3], [1]], "timestamps": [[10, 11, 12, 13], [20]]},
        schema={"user_id": pl.Int32, "item_ids": pl.List(pl.Int32), "timestamps": pl.List(pl.Int64)},
    )
    user_id_map = pl.DataFrame({"user_id": [1, 2], "original_user_id": ["ALICE", "BOB"]},
                               schema={"user_id": pl.Int32, "original_user_id": pl.Utf8})
    item_id_map = pl.DataFrame({"item_id": list(range(1, 6)), "original_item_id": [f"ASIN{i}" for i in range(1, 6)]},
                               schema={"item_id": pl.Int32, "original_item_id": pl.Utf8})
    return sequences, user_id_map, item_id_map


def test_right_padded_keeps_the_most_recent_items():
    lists = pl.Series([[1, 2, 3, 4], [5], []], dtype=pl.List(pl.Int32))
    assert right_padded(lists, 3).tolist() == [[2, 3, 4], [5, 0, 0], [0, 0, 0]]


def test_top_n_with_original_ids_and_no_padding_item():
    sequences, users, items = _tables()
    model = FixedScorer()
    table = recommend_top_n(model, sequences, users, items, top_n=3, exclude_history=False, device="cpu")
    assert table.columns == ["user_id", "rank", "item_id", "score"]
    assert table.filter(pl.col("user_id") == "ALICE")["item_id"].to_list() == ["ASIN2", "ASIN4", "ASIN3"]
    assert table.filter(pl.col("user_id") == "BOB")["score"].to_list() == [5.0, 4.0, 3.0]
    assert table["rank"].to_list() == [1, 2, 3, 1, 2, 3]
    # the model read the last max_seq_len items of the FULL history (train + valid + test);
    # users are batched by history length (shortest first), as in evaluation
    assert model.seen[0].tolist() == [[1, 0, 0], [1, 2, 3]]


def test_exclude_history_drops_known_items_and_short_lists_stay_short():
    sequences, users, items = _tables()
    table = recommend_top_n(FixedScorer(), sequences, users, items, top_n=5, exclude_history=True, device="cpu")
    # ALICE has items 5, 1, 2, 3 (5 and 1 are older than max_seq_len, still excluded): only item 4 is left
    assert table.filter(pl.col("user_id") == "ALICE")["item_id"].to_list() == ["ASIN4"]
    assert table.filter(pl.col("user_id") == "BOB")["item_id"].to_list() == ["ASIN2", "ASIN4", "ASIN3", "ASIN5"]


def test_top_n_items_batches_give_the_same_answer():
    histories = np.array([[1, 2, 0], [3, 0, 0], [4, 5, 1]])
    one_batch = top_n_items(FixedScorer(), histories, histories * 10, top_n=2, batch_size=8, device="cpu")
    small_batches = top_n_items(FixedScorer(), histories, histories * 10, top_n=2, batch_size=1, device="cpu")
    assert one_batch[0].tolist() == [[2, 4]] * 3
    np.testing.assert_array_equal(one_batch[0], small_batches[0])


def test_unmapped_ids_are_an_error_naming_the_maps():
    sequences, users, items = _tables()
    with pytest.raises(ValueError, match="item_id_map"):
        recommend_top_n(FixedScorer(), sequences, users, items.head(2), top_n=3, exclude_history=False, device="cpu")


def test_a_real_model_ranks_by_its_own_scores():
    torch.manual_seed(0)
    model = RoDPOModel(ModelConfig(n_items=30, modalities=("id",), max_seq_len=4, hidden_size=8, inner_size=16,
                                   n_heads=2, moe_mode="none", temporal=False))
    rng = np.random.default_rng(0)
    histories = [rng.integers(1, 31, size=rng.integers(1, 8)).tolist() for _ in range(7)]
    sequences = pl.DataFrame(
        {"user_id": list(range(1, 8)), "item_ids": histories, "timestamps": [list(range(len(h))) for h in histories]},
        schema={"user_id": pl.Int32, "item_ids": pl.List(pl.Int32), "timestamps": pl.List(pl.Int64)},
    )
    users = pl.DataFrame({"user_id": list(range(1, 8)), "original_user_id": [f"U{i}" for i in range(1, 8)]},
                         schema={"user_id": pl.Int32, "original_user_id": pl.Utf8})
    items = pl.DataFrame({"item_id": list(range(1, 31)), "original_item_id": [f"I{i}" for i in range(1, 31)]},
                         schema={"item_id": pl.Int32, "original_item_id": pl.Utf8})
    table = recommend_top_n(model, sequences, users, items, top_n=10, exclude_history=True, device="cpu")
    for user, history in zip(range(1, 8), histories):
        rows = table.filter(pl.col("user_id") == f"U{user}")
        assert rows["rank"].to_list() == list(range(1, 11))
        assert rows["score"].is_sorted(descending=True)
        assert not set(rows["item_id"]) & {f"I{i}" for i in history}
        assert "I0" not in set(rows["item_id"])


def test_recommending_with_exclusions_hands_torch_only_writable_arrays(monkeypatch):
    """torch.from_numpy of a read-only array warns (once per process, so the array is checked too)."""
    import warnings

    real_from_numpy = torch.from_numpy

    def writable_only(array):
        assert array.flags.writeable, f"torch.from_numpy got a read-only {array.dtype} array"
        return real_from_numpy(array)

    monkeypatch.setattr(torch, "from_numpy", writable_only)
    sequences, users, items = _tables()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = recommend_top_n(FixedScorer(), sequences, users, items, top_n=2, exclude_history=True, device="cpu")
    assert table.filter(pl.col("user_id") == "BOB")["item_id"].to_list() == ["ASIN2", "ASIN4"]  # item 1 excluded
    assert table.filter(pl.col("user_id") == "ALICE")["item_id"].to_list() == ["ASIN4"]  # 1, 2, 3, 5 seen
