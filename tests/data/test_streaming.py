"""The streaming path (block scans, bucketed processing, sinks) gives exactly the in-memory reference's
tables on every raw format: the demo, Beauty, stand-ins of the 2014/2018/2023 dumps and RecBole files
(duplicates, same-day ties, users and items below k), and a 10^6-line file with one bad line."""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from kedro.io.core import DatasetError

from rodpo.data.demo import generate_demo_dataset
from rodpo.data.parsers import MalformedInputError, parse_interactions
from rodpo.data.preprocess import build_sequences, leave_one_out_split, preprocess_interactions
from rodpo.data.raw_scan import scan_interactions
from rodpo.data.streaming import build_sequences_streaming, process_interactions
from rodpo.lazy_parquet import LazyParquetDataset

BEAUTY_INTER = Path(__file__).resolve().parents[3] / "shared" / "benchmarks" / "amazon-beauty" / "amazon-beauty.inter"


def sunk(frame: pl.LazyFrame, path: Path) -> pl.LazyFrame:
    """Save through the project's sink dataset and scan it back, as the pipeline does."""
    dataset = LazyParquetDataset(filepath=str(path))
    dataset.save(frame)
    return dataset.load()


def streaming_tables(path: Path, source: str, work: Path, rows_per_bucket: int, k_core: int = 5):
    raw = sunk(scan_interactions(path, source), work / "raw.parquet")
    interactions, user_map, item_map = process_interactions(raw, k_core=k_core, work_dir=work / "scratch",
                                                            rows_per_bucket=rows_per_bucket)
    interactions = sunk(interactions, work / "interactions.parquet")
    sequences = sunk(build_sequences_streaming(interactions, rows_per_bucket=rows_per_bucket),
                     work / "sequences.parquet")
    splits = sunk(leave_one_out_split(sequences), work / "splits.parquet")
    assert not (work / "scratch").exists()  # the buckets are removed once read
    return (raw.collect(), interactions.collect(), user_map, item_map, sequences.collect(), splits.collect())


def reference_tables(path: Path, source: str, k_core: int = 5):
    raw = parse_interactions(path, source)
    interactions, user_map, item_map = preprocess_interactions(raw, k_core=k_core)
    sequences = build_sequences(interactions)
    return raw, interactions, user_map, item_map, sequences, leave_one_out_split(sequences)


def assert_same_tables(path: Path, source: str, work: Path, rows_per_bucket: int, k_core: int = 5) -> None:
    names = ("raw_interactions", "interactions", "user_id_map", "item_id_map", "sequences", "sequence_splits")
    expected = reference_tables(path, source, k_core)
    got = streaming_tables(path, source, work, rows_per_bucket, k_core)
    for name, want, have in zip(names, expected, got):
        assert have.schema == want.schema, name
        assert have.equals(want), name


def stand_in_rows(seed: int, n_users: int = 60, n_items: int = 40, per_user: int = 7) -> list[tuple[str, str, int]]:
    """Raw rows in a dump's order (grouped by item) with repeated reviews, same-day ties and a tail of
    users and items below k."""
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(n_users):
        count = per_user if user % 5 else 2  # every fifth user is below k = 5
        for item in rng.choice(n_items, size=count, replace=False):
            day = int(rng.integers(0, 30))  # 30 days for 7 items: many same-day ties
            rows.append((f"U{user:03d}", f"B{item:04d}", 1_400_000_000 + 86_400 * day))
    rows += [rows[3], rows[10], (rows[20][0], rows[20][1], rows[20][2] - 86_400)]  # repeats, one earlier
    rows += [(f"U{900 + n}", f"B{9000 + n}", 1_400_000_000) for n in range(3)]  # singletons
    order = sorted(range(len(rows)), key=lambda i: rows[i][1])  # the dumps list reviews item by item
    return [rows[i] for i in order]


def write_lines(path: Path, lines: list[str]) -> Path:
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(gzip.compress(data, mtime=0) if path.suffix == ".gz" else data)
    return path


def review_line(source: str, user: str, item: str, seconds: int, n: int) -> str:
    if source == "amazon2014" and n % 4 == 0:  # some 2014 lines are Python dict literals
        return repr({"reviewerID": user, "asin": item, "unixReviewTime": seconds, "overall": 5.0})
    if source == "amazon2023":
        return json.dumps({"user_id": user, "parent_asin": item, "asin": item + "X", "rating": 4.0,
                           "timestamp": seconds * 1000 + n % 1000})
    return json.dumps({"reviewerID": user, "asin": item, "unixReviewTime": seconds, "overall": 4.0})


@pytest.mark.parametrize("source", ["amazon2014", "amazon2018", "amazon2023"])
def test_review_dumps_stream_to_the_reference_tables(tmp_path, source):
    lines = [review_line(source, u, i, t, n) for n, (u, i, t) in enumerate(stand_in_rows(seed=1))]
    path = write_lines(tmp_path / "reviews.json.gz", lines)
    assert_same_tables(path, source, tmp_path / "work", rows_per_bucket=37)  # many buckets


def test_recbole_file_streams_to_the_reference_tables(tmp_path):
    rows = stand_in_rows(seed=2)
    lines = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    lines += [f"{u}\t{i}\t5.0\t{t}.0" for u, i, t in rows]
    assert_same_tables(write_lines(tmp_path / "toy.inter", lines), "recbole", tmp_path / "work", rows_per_bucket=50)


def test_demo_streams_to_the_reference_tables(tmp_path):
    demo = generate_demo_dataset(tmp_path / "demo")
    assert_same_tables(Path(demo["reviews"]), "demo", tmp_path / "work", rows_per_bucket=2_000)


def test_beauty_streams_to_the_reference_tables_table_5(tmp_path):
    if not BEAUTY_INTER.exists():
        pytest.skip(f"{BEAUTY_INTER} not available")
    _, interactions, *_, splits = streaming_tables(BEAUTY_INTER, "recbole", tmp_path / "work", rows_per_bucket=40_000)
    assert (interactions["user_id"].n_unique(), interactions["item_id"].n_unique(), interactions.height) == (
        22363, 12101, 198502)  # the paper's Table 5
    assert_same_tables(BEAUTY_INTER, "recbole", tmp_path / "again", rows_per_bucket=40_000)


def test_one_bucket_and_many_buckets_agree(tmp_path):
    lines = [review_line("amazon2018", u, i, t, n) for n, (u, i, t) in enumerate(stand_in_rows(seed=3))]
    path = write_lines(tmp_path / "reviews.json", lines)
    one = streaming_tables(path, "amazon2018", tmp_path / "one", rows_per_bucket=10**9)
    many = streaming_tables(path, "amazon2018", tmp_path / "many", rows_per_bucket=5)
    assert all(a.equals(b) for a, b in zip(one, many))


def test_a_malformed_line_in_a_million_lines_is_reported_with_file_and_line(tmp_path, caplog):
    n, bad = 1_000_000, 654_321
    line = pl.concat_str(pl.lit('{"reviewerID": "U'), (pl.int_range(n) % 50_000).cast(pl.Utf8),
                         pl.lit('", "asin": "B'), (pl.int_range(n) % 7_919).cast(pl.Utf8),
                         pl.lit('", "unixReviewTime": '), (1_400_000_000 + pl.int_range(n)).cast(pl.Utf8), pl.lit("}"))
    lines = pl.select(line.alias("line")).with_columns(
        pl.when(pl.int_range(n) == bad - 1).then(pl.lit('{"reviewerID": "U1", "asin": ')).otherwise("line")
        .alias("line"))
    path = tmp_path / "Big_5.json"
    lines.write_csv(path, include_header=False, quote_style="never")
    with caplog.at_level(logging.WARNING, logger="rodpo.data.parsers"):
        raw = scan_interactions(path, "amazon2018").select(pl.len()).collect(engine="streaming")
    assert raw.item() == n - 1
    assert f"{path}: 1 of {n} lines malformed" in caplog.text and f"first at line {bad} " in caplog.text
    with pytest.raises(MalformedInputError, match=f"first at line {bad} .*max_malformed_fraction"):
        scan_interactions(path, "amazon2018", max_malformed_fraction=0.0).collect(engine="streaming")


def test_a_failed_save_leaves_no_file_behind(tmp_path):
    path = write_lines(tmp_path / "r.json", ['{"reviewerID": "U1", "asin": "B1", "unixReviewTime": 1}', "garbage"])
    dataset = LazyParquetDataset(filepath=str(tmp_path / "raw.parquet"))
    with pytest.raises(DatasetError, match=r"r.json: 1 of 2 lines malformed.*first at line 2"):
        dataset.save(scan_interactions(path, "amazon2018"))
    assert list(tmp_path.glob("raw.parquet*")) == []


def test_nulls_and_an_empty_core_are_refused_as_the_reference_does(tmp_path):
    from rodpo.data.preprocess import EmptyDatasetError

    schema = {"user_id": pl.Utf8, "item_id": pl.Utf8, "timestamp": pl.Int64}
    with_null = pl.LazyFrame({"user_id": ["u1", None], "item_id": ["a", "b"], "timestamp": [1, 2]}, schema=schema)
    with pytest.raises(ValueError, match=r"null values \{'user_id': 1, 'item_id': 0, 'timestamp': 0\}"):
        process_interactions(with_null, work_dir=tmp_path / "a")
    tiny = pl.LazyFrame({"user_id": ["u1", "u2"], "item_id": ["a", "a"], "timestamp": [1, 2]}, schema=schema)
    with pytest.raises(EmptyDatasetError, match=r"3-core.*2 actions by 2 users on 1 items.*Lower k_core"):
        process_interactions(tiny, k_core=3, work_dir=tmp_path / "b")


def test_two_ids_under_one_key_are_detected(tmp_path, monkeypatch):
    from rodpo.data import streaming

    def weak_keys(which):  # every id of one length shares a key: collisions on purpose
        def keyed(raw):
            length = {c: pl.col(c).str.len_bytes().cast(pl.UInt64) for c in ("user_id", "item_id")}
            strong = {c: pl.col(c).hash(1) for c in ("user_id", "item_id")}
            keys = {c: (length if c == which else strong)[c] for c in ("user_id", "item_id")}
            return raw.with_columns(keys["user_id"].alias("_uk"), pl.col("user_id").hash(2).alias("_uk2"),
                                    keys["item_id"].alias("_ik"), pl.col("item_id").hash(2).alias("_k2"))
        return keyed

    raw = pl.LazyFrame({"user_id": ["u1", "u2"], "item_id": ["a", "b"], "timestamp": [1, 2]})
    for column in ("user_id", "item_id"):
        monkeypatch.setattr(streaming, "_keyed", weak_keys(column))
        with pytest.raises(RuntimeError, match=f"1 {column} key.*several ids"):
            process_interactions(raw, k_core=1, work_dir=tmp_path / column)


# The k-core cascades of test_preprocess: removing one user or item pushes others below k, round by round.
CASCADE = [("U1", "a", 1), ("U1", "b", 2), ("U1", "c", 3), ("U2", "a", 1), ("U2", "b", 2), ("U2", "c", 3),
           ("U3", "a", 1), ("U3", "b", 2), ("U3", "d", 3), ("U4", "c", 1), ("U4", "d", 2), ("U4", "e", 3),
           ("U5", "d", 1), ("U5", "e", 2), ("U5", "f", 3), ("U6", "a", 1), ("U6", "b", 2), ("U6", "c", 3),
           ("U7", "c", 4), ("U7", "d", 5)]


@pytest.mark.parametrize("k", [1, 2, 3, 4])
@pytest.mark.parametrize("rows_per_bucket", [1, 3, 100])
def test_k_core_cascades_match_the_reference(tmp_path, k, rows_per_bucket):
    raw = pl.DataFrame(CASCADE, schema={"user_id": pl.Utf8, "item_id": pl.Utf8, "timestamp": pl.Int64}, orient="row")
    try:
        expected = preprocess_interactions(raw, k_core=k)
    except ValueError as error:  # the cascade can reach empty: both must say so
        with pytest.raises(type(error)):
            process_interactions(raw.lazy(), k_core=k, work_dir=tmp_path / "w", rows_per_bucket=rows_per_bucket)
        return
    interactions, users, items = process_interactions(raw.lazy(), k_core=k, work_dir=tmp_path / "w",
                                                      rows_per_bucket=rows_per_bucket)
    assert interactions.collect().equals(expected[0]) and users.equals(expected[1]) and items.equals(expected[2])
