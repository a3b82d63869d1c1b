"""The warm-up node under torchrun, as the README documents it: two ranks, one MLflow run, one
written model, nothing written by rank 1."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

pytestmark = pytest.mark.slow

SMALL_DEMO = {"datasets": {"demo": {"demo": {"n_users": 300, "n_items": 150}}}}
TORCHRUN = Path(sys.executable).with_name("torchrun")
KEDRO = Path(sys.executable).with_name("kedro")


def test_torchrun_trains_the_warmup_node_on_two_ranks_with_one_writer(kedro_project, kedro_runner, tmp_path):
    kedro_runner(kedro_project, ["data_download", "data_processing", "feature_extraction"], SMALL_DEMO)
    store = f"sqlite:///{(tmp_path / 'torchrun.db').as_posix()}"
    environment = {**os.environ, "MLFLOW_TRACKING_URI": store, "OMP_NUM_THREADS": "1",
                   "KEDRO_DISABLE_TELEMETRY": "1"}
    result = subprocess.run(
        [str(TORCHRUN), "--standalone", "--nproc-per-node=2", str(KEDRO), "run", "--pipelines=warmup",
         "--params=warmup.epochs=1,warmup.progress_bar=false,warmup.device=cpu"],
        cwd=kedro_project, env=environment, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    models = kedro_project / "data/06_models/demo/warmup_model.safetensors"
    assert len(list(models.iterdir())) == 1  # rank 1 kept its outputs in memory
    runs = mlflow.MlflowClient(tracking_uri=store).search_runs(
        [e.experiment_id for e in mlflow.MlflowClient(tracking_uri=store).search_experiments()])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    checkpoints = list((kedro_project / "data/06_models/demo/checkpoints").iterdir())
    assert len(checkpoints) == 1 and "world_size" in (checkpoints[0] / "done.json").read_text()
