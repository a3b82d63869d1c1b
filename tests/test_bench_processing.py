"""benchmarks/bench_processing.py at a tiny size: every format gives one JSON object per size with the
peak RSS, the seconds and per-stage figures; the synthetic files are generated once and reused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_processing.py"


def run(cache: Path, *arguments: str) -> list[dict]:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "POLARS_MAX_THREADS": "1",
                   "PYTHONPATH": str(SCRIPT.parents[1] / "src")}
    result = subprocess.run([sys.executable, str(SCRIPT), "--cache", str(cache), *arguments], env=environment,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_one_record_per_format_size_and_engine_from_cached_files(tmp_path):
    records = run(tmp_path, "--lines", "3000,4000", "--format", "amazon2023,amazon2023_benchmark,recbole",
                  "--engine", "streaming,in_memory")
    keys = [(r["format"], r["lines"], r["engine"]) for r in records]
    assert keys == [("amazon2023", 3000, "streaming"), ("amazon2023", 3000, "in_memory"),
                    ("amazon2023", 4000, "streaming"), ("amazon2023", 4000, "in_memory"),
                    ("amazon2023_benchmark", 3000, "streaming"), ("amazon2023_benchmark", 4000, "streaming"),
                    ("recbole", 3000, "streaming"), ("recbole", 3000, "in_memory"),
                    ("recbole", 4000, "streaming"), ("recbole", 4000, "in_memory")]
    for record in records:
        assert record["peak_rss_bytes"] > 0 and record["seconds"] > 0
        assert set(record["stages"]) == {"parse", "filter_and_index", "sequences", "split", "statistics"}
    by_key = {key: record for key, record in zip(keys, records)}
    for fmt in ("amazon2023", "recbole"):  # both engines find the same 5-core
        assert by_key[(fmt, 3000, "streaming")]["actions"] == by_key[(fmt, 3000, "in_memory")]["actions"]
    assert by_key[("amazon2023_benchmark", 3000, "streaming")]["actions"] == 3000  # the given rows, all kept
    steps = by_key[("amazon2023", 3000, "streaming")]["steps"]
    assert set(steps) >= {"codes", "duplicates", "k_core", "ids"} and steps["codes"]["peak_rss_bytes"] > 0
    generated = {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/*") if p.is_file()}
    run(tmp_path, "--lines", "3000", "--format", "recbole")
    assert {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/*") if p.is_file()} == generated  # reused
    assert not list(tmp_path.glob("rodpo_bench_*"))  # no scratch left
