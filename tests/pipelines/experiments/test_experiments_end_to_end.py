"""``experiments_quick`` end to end on a small demo dataset through KedroSession.

The real quick preset (its three studies, 2 seeds: 4 warm-ups and 20 DPO runs) with a tiny model,
300 demo users and one epoch per stage; one run is shared by the module's tests. Every study writes
its versioned results json, markdown table and figures; the json holds per-seed metrics, mean / std
and paired tests; runs shared between studies are trained once.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

# Runtime parameters are nested dicts (KedroSession, unlike `kedro run --params`, does not split
# dotted keys).
SMALL_DEMO = {"datasets": {"demo": {"demo": {"n_users": 300, "n_items": 150, "n_clusters": 6}}}}
TINY_MODEL = {"model": {"hidden_size": 16, "n_layers": 1, "n_heads": 1, "inner_size": 32, "max_seq_len": 20,
                        "n_gap_buckets": 8, "n_time_buckets": 8},
              "evaluation": {"logit_sample_k": 20}}
# For every run of the preset (merged into its `overrides` through conf/local).
QUICK_OVERRIDES = {"warmup.epochs": 1, "rodpo.epochs": 1, "warmup.batch_size": 512, "rodpo.batch_size": 512}
STUDIES = ("negative_sampling", "components", "sensitivity")


@pytest.fixture(scope="module")
def quick_study(tmp_path_factory, project_copy_factory, kedro_runner, trainer_log):
    """The project after the data pipelines and one ``experiments_quick`` run, and the trainer's log."""
    project = project_copy_factory(tmp_path_factory.mktemp("experiments"))
    # The study design is read when the pipeline is built, so run-wide overrides go in conf/local.
    local = {preset: {"overrides": QUICK_OVERRIDES, "significance": {"n_resamples": 200}}
             for preset in ("experiments_quick", "objectives_quick")}
    (project / "conf/local/parameters_experiments.yml").write_text(yaml.safe_dump(local))
    kedro_runner(project, ["data_download", "data_processing", "feature_extraction"], SMALL_DEMO)
    with trainer_log() as messages:
        kedro_runner(project, ["experiments_quick"], {**SMALL_DEMO, **TINY_MODEL})
    return project, messages


def _latest(path: Path) -> Path:
    return sorted(path.iterdir())[-1] / path.name


def test_every_study_writes_results_table_and_figures(quick_study):
    project, _ = quick_study
    reports = project / "data/08_reporting/demo/experiments_quick"
    for study in STUDIES:
        assert _latest(reports / f"{study}.json").exists(), study  # versioned
        for name in (f"{study}.md", f"{study}.png", f"{study}_logits.png"):
            assert (reports / name).stat().st_size > 0, name
    assert (project / "data/07_model_output/demo/experiments_quick/runs/rodpo_k10_s2021/user_ranks.parquet").exists()


def test_results_hold_seeds_mean_std_and_paired_tests(quick_study):
    project, _ = quick_study
    results = json.loads(_latest(project / "data/08_reporting/demo/experiments_quick/negative_sampling.json")
                         .read_text())
    assert results["seeds"] == [2020, 2021]
    labels = [row["label"] for row in results["rows"]]
    assert labels == ["Random Sampling", "Hard Sampling (Argmax)", "Top-K Sampling (Ours)"]
    rodpo = results["settings"]["rodpo"]
    assert set(rodpo["per_seed"]) == {"2020", "2021"}
    ndcg = [rodpo["per_seed"][seed]["ndcg@5"] for seed in ("2020", "2021")]
    assert rodpo["mean"]["ndcg@5"] == pytest.approx(sum(ndcg) / 2)
    assert rodpo["std"]["ndcg@5"] == pytest.approx(abs(ndcg[0] - ndcg[1]) / 2 ** 0.5)
    compared = {(t["kind"], t["a"], t["b"], t["metric"]) for t in results["tests"]}
    assert ("vs_warmup", "warmup", "rodpo", "ndcg@5") in compared
    assert ("vs_reference", "rodpo_negative_strategy_argmax", "rodpo", "mrr@5") in compared
    for test in results["tests"]:  # 2 seeds: the users-only test, but no test across seeds
        assert test["ci95_users"][0] <= test["mean_diff"] <= test["ci95_users"][1]
        assert 0 < test["p_users"] <= 1 and test["n_users"] == results["users"]
        assert test["p_seed"] is None and test["ci95_seed"] is None and test["p_holm"] is None
        assert test["seed_test_unavailable"].startswith("not available: 2 seed(s)")
    table = (project / "data/08_reporting/demo/experiments_quick/negative_sampling.md").read_text()
    assert "| Hard Sampling (Argmax) |" in table and " ± " in table and "no seed-level test is available" in table


def test_shared_runs_are_trained_once(quick_study):
    _, log = quick_study
    warmups = [m for m in log if m.startswith("warmup epoch 1:")]
    dpo_runs = [m for m in log if m.startswith("dpo epoch 1:")]
    # 2 architectures (sparse MoE, MLP) x 2 seeds; 10 DPO settings (rodpo = Top-K = K=50 = beta=1.0,
    # random, argmax, MLP, lambda=0 = the control of every sparse-MoE row, K=10, beta=0.5, the MLP's
    # lambda=0 control, the continued warm-up of each architecture) x 2 seeds
    assert len(warmups) == 4
    assert len(dpo_runs) == 20


def test_the_study_run_is_tracked_with_curves_final_metrics_and_reports(quick_study, mlflow_tracking_store):
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{mlflow_tracking_store.as_posix()}")  # the tests' temporary store
    experiment = client.get_experiment_by_name("rodpo")
    runs = client.search_runs([experiment.experiment_id], "attributes.run_name = 'experiments_quick'")
    assert runs, "no MLflow run for the experiments_quick session"
    run = runs[0]
    run_id = run.info.run_id

    warmup_curve = client.get_metric_history(run_id, "experiments_quick.runs.warmup_s2020.epoch.ce_loss")
    assert [m.step for m in warmup_curve] == [1]
    dpo_curve = client.get_metric_history(run_id, "experiments_quick.runs.rodpo_k10_s2021.epoch.valid_ndcg_at_10")
    assert [m.step for m in dpo_curve] == [0, 1]  # epoch 0 = its warm-up
    assert "experiments_quick.runs.rodpo_s2021.test.ndcg_at_5" in run.data.metrics

    reports = {Path(a.path).name for a in client.list_artifacts(run_id, "reports/experiments_quick")}
    assert {f"{study}{suffix}" for study in STUDIES for suffix in (".md", ".png", "_logits.png")} <= reports


@pytest.fixture(scope="module")
def objectives_study(quick_study, kedro_runner, trainer_log):
    """``objectives_quick`` after ``experiments_quick`` in the same project (shared checkpoints)."""
    project, _ = quick_study
    with trainer_log() as messages:
        kedro_runner(project, ["objectives_quick"], {**SMALL_DEMO, **TINY_MODEL})
    return project, messages


def test_the_objectives_study_reports_each_variant_against_its_warmup_and_lambda_zero_control(objectives_study):
    project, log = objectives_study
    reports = project / "data/08_reporting/demo/objectives_quick"
    results = json.loads(_latest(reports / "objectives.json").read_text())
    assert [row["label"] for row in results["rows"]] == [
        "DPO, top-K uniform (RoDPO)", "DPO, argmax", "DPO, random", "DPO, M = 2, top-K uniform",
        "S-DPO (M = 2), top-K uniform", "SimPO (γ = 0.5), top-K uniform", "BPR, top-K uniform"]
    assert results["metrics"] == ["ndcg@5", "mrr@5", "ndcg@5:masked", "mrr@5:masked"]
    assert {row["control"] for row in results["rows"]} == {"control_lambda0"}
    controlled = {t["b"] for t in results["tests"] if t["kind"] == "vs_control" and t["a"] == "control_lambda0"}
    assert controlled == {row["setting"] for row in results["rows"]}
    for setting in results["settings"].values():  # how every run trained, per seed (the continued warm-up too)
        assert set(setting["training"]) == {"2020", "2021", "2022"}
    assert "control_continued_warmup" in results["settings"] and "rodpo_n_negatives2" in results["settings"]
    for test in results["tests"]:  # 3 seeds: every comparison has its seed-level test, adjusted over the report
        assert 0 < test["p_seed"] <= 1 and 0 < test["p_holm"] <= 1 and 0 < test["q_bh"] <= 1
        assert test["p_holm"] >= test["p_seed"] and test["q_bh"] >= test["p_seed"] - 1e-12
        assert test["ci95_seed"][0] <= test["ci95_seed"][1] and len(test["per_seed_diff"]) == 3
    (primary,) = results["primary"]
    assert (primary["a"], primary["metric"]) == ("warmup", "ndcg@5") and primary["verdict"]
    assert results["settings"]["rodpo_objective_bpr"]["training"]["2020"]["score_margin"] is not None
    table = (reports / "objectives.md").read_text()
    assert "| NDCG@5 (masked) |" in table and "| _λ = 0 control (CE, no dropout)_ |" in table  # shown for context
    assert "### Training" in table and "| S-DPO (M = 2), top-K uniform |" in table
    # the runs of seeds 2020-2021 shared with experiments_quick (warm-up, RoDPO, argmax, random, both controls)
    # were not retrained: DPO M = 2, S-DPO, SimPO, BPR x 2 seeds, then seed 2022's warm-up and its 9 stage-2 runs
    assert len([m for m in log if m.startswith("warmup epoch 1:")]) == 1
    assert len([m for m in log if m.startswith("dpo epoch 1:")]) == 4 * 2 + 9
