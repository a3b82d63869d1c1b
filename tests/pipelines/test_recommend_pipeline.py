"""`recommend` on the demo outputs: every user's top-N from the chosen model, with original ids."""

from __future__ import annotations

import polars as pl
import pytest
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project

pytestmark = pytest.mark.slow

TOP_N = 7


def test_recommends_from_the_chosen_model_without_known_items(demo_results, monkeypatch):
    project = demo_results.project
    monkeypatch.chdir(project)
    bootstrap_project(project)
    params = {"recommend": {"model": "warmup", "top_n": TOP_N, "exclude_history": True}}
    with KedroSession.create(project_path=project, runtime_params=params) as session:
        session.run(pipeline_names=["recommend"])

    table = pl.read_parquet(project / "data/07_model_output/demo/warmup/recommendations.parquet")
    assert not (project / "data/07_model_output/demo/rodpo/recommendations.parquet").exists()
    users = pl.read_parquet(next((project / "data/03_primary/demo/user_id_map.parquet").glob("*/*.parquet")))
    items = pl.read_parquet(next((project / "data/03_primary/demo/item_id_map.parquet").glob("*/*.parquet")))
    sequences = pl.read_parquet(next((project / "data/03_primary/demo/sequences.parquet").glob("*/*.parquet")))

    assert table.schema == pl.Schema({"user_id": pl.Utf8, "rank": pl.Int32, "item_id": pl.Utf8, "score": pl.Float32})
    assert set(table["user_id"]) == set(users["original_user_id"])
    assert set(table["item_id"]) <= set(items["original_item_id"])
    per_user = table.group_by("user_id", maintain_order=True).agg("rank", "score")
    assert all(ranks == list(range(1, TOP_N + 1)) for ranks in per_user["rank"].to_list())
    assert all(scores == sorted(scores, reverse=True) for scores in per_user["score"].to_list())

    known = (sequences.explode("item_ids")
             .join(users, on="user_id").join(items, left_on="item_ids", right_on="item_id")
             .select(pl.col("original_user_id").alias("user_id"), pl.col("original_item_id").alias("item_id")))
    assert table.join(known, on=["user_id", "item_id"], how="semi").is_empty()
