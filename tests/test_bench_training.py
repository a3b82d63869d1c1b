"""benchmarks/bench_training.py on a 1% Toys dataset: the warm-up process saves weights that each
stage-2 configuration starts from, and every record says its ratio, target and memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_training.py"
TINY = {"device": "cpu", "threads": 1, "epochs": 1, "batch_size": 64, "scale": 0.01, "seed": 2020,
        "variant": "id_only"}


@pytest.fixture(scope="module")
def bench(load_module):
    return load_module(SCRIPT, "bench_training")


def test_reference_free_objectives_run_once_and_dpo_stays_pairwise(bench):
    configs = bench.stage2_configs(["dpo", "sdpo", "bpr"], ["model", "cached_states"], n_negatives=3)
    assert [(c["objective"], c["reference"], c["n_negatives"]) for c in configs] == [
        ("dpo", "model", 1), ("dpo", "cached_states", 1), ("sdpo", "model", 3), ("sdpo", "cached_states", 3),
        ("bpr", None, 3)]


def test_stage2_records_from_the_saved_warmup_weights(bench, tmp_path):
    weights = tmp_path / "warm.pt"
    warm = bench.run_one({**TINY, "kind": "warmup", "warm_weights": str(weights)})
    assert weights.exists() and warm["train_windows"] == 194 and warm["warmup_s_per_epoch"] > 0
    for objective, reference in (("sdpo", "cached_states"), ("bpr", None)):
        record = bench.run_one({**TINY, "kind": "stage2", "warm_weights": str(weights), "objective": objective,
                                "reference": reference, "n_negatives": 2})
        assert (record["objective"], record["reference"], record["n_negatives"]) == (objective, reference, 2)
        assert len(record["stage2_seconds"]) == len(record["warmup_seconds"]) == 1
        assert record["ratio_to_warmup"] > 0 and record["stage2_s_per_epoch"] > 0
        assert record["meets_target"] == (record["ratio_to_warmup"] <= bench.TARGET_RATIO[objective])
        assert record["peak_rss_mib"] >= record["baseline_rss_mib"] - 1 > 0  # RSS counters lag by a few pages
        assert (record["reference_state_mib"] > 0) == (reference is not None)


def test_command_line_prints_one_json_object_with_the_earlier_fields(bench):
    done = subprocess.run([sys.executable, str(SCRIPT), "--threads", "1", "--scale", "0.01", "--batch-size", "64",
                           "--variants", "id_only", "--objectives", "simpo", "--device", "cpu"],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, check=True)
    result = json.loads(done.stdout)
    variant = result["variants"]["id_only"]
    assert result["dataset"]["users"] == 194 and result["n_negatives"] == {"simpo": bench.DEFAULT_N_NEGATIVES}
    assert {"warmup_s_per_epoch", "valid_eval_s", "inference_s_per_2048_users", "params"} <= set(variant)
    record = variant["objectives"]["simpo"]["none"]
    assert record["target_ratio"] == 1.05 and isinstance(record["meets_target"], bool)
