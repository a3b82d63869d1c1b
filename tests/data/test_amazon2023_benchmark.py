"""The Amazon Reviews 2023 benchmark split files, read as given, on local stand-ins with the official
file names, header and columns (benchmark_scripts/{last_out,timestamp}_split.py of the release)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import polars as pl
import pytest
import yaml

from rodpo.data.amazon2023_benchmark import BenchmarkFileError, benchmark_file_urls, benchmark_layout
from rodpo.data.parsers import MalformedInputError
from rodpo.data.splits import AMAZON2023_T1, AMAZON2023_T2, global_time_split
from rodpo.lazy_parquet import LazyParquetDataset
from rodpo.pipelines.data_download.nodes import DownloadParams, download_raw_data
from rodpo.pipelines.data_processing import nodes

REPO_ROOT = Path(__file__).resolve().parents[2]
CATEGORY = "Toys_and_Games"
HEADER = "user_id,parent_asin,rating,timestamp"

# last_out_w_his: U1's C ties B (2000 ms); U2's train repeats B (kept as given); U3 has one item (below k).
LAST_OUT = {
    "train": ["U1,A,5.0,1000,", "U1,B,4.0,2000,A", "U2,B,3.0,1500,", "U2,B,3.0,1500,B"],
    "valid": ["U1,C,5.0,2000,A B", "U2,A,4.0,2500,B B"],
    "test": ["U1,D,5.0,5000,A B C", "U2,E,1.0,3500,B B A", "U3,F,2.0,4000,"],
}
LAST_OUT_SPLITS = [  # ids by first appearance: train file, then valid, then test
    (1, [1, 2], [1, 2], [3], [2], [4], [5]),
    (2, [2, 2], [1, 1], [1], [2], [5], [3]),
    (3, [], [], [], [], [6], [4]),
]
DAY_MS = 86_400_000
# timestamp_w_his around the release's cuts: U1 only in train; U2 two test targets; U3 valid without history.
STAMPS = {"X": 1_500_000_000_000, "Y": 1_600_000_000_000, "P": 1_610_000_000_000, "Q": AMAZON2023_T1 + DAY_MS,
          "V": AMAZON2023_T1 + 2 * DAY_MS, "R": AMAZON2023_T2 + DAY_MS, "S": AMAZON2023_T2 + 2 * DAY_MS}
TIMESTAMP = {
    "train": [f"U1,X,5.0,{STAMPS['X']},", f"U1,Y,5.0,{STAMPS['Y']},X", f"U2,P,4.0,{STAMPS['P']},"],
    "valid": [f"U2,Q,4.0,{STAMPS['Q']},P", f"U3,V,1.0,{STAMPS['V']},"],
    "test": [f"U2,R,3.0,{STAMPS['R']},P Q", f"U2,S,2.0,{STAMPS['S']},P Q R"],
}
SECONDS = {item: stamp // 1000 for item, stamp in STAMPS.items()}
TIMESTAMP_SPLITS = [
    (1, [1, 2], [SECONDS["X"], SECONDS["Y"]], [], [], [], []),
    (2, [3], [SECONDS["P"]], [4], [SECONDS["Q"]], [6, 7], [SECONDS["R"], SECONDS["S"]]),
    (3, [], [], [5], [SECONDS["V"]], [], []),
]


def write_benchmark(root: Path, folder: str, rows: dict[str, list[str]], *, category: str = CATEGORY,
                    gzipped: tuple[str, ...] = ("test",), header: str | None = None) -> Path:
    """<root>/benchmark/<folder>/<Category>.<part>.csv[.gz] and <root>/raw/meta_categories/meta_<Category>.jsonl.gz."""
    with_history = folder.endswith("_w_his")
    text = header or (HEADER + (",history" if with_history else ""))
    directory = root / "benchmark" / folder
    directory.mkdir(parents=True, exist_ok=True)
    for part, lines in rows.items():
        body = [text, *(line if with_history else line.rsplit(",", 1)[0] for line in lines)]
        data = ("\n".join(body) + "\n").encode()
        if part in gzipped:
            (directory / f"{category}.{part}.csv.gz").write_bytes(gzip.compress(data, mtime=0))
        else:
            (directory / f"{category}.{part}.csv").write_bytes(data)
    items = sorted({line.split(",")[1] for lines in rows.values() for line in lines})
    meta = root / "raw" / "meta_categories"
    meta.mkdir(parents=True, exist_ok=True)
    records = [json.dumps({"parent_asin": item, "title": f"Toy {item}", "store": "Acme", "images": []}) for item in items]
    (meta / f"meta_{category}.jsonl.gz").write_bytes(gzip.compress(("\n".join(records) + "\n").encode(), mtime=0))
    return root / "benchmark"


def sources() -> dict:
    return yaml.safe_load((REPO_ROOT / "conf/base/parameters_data_download.yml").read_text())["sources"]


def download(base: Path, tmp_path: Path, benchmark: str, category: str = CATEGORY, split: str | None = None) -> dict:
    spec = {"source": "amazon2023_benchmark", "category": category, "benchmark": benchmark, "base_url": str(base),
            **({"split": split} if split else {})}
    return download_raw_data("toys2023", spec, sources(), DownloadParams(raw_dir=str(tmp_path / "raw_files"),
                                                                          progress=False))


def sunk(frame, path: Path) -> pl.LazyFrame:
    dataset = LazyParquetDataset(filepath=str(path))
    dataset.save(frame)
    return dataset.load()


def process(raw_files: dict, tmp_path: Path, spec: dict | None = None, **params):
    """data_processing's nodes in order, each output through the project's sink dataset."""
    spec, options = spec or {}, nodes.ProcessingParams(work_dir=str(tmp_path / "work"), **params)
    raw = sunk(nodes.parse_raw_interactions(raw_files, options, spec), tmp_path / "raw.parquet")
    interactions, users, items = nodes.filter_and_index_interactions(raw, options, spec)
    interactions = sunk(interactions, tmp_path / "interactions.parquet")
    sequences = sunk(nodes.build_sequences(interactions, options), tmp_path / "sequences.parquet")
    splits = sunk(nodes.split_sequences(sequences, options, spec), tmp_path / "splits.parquet").collect()
    return interactions.collect(), users, items, splits


def test_last_out_files_are_read_as_given(tmp_path):
    base = write_benchmark(tmp_path / "mirror", "5core/last_out_w_his", LAST_OUT)
    raw_files = download(base, tmp_path, "5core/last_out_w_his", split="last_out")
    assert Path(raw_files["files"]["train"]).name == f"{CATEGORY}.train.csv"  # the plain file stands in
    assert Path(raw_files["files"]["test"]).name == f"{CATEGORY}.test.csv.gz"
    interactions, users, items, splits = process(raw_files, tmp_path, k_core=5)  # k-core does not apply
    assert splits.rows() == LAST_OUT_SPLITS
    assert users["original_user_id"].to_list() == ["U1", "U2", "U3"]
    assert items["original_item_id"].to_list() == list("ABCDEF")
    assert interactions["split"].to_list() == [0, 0, 1, 2, 0, 0, 1, 2, 2]
    meta = nodes.parse_raw_items(raw_files, nodes.ProcessingParams())
    assert meta.filter(pl.col("item_id") == "C").row(0)[1] == "Toy C"  # text from the raw release's metadata
    assert not (tmp_path / "work").exists() or not any((tmp_path / "work").iterdir())


def test_the_folder_without_history_gives_the_same_split(tmp_path):
    base = write_benchmark(tmp_path / "mirror", "5core/last_out", LAST_OUT, gzipped=())
    assert process(download(base, tmp_path, "5core/last_out"), tmp_path)[3].rows() == LAST_OUT_SPLITS


def test_timestamp_files_keep_several_targets_and_users_without_history(tmp_path):
    base = write_benchmark(tmp_path / "mirror", "0core/timestamp_w_his", TIMESTAMP)
    _, _, _, splits = process(download(base, tmp_path, "0core/timestamp_w_his"), tmp_path)
    assert splits.rows() == TIMESTAMP_SPLITS
    stats, markdown = nodes.summarise_dataset(pl.read_parquet(tmp_path / "interactions.parquet"), splits, "toys2023")
    assert stats["split"]["test_targets"] == 2 and stats["split"]["users_only_in_train"] == 1
    assert stats["split"]["valid_targets_without_history"] == 1
    assert "| valid targets without history | 1 |" in markdown


def test_the_given_timestamp_split_is_rodpos_global_time_split_of_the_same_rows(tmp_path):
    rows = [line.split(",") for part in ("train", "valid", "test") for line in TIMESTAMP[part]]
    raw = tmp_path / f"{CATEGORY}.jsonl"
    raw.write_text("".join(json.dumps({"user_id": u, "parent_asin": i, "rating": float(r), "timestamp": int(t)}) + "\n"
                           for u, i, r, t, _ in rows))
    raw_files = {"source": "amazon2023", "files": {"reviews": str(raw)}}
    spec = {"processing": {"split": "global_time", "t1": AMAZON2023_T1, "t2": AMAZON2023_T2}}
    assert process(raw_files, tmp_path, spec, k_core=1)[3].rows() == TIMESTAMP_SPLITS


def test_a_history_that_disagrees_with_the_rows_names_file_and_line(tmp_path):
    rows = {**TIMESTAMP, "test": [TIMESTAMP["test"][0], f"U2,S,2.0,{STAMPS['S']},P R"]}
    base = write_benchmark(tmp_path / "mirror", "5core/timestamp_w_his", rows)
    with pytest.raises(BenchmarkFileError, match=rf"{CATEGORY}\.test\.csv\.gz line 3: history 'P R' disagrees.*"
                                                 r"give 'P Q R'.*without _w_his"):
        process(download(base, tmp_path, "5core/timestamp_w_his"), tmp_path)
    assert not list((tmp_path / "work").glob("*"))  # the check's buckets are gone
    assert not (tmp_path / "raw.parquet").exists()  # nothing half-written


def test_a_file_whose_columns_differ_from_the_official_header_is_refused(tmp_path):
    base = write_benchmark(tmp_path / "mirror", "5core/last_out", LAST_OUT, header="user_id,item_id,rating,timestamp")
    with pytest.raises(BenchmarkFileError, match=rf"{CATEGORY}\.train\.csv line 1: header 'user_id,item_id,rating,"
                                                 r"timestamp', expected 'user_id,parent_asin,rating,timestamp'"):
        process(download(base, tmp_path, "5core/last_out"), tmp_path)


def test_a_w_his_line_without_its_history_field_is_malformed(tmp_path):
    rows = {**LAST_OUT, "train": [*LAST_OUT["train"][:1], "U1,B,4.0,2000", *LAST_OUT["train"][2:]]}
    base = write_benchmark(tmp_path / "mirror", "5core/last_out_w_his", rows, gzipped=())
    with pytest.raises(MalformedInputError, match=r"train\.csv: 1 of 4 lines malformed.*first at line 3 \(4 comma-separated"):
        process(download(base, tmp_path, "5core/last_out_w_his"), tmp_path)


def test_a_category_missing_from_the_folder_lists_the_ones_present(tmp_path):
    base = write_benchmark(tmp_path / "mirror", "5core/last_out_w_his", LAST_OUT)
    with pytest.raises(FileNotFoundError, match=r"no Toys\.train\.csv\[\.gz\] for category 'Toys'.*"
                                                r"\['Toys_and_Games'\].*dataset_spec.category"):
        download(base, tmp_path, "5core/last_out_w_his", category="Toys")


def test_benchmark_folder_names_are_checked():
    assert benchmark_layout("0core/timestamp_w_his") == ("0core", "timestamp", True)
    with pytest.raises(ValueError, match=r"dataset_spec.benchmark='5core/leave_one_out'.*5core/last_out_w_his"):
        benchmark_layout("5core/leave_one_out")
    with pytest.raises(ValueError, match=r"dataset_spec.split='timestamp'.*set dataset_spec.split=last_out"):
        benchmark_layout("5core/last_out", "timestamp")
    with pytest.raises(ValueError, match="dataset_spec.benchmark"):
        benchmark_file_urls({"benchmark": None}, {})


def test_global_time_is_refused_for_files_that_carry_their_split(tmp_path):
    base = write_benchmark(tmp_path / "mirror", "5core/last_out", LAST_OUT)
    spec = {"processing": {"split": "global_time", "t1": 1, "t2": 2}}
    with pytest.raises(ValueError, match="carry their own split"):
        process(download(base, tmp_path, "5core/last_out"), tmp_path, spec)


def test_official_urls_follow_the_release_layout():
    from rodpo.data.sources import dataset_file_urls

    spec = {"source": "amazon2023_benchmark", "category": CATEGORY, "benchmark": "5core/timestamp_w_his"}
    urls = dataset_file_urls(spec, sources())
    root = "https://mcauleylab.ucsd.edu/public_datasets/data/amazon_2023"
    assert urls == {
        "train": f"{root}/benchmark/5core/timestamp_w_his/{CATEGORY}.train.csv.gz",
        "valid": f"{root}/benchmark/5core/timestamp_w_his/{CATEGORY}.valid.csv.gz",
        "test": f"{root}/benchmark/5core/timestamp_w_his/{CATEGORY}.test.csv.gz",
        "meta": f"{root}/raw/meta_categories/meta_{CATEGORY}.jsonl.gz",
    }


def test_global_time_split_matches_given_rows_by_construction():
    # The slices of a given split and of the global cut agree whenever the labels follow the time.
    sequences = pl.DataFrame({"user_id": [1], "item_ids": [[1, 2, 3]],
                              "timestamps": [[SECONDS["P"], SECONDS["Q"], SECONDS["R"]]]})
    assert global_time_split(sequences, AMAZON2023_T1, AMAZON2023_T2).row(0)[3] == [2]
