"""Experiment tracking: histories and metrics shaped for MLflow, and what a tracked run records."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rodpo.tracking import final_metrics, history_metrics, metric_key


def test_history_becomes_one_series_per_numeric_field():
    history = [
        {"stage": "dpo", "epoch": 0, "valid_ndcg@10": 0.10},
        {"stage": "dpo", "epoch": 1, "loss": 2.5, "valid_ndcg@10": 0.20, "stopped": True, "dpo_loss": float("nan")},
    ]
    assert history_metrics(history) == {
        "valid_ndcg_at_10": [{"step": 0, "value": 0.10}, {"step": 1, "value": 0.20}],
        "loss": [{"step": 1, "value": 2.5}],
    }


def test_final_metrics_are_keyed_by_split():
    logged = final_metrics({"valid": {"ndcg@10": 0.3}, "test": {"ndcg@10": 0.25, "mrr@5": 0.1}, "users": 9})
    assert logged == {
        "valid.ndcg_at_10": [{"step": 0, "value": 0.3}],
        "test.ndcg_at_10": [{"step": 0, "value": 0.25}],
        "test.mrr_at_5": [{"step": 0, "value": 0.1}],
    }
    with pytest.raises(ValueError, match="'test'"):
        final_metrics({"valid": {}})
    assert metric_key("hit@20") == "hit_at_20"


@pytest.mark.slow
def test_a_tracked_run_has_parameters_curves_metrics_and_reports(demo_results):
    from mlflow import MlflowClient

    client = MlflowClient(demo_results.tracking_uri)
    experiment = client.get_experiment_by_name("rodpo")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "__default__+case_study"
    assert run.data.tags["rodpo.pid"] == str(os.getpid())  # who owns it, should the process be killed

    params = run.data.params  # dataclass parameters, flattened field by field
    assert params["warmup.lr"] == "0.001" and params["rodpo.dpo.beta"] == "1.0"
    assert params["warmup.epochs"] == "2" and params["evaluation.mask_history"] == "False"

    warmup_loss = client.get_metric_history(run.info.run_id, "warmup.epoch.ce_loss")
    assert [m.step for m in warmup_loss] == [1, 2]
    rodpo_valid = client.get_metric_history(run.info.run_id, "rodpo.epoch.valid_ndcg_at_10")
    assert [m.step for m in rodpo_valid] == [0, 1]  # epoch 0 = the warm-up model DPO starts from
    assert {"warmup.test.ndcg_at_10", "rodpo.test.ndcg_at_10", "rodpo.epoch.dpo_loss"} <= set(run.data.metrics)

    reports = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "reports")}
    assert reports == {"dataset_stats.md", "warmup_vs_rodpo.md", "logit_distribution.png", "case_study.md"}
    # artifacts sit next to the (temporary) store, not in the working directory or the repo
    store_dir = Path(demo_results.tracking_uri.removeprefix("sqlite:///")).parent
    assert run.info.artifact_uri.startswith((store_dir / "mlruns").as_uri())


@pytest.mark.slow
def test_a_later_untracked_session_leaves_no_run_open(demo_results, monkeypatch):
    import mlflow
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    monkeypatch.chdir(demo_results.project)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", demo_results.tracking_uri)
    bootstrap_project(demo_results.project)
    # data_download is not tracked (mlflow.yml); same parameters as the fixture, so the same files
    with KedroSession.create(project_path=demo_results.project, runtime_params=demo_results.params) as session:
        session.run(pipeline_names=["data_download"])
    assert mlflow.active_run() is None
    client = mlflow.MlflowClient(demo_results.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("rodpo").experiment_id])
    assert [run.info.status for run in runs] == ["FINISHED"]  # the fixture's run, closed and not reopened
