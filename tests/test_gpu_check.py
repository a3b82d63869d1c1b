"""benchmarks/gpu_check.sh: --dry-run walks every step on the CPU at tiny sizes into one JSON file;
without a GPU and without --dry-run it exits 2 and writes nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"
ENV = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def driver(load_module):
    return load_module(SCRIPT.with_suffix(".py"), "gpu_check")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_and_without_dry_run_it_says_so_exits_2_and_writes_nothing(tmp_path):
    out = tmp_path / "result.json"
    done = subprocess.run(["bash", str(SCRIPT), "--out", str(out)], capture_output=True, text=True, env=ENV,
                          timeout=120)
    assert done.returncode == 2
    assert "torch sees no CUDA GPU" in done.stderr and "--dry-run" in done.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_kernel_over_chunked_pairs_the_paths_of_each_size_and_stage(driver):
    records = [
        {"n_items": 10, "stage": "warmup", "path": "chunked", "seconds_per_step": 2.0, "peak_cuda_bytes": 400},
        {"n_items": 10, "stage": "warmup", "path": "kernel", "seconds_per_step": 1.0, "peak_cuda_bytes": 100},
        {"n_items": 10, "stage": "eval", "path": "chunked", "seconds_per_step": 1.0},
        {"n_items": 10, "stage": "eval", "path": "kernel", "skipped": "the kernel computes CE only"},
    ]
    assert driver.kernel_over_chunked(records) == [
        {"n_items": 10, "stage": "warmup", "seconds_per_step": 0.5, "peak_cuda_bytes": 0.25}]


@pytest.mark.slow
def test_dry_run_walks_every_step_into_one_json_file(tmp_path):
    out = tmp_path / "gpu_check.json"
    done = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--out", str(out)], capture_output=True, text=True,
                          env=ENV, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"results in {out}" in done.stdout
    report = json.loads(out.read_text())
    assert (report["mode"], report["device"], report["backend"]) == ("dry_run", "cpu", "gloo")
    assert report["facts"]["torch"] == torch.__version__ and report["failed_steps"] == []
    steps = report["steps"]
    assert set(steps) == {"cuda_tests", "bench_scale", "bench_training", "ddp_smoke"}
    assert "skipped" in steps["cuda_tests"]["summary"]  # collected, skipped without CUDA
    records = steps["bench_scale"]["records"]
    assert {(r["stage"], r["path"]) for r in records if "seconds_per_step" in r} == {
        ("warmup", "chunked"), ("dpo", "chunked"), ("eval", "chunked")}
    assert all("skipped" in r for r in records if r["path"] == "kernel")
    variant = steps["bench_training"]["report"]["variants"]["id_only"]
    assert variant["objectives"]["simpo"]["none"]["ratio_to_warmup"] > 0
    smoke = steps["ddp_smoke"]["record"]
    assert (smoke["backend"], smoke["world_size"], smoke["ok"]) == ("gloo", 1, True)
    assert smoke["gradient_max_abs_difference"] <= 1e-5 and smoke["valid"]["ndcg@10"] >= 0
