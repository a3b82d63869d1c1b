"""The experiments pipelines built from conf/base: namespaced runs, shared warm-ups, registration."""

from __future__ import annotations

from pathlib import Path

import pytest
from kedro.config import OmegaConfigLoader
from kedro.framework.project import pipelines
from kedro.framework.startup import bootstrap_project
from kedro.io import DataCatalog

from rodpo.pipelines.evaluation.nodes import evaluate_recommender
from rodpo.pipelines.experiments.pipeline import experiments_pipeline, plan_from_parameters, project_parameters
from rodpo.pipelines.rodpo.nodes import train_rodpo_model
from rodpo.pipelines.warmup.nodes import train_warmup_model

REPO_ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def parameters() -> dict:
    bootstrap_project(REPO_ROOT)
    return project_parameters(REPO_ROOT, env="base")


def _by_suffix(pipe, suffix: str) -> list:
    return [n for n in pipe.nodes if n.name.endswith(f".{suffix}")]


def test_full_preset_trains_one_warmup_per_architecture_and_seed(parameters):
    pipe = experiments_pipeline(plan_from_parameters(parameters, "experiments"), "experiments")
    warmups = _by_suffix(pipe, "train_warmup_model")
    dpo = _by_suffix(pipe, "train_rodpo_model")
    # 2 architectures (sparse MoE, MLP) x 3 seeds
    assert len(warmups) == 2 * 3
    # 14 distinct DPO settings x 3 seeds: RoDPO (= Top-K = K=50 = beta=1.0), random, argmax,
    # w/o Sparse MoE, lambda = 0 (the control of every sparse-MoE row), K in {10, 20, 100},
    # beta in {0.1, 0.5, 2.0}, the lambda = 0 control of w/o Sparse MoE, and the continued warm-up
    # of each warm-up
    assert len(dpo) == 14 * 3
    # every run is evaluated once; two nodes per study (results, then reports)
    assert len(_by_suffix(pipe, "evaluate_recommender")) == 48
    assert len(_by_suffix(pipe, "summarise_study")) == len(_by_suffix(pipe, "report_study")) == 3
    assert {n.func for n in warmups} == {train_warmup_model}
    assert {n.func for n in dpo} == {train_rodpo_model}
    assert {n.func for n in _by_suffix(pipe, "evaluate_recommender")} == {evaluate_recommender}


def test_dpo_runs_start_from_the_warmup_of_their_architecture_and_seed(parameters):
    pipe = experiments_pipeline(plan_from_parameters(parameters, "experiments"), "experiments")
    dpo = {n.namespace: n for n in _by_suffix(pipe, "train_rodpo_model")}
    assert dpo["experiments.runs.rodpo_k10_s2021"].inputs[0] == "experiments.runs.warmup_s2021.model"
    assert dpo["experiments.runs.control_lambda0_s2020"].inputs[0] == "experiments.runs.warmup_s2020.model"
    assert (dpo["experiments.runs.rodpo_moe_mode_mlp_s2022"].inputs[0]
            == "experiments.runs.warmup_moe_mode_mlp_s2022.model")
    warmup_inputs = {n.inputs[0] for n in dpo.values()}
    assert len(warmup_inputs) == 2 * 3  # 42 DPO runs read 6 warm-up models
    for control in ("control_lambda0_moe_mode_mlp", "control_continued_warmup_moe_mode_mlp"):
        assert (dpo[f"experiments.runs.{control}_s2020"].inputs[0]
                == "experiments.runs.warmup_moe_mode_mlp_s2020.model")  # a control starts from its row's warm-up
    # the only free inputs are the shared data and parameters: nothing is trained twice
    assert {name for name in pipe.inputs() if not name.startswith("params:")} == {
        "sequence_splits", "item_id_map", "item_text_features", "item_image_features", "item_image_mask",
        "feature_manifest"}


def test_quick_preset_is_smaller_and_registered_outside_the_default(parameters):
    quick = experiments_pipeline(plan_from_parameters(parameters, "experiments_quick"), "experiments_quick")
    assert len(_by_suffix(quick, "train_warmup_model")) == 2 * 2
    assert len(_by_suffix(quick, "train_rodpo_model")) == 10 * 2  # 7 settings + the MLP's λ = 0 control + 2 continued
    assert all(n.name.startswith("experiments_quick.") for n in quick.nodes)
    bootstrap_project(REPO_ROOT)
    assert {"experiments", "experiments_quick", "objectives", "objectives_quick"} <= set(pipelines)
    default = {n.name for n in pipelines["__default__"].nodes}
    assert not any(name.startswith(("experiments", "objectives")) for name in default)


def test_objectives_preset_crosses_the_objectives_with_the_negative_pools(parameters):
    plan = plan_from_parameters(parameters, "objectives")
    study = plan.studies["objectives"]
    objectives = {(plan.settings[row.setting].difference.get("rodpo.dpo.objective", "dpo"),
                   plan.settings[row.setting].difference.get("rodpo.dpo.negative_strategy", "topk_uniform"))
                  for row in study.rows}
    assert objectives == {(o, s) for o in ("dpo", "simpo", "bpr") for s in ("topk_uniform", "argmax", "random")} | {
        ("sdpo", "topk_uniform"), ("sdpo", "random")}  # argmax has a pool of one: S-DPO would be DPO
    assert {row.control for row in study.rows} == {"control_lambda0"} and study.seeds == (2020, 2021, 2022)
    assert {row.controls["continued_warmup"] for row in study.rows} == {"control_continued_warmup"}
    # S-DPO vs DPO over the same 4 losers: the softmax form alone
    by_label = {row.label: row for row in study.rows}
    assert by_label["S-DPO (M = 4), top-K uniform"].controls["dpo_same_losers"] == by_label[
        "DPO, M = 4, top-K uniform"].setting == "rodpo_n_negatives4"
    assert len([s for s in plan.settings.values() if s.stage == "dpo"]) == 12 + 2  # 12 rows + 2 controls


def test_the_verdict_rows_run_on_eight_seeds_and_the_rest_of_the_grid_on_three(parameters):
    plan = plan_from_parameters(parameters, "objectives")
    verdict = plan.studies["verdict"]
    assert verdict.seeds == tuple(range(2020, 2028)) and plan.seeds == verdict.seeds
    runs = plan.runs()
    needed = {"warmup", "rodpo", "rodpo_negative_strategy_argmax", "rodpo_negative_strategy_random",
              "rodpo_n_negatives4", "rodpo_n_negatives4_objective_sdpo", "control_lambda0", "control_continued_warmup"}
    assert set(verdict.settings()) == needed
    for setting in plan.settings:
        seeds = {int(run.rpartition("_s")[2]) for run in runs if run.rpartition("_s")[0] == setting}
        assert seeds == (set(range(2020, 2028)) if setting in needed else {2020, 2021, 2022}), setting
    (primary,) = parameters["objectives"]["primary"]
    assert primary == {"study": "verdict", "row": "S-DPO (M = 4), top-K uniform", "versus": "warmup",
                       "metric": "ndcg@5"}
    # a per-process environment that trains one seed plans only that seed's runs, of the studies reporting it
    one = plan_from_parameters({**parameters, "objectives": {**parameters["objectives"], "seeds": [2025]}},
                               "objectives")
    assert set(one.studies) == {"verdict"} and {run.rpartition("_s")[2] for run in one.runs()} == {"2025"}


def test_the_multimodal_preset_plans_the_papers_regime_its_moe_and_text_ablations(parameters):
    plan = plan_from_parameters(parameters, "multimodal")
    regime, without_moe, modalities = (plan.studies[name] for name in ("regime", "without_moe", "modalities"))
    assert regime.seeds == tuple(range(2020, 2025)) and without_moe.seeds == (2020, 2021, 2022)
    assert modalities.seeds == (2020,)
    assert {"warmup", "rodpo", "rodpo_n_negatives4_objective_sdpo", "control_lambda0",
            "control_continued_warmup"} <= set(regime.settings())
    assert parameters["multimodal"]["overrides"]["model.modalities"] == ["id", "text"]  # no image branch
    ablation = {row.label: plan.settings[row.setting].difference.get("model.modalities", ["id", "text"])
                for row in modalities.rows}
    assert ablation == {"ID only": ["id"], "ID + text": ["id", "text"], "text only (no ID embedding)": ["text"]}
    pipe = experiments_pipeline(plan, "multimodal")
    # warm-ups: 5 full models, 3 w/o MoE, ID-only and text-only on one seed
    assert len(_by_suffix(pipe, "train_warmup_model")) == 5 + 3 + 2
    # stage 2: 5 rows + 2 controls on 5 seeds; w/o MoE's RoDPO and its 2 controls on 3 seeds
    assert len(_by_suffix(pipe, "train_rodpo_model")) == 7 * 5 + 3 * 3
    assert parameters["multimodal"]["primary"] == [
        {"study": "regime", "row": "DPO, top-K uniform (RoDPO)", "versus": "warmup", "metric": "ndcg@5"}]
    bootstrap_project(REPO_ROOT)
    assert "multimodal" in pipelines


def test_run_time_parameters_that_change_the_runs_stop_the_plan_node(parameters):
    """The structure is built from conf; `--params` that would add or merge runs must not run silently."""
    plan = plan_from_parameters(parameters, "experiments_quick")
    (plan_node,) = _by_suffix(experiments_pipeline(plan, "experiments_quick"), "plan_runs")
    inputs = {"params:model": parameters["model"], "params:warmup": parameters["warmup"],
              "params:rodpo": parameters["rodpo"]}
    outputs = plan_node.run({**inputs, "params:experiments_quick": parameters["experiments_quick"]})
    assert outputs["experiments_quick.runs.rodpo_k10_s2021.overrides"]["rodpo.dpo.k"] == 10
    assert outputs["experiments_quick.experiment_plan"]["seeds"] == [2020, 2021]
    changed = {**parameters["experiments_quick"], "seeds": [2020, 2021, 2022]}
    with pytest.raises(ValueError, match="output keys"):
        plan_node.run({**inputs, "params:experiments_quick": changed})


def test_catalog_places_run_and_study_outputs_by_preset_and_dataset():
    config = OmegaConfigLoader(str(REPO_ROOT / "conf"), base_env="base", default_run_env="base")
    catalog = DataCatalog.from_config(config["catalog"])
    paths = {name: str(catalog.get(name)._filepath) for name in (
        "experiments.runs.rodpo_k10_s2020.metrics", "experiments.runs.rodpo_k10_s2020.user_ranks",
        "experiments.studies.negative_sampling.table", "experiments_quick.studies.sensitivity.figure")}
    assert paths["experiments.runs.rodpo_k10_s2020.metrics"].endswith(
        "data/07_model_output/demo/experiments/runs/rodpo_k10_s2020/metrics.json")
    assert paths["experiments.runs.rodpo_k10_s2020.user_ranks"].endswith("rodpo_k10_s2020/user_ranks.parquet")
    assert paths["experiments.studies.negative_sampling.table"].endswith(
        "data/08_reporting/demo/experiments/negative_sampling.md")
    assert paths["experiments_quick.studies.sensitivity.figure"].endswith(
        "data/08_reporting/demo/experiments_quick/sensitivity.png")
    assert catalog.get("experiments.studies.components.results")._version is not None  # versioned


def test_an_unknown_primary_comparison_stops_the_pipeline_before_anything_trains(parameters):
    design = {**parameters["objectives"], "primary": [{"study": "verdict", "row": "No such row", "versus": "warmup",
                                                       "metric": "ndcg@5"}]}
    with pytest.raises(ValueError, match=r"objectives\.primary\[0\]: row 'No such row' is not a row"):
        plan_from_parameters({**parameters, "objectives": design}, "objectives")
    design = {**parameters["experiments"], "primary": [{"row": "Random Sampling", "versus": "warmup",
                                                       "metric": "ndcg@5"}]}  # several studies: name one
    with pytest.raises(ValueError, match=r"experiments\.primary\[0\]: study None unknown or missing"):
        plan_from_parameters({**parameters, "experiments": design}, "experiments")
