"""benchmarks/bench_scale.py at its smallest settings: every stage and path gives a record, dense is
skipped by prediction, and the command line prints one JSON line per configuration."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_scale.py"
TINY = {"kind": "step", "n_items": 120, "variant": "id_only", "steps": 1, "batch_size": 4, "eval_users": 8,
        "device": "cpu", "chunk_items": 64}


@pytest.fixture(scope="module")
def bench(load_module):
    return load_module(SCRIPT, "bench_scale")


@pytest.mark.parametrize("stage", ["warmup", "dpo", "eval"])
@pytest.mark.parametrize("path", ["dense", "chunked"])
def test_every_stage_and_path_gives_a_timed_record(bench, stage, path):
    record = bench.run_one({**TINY, "stage": stage, "path": path})
    assert (record["stage"], record["path"], record["n_items"]) == (stage, path, 120)
    assert record["seconds_per_step"] > 0 and len(record["seconds"]) == 1
    assert record["peak_rss_bytes"] >= record["setup_peak_rss_bytes"] > 0
    assert record["chunk_items"] == (None if path == "dense" else 64)
    assert record["rows"] == (8 if stage == "eval" else 4 * bench.MAX_SEQ_LEN)
    assert ("predicted_bytes" in record) == (path == "dense")
    if (stage, path) == ("eval", "chunked"):  # the rank pass against its matmul floor
        assert record["rank_pass_s"] > 0 and record["matmul_s"] > 0
        assert record["rank_pass_over_matmul"] == pytest.approx(record["rank_pass_s"] / record["matmul_s"], rel=0.01, abs=0.001)


def test_multimodal_dpo_step(bench):
    record = bench.run_one({**TINY, "variant": "multimodal", "stage": "dpo", "path": "chunked"})
    assert record["variant"] == "multimodal" and record["state_bytes"]["reference"] > 0


def test_dense_is_skipped_when_its_predicted_memory_exceeds_the_machine(bench, monkeypatch):
    monkeypatch.setattr(bench, "available_bytes", lambda device: 1)
    record = bench.run_one({**TINY, "stage": "warmup", "path": "dense"})
    assert "dense (rows, n_items + 1) tensors need" in record["skipped"]
    assert record["predicted_bytes"] == bench.DENSE_BYTES_PER_CELL["warmup"] * 4 * bench.MAX_SEQ_LEN * 121
    assert "seconds_per_step" not in record


def test_world_size_one_throughput(bench):
    record = bench.run_one({"kind": "scaling", "world_size": 1, "n_items": 120, "n_windows": 16, "valid_users": 8,
                            "batch_size": 8, "variant": "id_only", "device": "cpu", "chunk_items": "auto"})
    assert record["world_size"] == 1 and record["sequences_per_second"] > 0
    assert "scaling_efficiency" not in record


def test_command_line_runs_each_configuration_in_a_subprocess_and_prints_its_json_line():
    done = subprocess.run([sys.executable, str(SCRIPT), "--n-items", "120", "--stages", "eval", "--path", "chunked",
                           "--variants", "id_only", "--steps", "1", "--eval-users", "8"],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, check=True)
    (record,) = [json.loads(line) for line in done.stdout.splitlines()]
    assert (record["stage"], record["path"], record["threads"]) == ("eval", "chunked", 1)
    assert record["peak_rss_bytes"] >= record["import_rss_bytes"] > 0


def test_targets_per_sequence_sets_the_real_targets_of_every_training_step(bench):
    record = bench.run_one({**TINY, "stage": "warmup", "path": "dense", "targets_per_sequence": 5})
    assert (record["targets_per_sequence"], record["targets_per_step"], record["rows"]) == (5, 4 * 5, 4 * 5)
    assert record["predicted_bytes"] == bench.DENSE_BYTES_PER_CELL["warmup"] * 4 * 5 * 121
    data = bench.synthetic_data(120, 4, 1, targets_per_sequence=5)
    stage = bench.Stage(bench.synthetic_model(data, "id_only"), data,
                        bench.TrainConfig(device="cpu", progress_bar=False), reference_model=None)
    assert stage.step_losses(stage.train_items, stage.train_timestamps)["n_targets"] == 4 * 5
