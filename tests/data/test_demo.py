"""The synthetic demo dataset: reproducible, readable by the parsers, and carrying real signal."""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl
import pytest
from PIL import Image

from rodpo.data.demo import generate_demo_dataset
from rodpo.data.items import parse_items
from rodpo.data.parsers import parse_interactions
from rodpo.data.preprocess import drop_duplicate_interactions, k_core_filter


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict[str, str]:
    return generate_demo_dataset(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="module")
def tables(demo) -> tuple[pl.DataFrame, pl.DataFrame]:
    return parse_interactions(demo["reviews"], "demo"), parse_items(demo["meta"], "demo")


def test_same_seed_same_bytes(tmp_path):
    small = {"n_users": 60, "n_items": 50, "n_clusters": 5, "image_size": 8}
    first = generate_demo_dataset(tmp_path / "a", seed=3, **small)
    files = {name: Path(first[name]).read_bytes() for name in ("reviews", "meta")}
    images = {p.name: p.read_bytes() for p in sorted(Path(first["images"]).iterdir())}
    again = generate_demo_dataset(tmp_path / "a", seed=3, **small)
    assert {name: Path(again[name]).read_bytes() for name in ("reviews", "meta")} == files
    assert {p.name: p.read_bytes() for p in sorted(Path(again["images"]).iterdir())} == images
    other = generate_demo_dataset(tmp_path / "b", seed=4, **small)
    assert Path(other["reviews"]).read_bytes() != files["reviews"]


def test_files_parse_in_the_2018_format(demo, tables):
    interactions, items = tables
    assert Path(demo["reviews"]).name == "Demo_5.json.gz"
    assert Path(demo["meta"]).name == "meta_Demo.json.gz"
    assert interactions.n_unique("user_id") == 2000
    assert interactions.n_unique("item_id") >= 990
    assert 10 <= interactions.height / 2000 <= 12
    assert 0 < items["image_url"].null_count() < 0.1 * items.height
    assert items.filter(pl.col("title").str.contains("&", literal=True)).height > 0
    assert not items["title"].str.contains("&amp;", literal=True).any()
    assert (items["brand"] == "").sum() > 0
    assert items.height < interactions.n_unique("item_id")  # some items lack metadata
    dates = interactions["timestamp"]
    assert dates.min() >= 1388534400 and dates.max() < 1546300800  # within 2014 .. 2018


def test_images_exist_and_decode(tables):
    _, items = tables
    urls = items["image_url"].drop_nulls().to_list()
    for url in urls[:50]:
        assert url.startswith("file://")
        with Image.open(Path(re.sub(r"^file://", "", url))) as image:
            assert image.size == (32, 32) and image.mode == "RGB"


def test_five_core_removes_some_but_keeps_most(tables):
    interactions, _ = tables
    assert (interactions.group_by("user_id").len()["len"] < 5).sum() > 0
    item_counts = interactions.group_by("item_id").len()["len"]
    assert ((item_counts >= 1) & (item_counts <= 3)).sum() > 0
    assert interactions.height > interactions.unique(["user_id", "item_id"]).height
    core = k_core_filter(drop_duplicate_interactions(interactions), 5)
    assert core.n_unique("user_id") >= 1500
    assert core.n_unique("item_id") >= 800


def test_sequences_carry_cluster_and_order_signal(tables):
    interactions, items = tables
    cluster = items.select("item_id", cluster=pl.col("categories").str.split(" > ").list.last())
    pairs = (
        interactions.with_row_index("row")
        .sort("user_id", "timestamp", "row")
        .join(cluster, on="item_id", how="inner", maintain_order="left")
        .with_columns(
            next_item=pl.col("item_id").shift(-1).over("user_id"),
            next_cluster=pl.col("cluster").shift(-1).over("user_id"),
            next_time=pl.col("timestamp").shift(-1).over("user_id"),
        )
        .drop_nulls("next_item")
    )
    same = (pairs["cluster"] == pairs["next_cluster"]).mean()
    shares = cluster.group_by("cluster").len()["len"] / cluster.height
    chance = float((shares**2).sum())
    assert same > 0.7 > 5 * chance
    # Order matters: within a cluster the chain runs in item-id order, so the forward direction
    # dominates among pairs on different days (same-day ties keep file order, excluded here).
    within = pairs.filter((pl.col("cluster") == pl.col("next_cluster"))
                          & (pl.col("next_time") > pl.col("timestamp")))
    forward = (within["next_item"] > within["item_id"]).mean()
    assert forward > 0.65
