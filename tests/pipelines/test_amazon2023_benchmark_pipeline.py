"""`kedro run --pipelines=data_download,data_processing --params=dataset=toys2023` on a local stand-in of
the 2023 benchmark folder: the preset, the catalog's sink datasets and the transactional run together."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

STAND_INS = Path(__file__).resolve().parents[1] / "data" / "test_amazon2023_benchmark.py"


@pytest.fixture(scope="module")
def stand_ins(load_module):
    return load_module(STAND_INS, "benchmark_stand_ins")


def newest(versioned: Path) -> Path:
    return sorted(versioned.iterdir())[-1] / versioned.name


def test_toys2023_preset_both_splits(kedro_project, kedro_runner, stand_ins, tmp_path):
    mirror = tmp_path / "mirror"
    stand_ins.write_benchmark(mirror, "5core/last_out_w_his", stand_ins.LAST_OUT)
    stand_ins.write_benchmark(mirror, "5core/timestamp_w_his", stand_ins.TIMESTAMP)
    base = {"base_url": str(mirror / "benchmark")}
    kedro_runner(kedro_project, ["data_download", "data_processing"], {"dataset": "toys2023", "dataset_spec": base})
    data = kedro_project / "data"
    splits = pl.read_parquet(newest(data / "05_model_input/toys2023/sequence_splits.parquet"))
    assert splits.rows() == stand_ins.LAST_OUT_SPLITS
    manifest = json.loads((data / "01_raw/toys2023/raw_files.json").read_text())
    assert manifest["benchmark"] == "5core/last_out_w_his"
    assert not (data / "02_intermediate/toys2023/streaming_work").exists() or not any(
        (data / "02_intermediate/toys2023/streaming_work").iterdir())

    kedro_runner(kedro_project, ["data_download", "data_processing"],
                 {"dataset": "toys2023", "dataset_spec": {**base, "split": "timestamp"}})
    splits = pl.read_parquet(newest(data / "05_model_input/toys2023/sequence_splits.parquet"))
    assert splits.rows() == stand_ins.TIMESTAMP_SPLITS
    stats = json.loads(newest(data / "08_reporting/toys2023/dataset_stats.json").read_text())
    assert stats["split"]["test_targets"] == 2 and stats["split"]["valid_users_without_history"] == 1
