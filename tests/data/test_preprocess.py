"""Preprocessing on hand-made interactions whose answers were worked out by hand."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from rodpo.data.preprocess import (
    EmptyDatasetError,
    assign_contiguous_ids,
    build_items_table,
    build_sequences,
    dataset_statistics,
    drop_duplicate_interactions,
    k_core_filter,
    leave_one_out_split,
    preprocess_interactions,
    render_dataset_stats_markdown,
    sort_histories,
)

BEAUTY_INTER = Path("/work/shared/benchmarks/amazon-beauty/amazon-beauty.inter")


def interactions(rows: list[tuple[str, str, int]]) -> pl.DataFrame:
    """Raw interactions in the parser's schema, rows in the given (file) order."""
    return pl.DataFrame(
        rows, schema={"user_id": pl.Utf8, "item_id": pl.Utf8, "timestamp": pl.Int64}, orient="row"
    )


def pairs(df: pl.DataFrame) -> list[tuple[str, str]]:
    return list(df.select("user_id", "item_id").iter_rows())


# U4 holds the only "d"; removing d drops U4 to 1 item, which drops "c" to 1 user (U3), which
# drops U3 to 1 item. Only U1 and U2 (each a, b) survive the 2-core, after four removal rounds.
CASCADE_K2 = [
    ("U1", "a", 1), ("U1", "b", 2),
    ("U2", "a", 3), ("U2", "b", 4),
    ("U3", "b", 5), ("U3", "c", 6),
    ("U4", "c", 7), ("U4", "d", 8),
]  # fmt: skip

# k=3: e (2 users) and f (1 user) go; U4 (c d) and U5 (d) fall below 3; then d has only U3 and
# goes; then U3 (a b) falls below 3. U1, U2, U6 with a, b, c (3 users each) remain.
CASCADE_K3 = [
    ("U1", "a", 1), ("U1", "b", 2), ("U1", "c", 3),
    ("U2", "a", 1), ("U2", "b", 2), ("U2", "c", 3),
    ("U3", "a", 1), ("U3", "b", 2), ("U3", "d", 3),
    ("U4", "c", 1), ("U4", "d", 2), ("U4", "e", 3),
    ("U5", "d", 1), ("U5", "e", 2), ("U5", "f", 3),
    ("U6", "a", 1), ("U6", "b", 2), ("U6", "c", 3),
]  # fmt: skip


def test_k_core_k2_cascade_removes_chain_of_users_and_items():
    result = k_core_filter(interactions(CASCADE_K2), k=2)
    assert pairs(result) == [("U1", "a"), ("U1", "b"), ("U2", "a"), ("U2", "b")]


def test_k_core_k3_cascade_keeps_exact_core_in_row_order():
    result = k_core_filter(interactions(CASCADE_K3), k=3)
    expected = [(u, i) for u in ("U1", "U2", "U6") for i in ("a", "b", "c")]
    assert pairs(result) == expected


def test_k_core_k2_on_k3_graph_only_drops_singleton_item():
    # With k=2 only f (one user) goes; U5 keeps d, e and every item keeps >= 2 users.
    result = k_core_filter(interactions(CASCADE_K3), k=2)
    assert pairs(result) == [p[:2] for p in CASCADE_K3 if p[1] != "f"]


def test_k_core_leaves_stable_input_unchanged():
    stable = k_core_filter(interactions(CASCADE_K3), k=3)
    assert k_core_filter(stable, k=3).equals(stable)
    assert k_core_filter(interactions(CASCADE_K2), k=1).equals(interactions(CASCADE_K2))


def test_sort_histories_is_stable_for_equal_timestamps():
    raw = interactions([("u1", "x", 100), ("u2", "y", 50), ("u1", "w", 100), ("u1", "z", 90)])
    # u1: z (t=90) first, then x before w: same time, x comes first in the file.
    assert pairs(sort_histories(raw)) == [("u1", "z"), ("u1", "x"), ("u1", "w"), ("u2", "y")]


def test_drop_duplicates_keeps_earliest_then_first_in_file():
    raw = interactions([("u1", "a", 200), ("u1", "a", 100), ("u1", "a", 100), ("u1", "b", 150)])
    raw = raw.with_row_index("file_row")
    kept = drop_duplicate_interactions(raw)
    assert kept.get_column("file_row").to_list() == [1, 3]


def test_contiguous_ids_follow_first_appearance_and_round_trip():
    raw = interactions([("ub", "iz", 1), ("ua", "iy", 2), ("ub", "ix", 3), ("ua", "iz", 4)])
    inter, user_map, item_map = assign_contiguous_ids(raw)
    assert user_map.rows() == [(1, "ub"), (2, "ua")]
    assert item_map.rows() == [(1, "iz"), (2, "iy"), (3, "ix")]
    assert inter.select("user_id", "item_id").rows() == [(1, 1), (2, 2), (1, 3), (2, 1)]
    assert inter.schema == pl.Schema(
        {"user_id": pl.Int32, "item_id": pl.Int32, "timestamp": pl.Int64}
    )
    back = inter.join(user_map, on="user_id", maintain_order="left").join(
        item_map, on="item_id", maintain_order="left"
    )
    assert back.select("original_user_id", "original_item_id").rows() == pairs(raw)


def test_preprocess_interactions_end_to_end_small():
    # u1 reviews "a" twice (the later repeat must go); u1's "b" and "c" tie at t=20, file order b, c.
    raw = interactions([
        ("u2", "c", 5), ("u1", "a", 10), ("u1", "c", 20), ("u2", "a", 7),
        ("u1", "b", 20), ("u1", "a", 30), ("u2", "b", 9), ("u3", "z", 1),
    ])  # fmt: skip
    inter, user_map, item_map = preprocess_interactions(raw, k_core=2)
    # u3/z drop (1 each). First appearance in file: users u2=1, u1=2; items c=1, a=2, b=3.
    assert user_map.rows() == [(1, "u2"), (2, "u1")]
    assert item_map.rows() == [(1, "c"), (2, "a"), (3, "b")]
    assert inter.rows() == [(1, 1, 5), (1, 2, 7), (1, 3, 9), (2, 2, 10), (2, 1, 20), (2, 3, 20)]


def test_duplicates_kept_when_disabled_and_they_change_k_core():
    raw = interactions([("u1", "a", 1), ("u1", "a", 2), ("u2", "a", 3), ("u2", "b", 4)])
    inter, _, _ = preprocess_interactions(raw, k_core=1, drop_duplicates=False)
    assert inter.height == 4
    inter, _, _ = preprocess_interactions(raw, k_core=1)
    assert inter.height == 3
    # With the repeat dropped u1 has a single item, so a 2-core cannot keep it (nor b, nor u2).
    with pytest.raises(EmptyDatasetError):
        preprocess_interactions(raw, k_core=2)
    assert preprocess_interactions(raw, k_core=2, drop_duplicates=False)[0].height == 2


def test_empty_dataset_error_when_everything_filtered():
    without_u6 = [row for row in CASCADE_K3 if row[0] != "U6"]  # the k=3 cascade reaches empty
    with pytest.raises(EmptyDatasetError, match=r"3-core.*15 actions by 5 users on 6 items.*k_core"):
        preprocess_interactions(interactions(without_u6), k_core=3)


def test_empty_input_raises_clear_error():
    with pytest.raises(EmptyDatasetError, match="raw_interactions is empty"):
        preprocess_interactions(interactions([]))
    assert issubclass(EmptyDatasetError, ValueError)


def test_sequences_and_leave_one_out_split():
    inter = pl.DataFrame(
        {"user_id": [1, 1, 1, 1, 2, 2, 2], "item_id": [5, 3, 9, 2, 4, 5, 6],
         "timestamp": [1, 2, 3, 4, 10, 10, 11]},
        schema={"user_id": pl.Int32, "item_id": pl.Int32, "timestamp": pl.Int64},
    )  # fmt: skip
    sequences = build_sequences(inter)
    assert sequences.rows() == [(1, [5, 3, 9, 2], [1, 2, 3, 4]), (2, [4, 5, 6], [10, 10, 11])]
    split = leave_one_out_split(sequences)
    assert split.rows() == [
        (1, [5, 3], [1, 2], 9, 3, 2, 4),
        (2, [4], [10], 5, 10, 6, 11),
    ]
    assert split.schema["train_item_ids"] == pl.List(pl.Int32)
    assert split.schema["test_item_id"] == pl.Int32


def test_build_sequences_rejects_unsorted_interactions():
    inter = pl.DataFrame({"user_id": [1, 1], "item_id": [1, 2], "timestamp": [5, 4]})
    with pytest.raises(ValueError, match="sort_histories"):
        build_sequences(inter)


def test_split_rejects_too_short_sequences():
    sequences = pl.DataFrame({"user_id": [1, 2], "item_ids": [[1, 2, 3], [4, 5]],
                              "timestamps": [[1, 2, 3], [4, 5]]})  # fmt: skip
    with pytest.raises(ValueError, match=r"1 user\(s\) have fewer than 3 items.*\[2\]"):
        leave_one_out_split(sequences)


def test_items_table_aligns_metadata_to_ids():
    item_map = pl.DataFrame({"item_id": [1, 2, 3], "original_item_id": ["b", "x", "a"]},
                            schema={"item_id": pl.Int32, "original_item_id": pl.Utf8})  # fmt: skip
    raw_items = pl.DataFrame({
        "item_id": ["a", "gone", "b", "b"], "title": ["A", "G", "B", "B again"],
        "description": ["da", "dg", None, "x"], "brand": ["", "", "bb", ""],
        "categories": ["C > D", "", "E", ""], "image_url": ["http://a", None, None, "http://b2"],
    })  # fmt: skip
    items = build_items_table(raw_items, item_map)
    assert items.rows() == [
        (1, "b", "B", "", "bb", "E", None),  # first metadata row of "b" wins; null text -> ""
        (2, "x", "", "", "", "", None),  # no metadata: empty text, no image
        (3, "a", "A", "da", "", "C > D", "http://a"),
    ]
    assert items.columns == ["item_id", "original_item_id", "title", "description", "brand",
                             "categories", "image_url"]  # fmt: skip
    assert build_items_table(None, item_map).get_column("title").to_list() == ["", "", ""]


def test_dataset_statistics_by_hand_and_markdown():
    inter = pl.DataFrame({"user_id": [1, 1, 2, 2, 3, 3], "item_id": [1, 2, 1, 3, 4, 1],
                          "timestamp": [0] * 6})  # fmt: skip
    stats = dataset_statistics(inter)
    # 6 actions / 3 users = 2.0; 6 / 4 items = 1.5; density 6 / (3 * 4) = 0.5.
    assert stats == {"users": 3, "items": 4, "actions": 6, "avg_actions_per_user": 2.0,
                     "avg_actions_per_item": 1.5, "sparsity": 0.5}  # fmt: skip
    table = render_dataset_stats_markdown(stats, "tiny")
    for line in ("| Datasets | tiny |", "| # Users | 3 |", "| Avg. Actions/User | 2.00 |",
                 "| Avg. Actions/Item | 1.50 |", "| # Sparsity | 50.00% |"):  # fmt: skip
        assert line in table
    beauty = {"users": 22363, "items": 12101, "actions": 198502,
              "avg_actions_per_user": 198502 / 22363, "avg_actions_per_item": 198502 / 12101,
              "sparsity": 1 - 198502 / (22363 * 12101)}  # fmt: skip
    table = render_dataset_stats_markdown(beauty, "Beauty")
    for value in ("22,363", "12,101", "198,502", "8.88", "16.40", "99.93%"):
        assert f"| {value} |" in table


def read_beauty_inter(path: Path) -> pl.DataFrame:
    try:
        from rodpo.data.parsers import parse_interactions
    except ImportError:
        parse_interactions = None
    if parse_interactions is not None:
        return pl.DataFrame(parse_interactions(path, "recbole"))
    raw = pl.read_csv(path, separator="\t", schema_overrides={
        "user_id:token": pl.Utf8, "item_id:token": pl.Utf8, "timestamp:float": pl.Float64})  # fmt: skip
    return raw.select(
        pl.col("user_id:token").alias("user_id"),
        pl.col("item_id:token").alias("item_id"),
        pl.col("timestamp:float").cast(pl.Int64).alias("timestamp"),
    )


def test_amazon_beauty_matches_paper_table_5():
    if not BEAUTY_INTER.exists():
        pytest.skip(f"{BEAUTY_INTER} not available")
    raw = read_beauty_inter(BEAUTY_INTER)
    inter, user_map, item_map = preprocess_interactions(raw, k_core=5)
    stats = dataset_statistics(inter)
    assert (stats["users"], stats["items"], stats["actions"]) == (22363, 12101, 198502)
    assert round(stats["avg_actions_per_user"], 2) == 8.88
    assert round(stats["avg_actions_per_item"], 2) == 16.40
    assert f"{stats['sparsity']:.2%}" == "99.93%"

    # The first user's last two timestamps tie; stable order must keep the file's last row as the
    # test target and the row before it as the validation target.
    first_user = raw.get_column("user_id")[0]
    file_rows = raw.filter(pl.col("user_id") == first_user)
    assert file_rows.get_column("timestamp")[-1] == file_rows.get_column("timestamp")[-2]
    split = leave_one_out_split(build_sequences(inter))
    user_id = user_map.filter(pl.col("original_user_id") == first_user).get_column("user_id")[0]
    row = split.filter(pl.col("user_id") == user_id).row(0, named=True)
    original = dict(item_map.iter_rows())
    assert original[row["test_item_id"]] == file_rows.get_column("item_id")[-1]
    assert original[row["valid_item_id"]] == file_rows.get_column("item_id")[-2]
