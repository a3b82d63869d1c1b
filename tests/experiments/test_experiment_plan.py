"""Study design -> settings and runs: deduplication, shared warm-ups, names, override checks."""

from __future__ import annotations

import json

import pytest

from rodpo.experiments.overrides import apply_overrides
from rodpo.experiments.plan import plan_experiments
from rodpo.training.trainer import TrainConfig

BASE = {
    "model": {"hidden_size": 64, "moe_mode": "sparse", "modalities": ["id", "text"]},
    "warmup": {"stage": "warmup", "epochs": 50, "seed": 2020},
    "rodpo": {"stage": "dpo", "epochs": 10, "seed": 2020, "dpo": {"k": 50, "beta": 1.0,
                                                                  "negative_strategy": "topk_uniform"}},
}
TABLE2 = {"rows": [
    {"label": "Random", "overrides": {"rodpo.dpo.negative_strategy": "random"}},
    {"label": "Argmax", "overrides": {"rodpo.dpo.negative_strategy": "argmax"}},
    {"label": "Top-K", "overrides": {"rodpo.dpo.negative_strategy": "topk_uniform"}},
]}
TABLE3 = {"rows": [
    {"label": "Full", "overrides": {}},
    {"label": "w/o MoE", "overrides": {"model.moe_mode": "mlp"}},
    {"label": "w/o DPO", "warmup_only": True},
]}
FIGURE3 = {"sweeps": [{"label": "K", "path": "rodpo.dpo.k", "values": [10, 50]},
                      {"label": "beta", "path": "rodpo.dpo.beta", "values": [0.1, 1.0]}]}


def design(**studies) -> dict:
    return {"seeds": [1, 2], "metrics": ["ndcg@5", "mrr@5"],
            "studies": studies or {"t2": TABLE2, "t3": TABLE3, "f3": FIGURE3}}


def test_identical_variants_across_studies_are_one_setting():
    plan = plan_experiments(design(), BASE)
    setting_of = {(name, row.label): row.setting for name, study in plan.studies.items() for row in study.rows}
    # Top-K sampling = the full model = K=50 = beta=1.0 = the base parameters
    assert {setting_of["t2", "Top-K"], setting_of["t3", "Full"], setting_of["f3", "K=50"],
            setting_of["f3", "beta=1.0"]} == {"rodpo"}
    assert setting_of["f3", "K=10"] == "rodpo_k10" and setting_of["f3", "beta=0.1"] == "rodpo_beta0p1"
    assert setting_of["t3", "w/o DPO"] == "warmup"
    assert sorted(plan.settings) == sorted([
        "warmup", "warmup_moe_mode_mlp", "rodpo", "rodpo_negative_strategy_random",
        "rodpo_negative_strategy_argmax", "rodpo_moe_mode_mlp", "rodpo_k10", "rodpo_beta0p1",
        "control_lambda0", "control_lambda0_moe_mode_mlp",  # one λ = 0 control per warm-up ...
        "control_continued_warmup", "control_continued_warmup_moe_mode_mlp"])  # ... and one continued warm-up


def test_every_dpo_row_gets_the_lambda_zero_control_of_its_warmup_and_budget():
    budget = {"rows": [{"label": "Argmax, lr 5e-4", "overrides": {"rodpo.dpo.negative_strategy": "argmax",
                                                                  "rodpo.lr": 0.0005, "rodpo.dpo.k": 10}}]}
    plan = plan_experiments(design(t2=TABLE2, t3=TABLE3, budget=budget), BASE)
    control_of = {row.label: row.control for study in plan.studies.values() for row in study.rows}
    assert {control_of["Random"], control_of["Argmax"], control_of["Top-K"]} == {"control_lambda0"}
    assert control_of["w/o MoE"] == "control_lambda0_moe_mode_mlp" and control_of["w/o DPO"] is None
    # same stage-2 optimisation (lr; epochs are preset-wide) as the row, but no DPO-only parameter: with λ = 0 they change nothing
    assert plan.settings[control_of["Argmax, lr 5e-4"]].difference == {"rodpo.dpo.lambda_dpo": 0.0,
                                                                         "rodpo.lr": 0.0005}
    assert control_of["Argmax, lr 5e-4"] == "control_lambda0_lr0p0005"
    assert plan.settings["control_lambda0_moe_mode_mlp"].warmup == "warmup_moe_mode_mlp"
    assert plan.studies["t2"].reference_control == "control_lambda0"
    assert "control_lambda0" in plan.studies["t2"].settings()
    without = plan_experiments({**design(t2=TABLE2), "lambda_zero_control": False}, BASE)
    assert "control_lambda0" not in without.settings and without.studies["t2"].reference_control is None
    assert {row.control for row in without.studies["t2"].rows} == {None}
    assert {row.controls["continued_warmup"] for row in without.studies["t2"].rows} == {"control_continued_warmup"}
    with pytest.raises(ValueError, match="lambda_zero_control"):
        plan_experiments({**design(t2=TABLE2), "lambda_zero_control": "yes"}, BASE)


def test_every_dpo_row_gets_the_continued_warmup_of_its_own_warmup():
    """The warm-up's loss (λ = 0), dropout on and the warm-up's optimizer; the stage-2 budget; the row's warm-up."""
    base = {**BASE, "warmup": {**BASE["warmup"], "lr": 0.002, "batch_size": 128, "weight_decay": 0.01}}
    rows = {"rows": [{"label": "Top-K", "overrides": {}},
                     {"label": "lr 5e-4", "overrides": {"rodpo.lr": 0.0005, "rodpo.dpo.beta": 2.0}},
                     {"label": "w/o MoE, warm-up lr 3e-3", "overrides": {"model.moe_mode": "mlp", "warmup.lr": 0.003}},
                     {"label": "w/o DPO", "warmup_only": True}]}
    plan = plan_experiments({**design(s=rows), "overrides": {"rodpo.epochs": 4}}, base)
    controls = {row.label: row.controls for row in plan.studies["s"].rows}
    assert controls["Top-K"] == {"lambda0": "control_lambda0", "continued_warmup": "control_continued_warmup"}
    assert controls["lr 5e-4"]["continued_warmup"] == "control_continued_warmup"  # the stage-2 lr is not the control's
    assert controls["w/o DPO"] == {}
    continued = plan.settings["control_continued_warmup"]
    assert continued.stage == "dpo" and continued.warmup == "warmup"
    assert continued.difference == {"rodpo.batch_size": 128, "rodpo.dpo.lambda_dpo": 0.0,
                                    "rodpo.dpo.policy_dropout_in_dpo": True, "rodpo.lr": 0.002,
                                    "rodpo.weight_decay": 0.01}
    assert plan.runs()["control_continued_warmup_s1"]["rodpo.epochs"] == 4  # the preset's stage-2 budget
    mlp = plan.settings[controls["w/o MoE, warm-up lr 3e-3"]["continued_warmup"]]
    assert mlp.name.startswith("control_continued_warmup_moe_mode_mlp_w") and mlp.overrides["rodpo.lr"] == 0.003
    assert mlp.warmup == "warmup_moe_mode_mlp_warmup_lr0p003"
    assert plan.studies["s"].reference_controls == controls["Top-K"]
    assert set(controls["Top-K"].values()) <= set(plan.studies["s"].settings())
    without = plan_experiments({**design(s=rows), "continued_warmup_control": False}, base)
    assert not [name for name in without.settings if name.startswith("control_continued_warmup")]
    with pytest.raises(ValueError, match=r"experiments\.continued_warmup_control: expected true or false"):
        plan_experiments({**design(s=rows), "continued_warmup_control": "no"}, base)


def test_a_row_may_name_other_rows_as_its_controls():
    rows = {"rows": [{"label": "DPO, M = 4", "overrides": {"rodpo.dpo.n_negatives": 4}},
                     {"label": "S-DPO, M = 4", "overrides": {"rodpo.dpo.objective": "sdpo", "rodpo.dpo.n_negatives": 4},
                      "controls": {"dpo_same_losers": "DPO, M = 4"}}]}
    plan = plan_experiments(design(s=rows), BASE)
    dpo_m4, sdpo_m4 = plan.studies["s"].rows
    assert dpo_m4.setting == "rodpo_n_negatives4"
    assert sdpo_m4.controls == {"lambda0": "control_lambda0", "continued_warmup": "control_continued_warmup",
                                "dpo_same_losers": "rodpo_n_negatives4"}
    assert sdpo_m4.control == "control_lambda0"


@pytest.mark.parametrize(("controls", "message"), [
    ({"dpo_same_losers": "DPO, M = 8"},
     r"experiments\.studies\.s\.rows\[1\]\.controls\.dpo_same_losers: no row labelled 'DPO, M = 8'.*'DPO, M = 4'"),
    ({"itself": "S-DPO, M = 4"}, r"rows\[1\]\.controls\.itself: a row cannot be its own control"),
    ({"lambda0": "DPO, M = 4"}, r"rows\[1\]\.controls: control name 'lambda0'"),
    (["DPO, M = 4"], r"rows\[1\]\.controls: expected a mapping"),
])
def test_a_control_that_names_a_missing_row_names_the_parameter(controls, message):
    rows = {"rows": [{"label": "DPO, M = 4", "overrides": {"rodpo.dpo.n_negatives": 4}},
                     {"label": "S-DPO, M = 4", "overrides": {"rodpo.dpo.objective": "sdpo", "rodpo.dpo.n_negatives": 4},
                      "controls": controls}]}
    with pytest.raises(ValueError, match=message):
        plan_experiments(design(s=rows), BASE)


def test_dpo_variants_share_one_warmup_per_architecture_and_seed():
    plan = plan_experiments(design(), BASE)
    warmups = {name for name, s in plan.settings.items() if s.stage == "warmup"}
    assert warmups == {"warmup", "warmup_moe_mode_mlp"}
    assert {s.warmup for s in plan.settings.values() if s.stage == "dpo"} == warmups
    assert plan.settings["rodpo_moe_mode_mlp"].warmup == "warmup_moe_mode_mlp"
    runs = plan.runs()
    assert len(runs) == len(plan.settings) * 2  # every setting once per seed
    assert list(runs)[:4] == ["warmup_s1", "warmup_s2", "warmup_moe_mode_mlp_s1", "warmup_moe_mode_mlp_s2"]
    assert plan.warmup_run("rodpo_k10_s2") == "warmup_s2"
    assert plan.warmup_run("rodpo_moe_mode_mlp_s1") == "warmup_moe_mode_mlp_s1"


def test_run_overrides_rebuild_the_run_from_the_base_parameters():
    plan = plan_experiments({**design(), "overrides": {"warmup.epochs": 2, "rodpo.epochs": 1}}, BASE)
    runs = plan.runs()
    assert runs["warmup_moe_mode_mlp_s2"] == {"warmup.epochs": 2, "model.moe_mode": "mlp", "warmup.seed": 2}
    assert runs["rodpo_k10_s1"] == {"rodpo.epochs": 1, "rodpo.dpo.k": 10, "rodpo.seed": 1}
    # the MLP DPO stage differs only through its warm-up model; the study records how
    assert runs["rodpo_moe_mode_mlp_s1"] == {"rodpo.epochs": 1, "rodpo.seed": 1}
    assert plan.studies["t3"].differences["rodpo_moe_mode_mlp"] == {"model.moe_mode": "mlp"}


def test_study_lists_its_rows_warmups_and_the_reference():
    plan = plan_experiments(design(), BASE)
    t2 = plan.studies["t2"]
    assert t2.kind == "rows" and t2.reference == "rodpo" and t2.reference_warmup == "warmup"
    assert t2.settings() == ["rodpo", "warmup", "control_lambda0", "control_continued_warmup",
                             "rodpo_negative_strategy_random", "rodpo_negative_strategy_argmax"]
    assert len(t2.runs()) == 6 * 2
    f3 = plan.studies["f3"]
    assert [(row.sweep, row.value) for row in f3.rows] == [("K", 10), ("K", 50), ("beta", 0.1), ("beta", 1.0)]


def test_dataclass_base_parameters_plan_like_dicts():
    """At run time Kedro hands the nodes TrainConfig objects; the plan must not change."""
    as_dataclasses = {**BASE, "warmup": TrainConfig(**BASE["warmup"]), "rodpo": TrainConfig(**BASE["rodpo"])}
    assert plan_experiments(design(), as_dataclasses).runs() == plan_experiments(design(), BASE).runs()


def test_apply_overrides_sets_nested_values_on_a_copy():
    out = apply_overrides(BASE, {"rodpo.dpo.k": 10, "model.moe_mode": "mlp", "warmup.seed": 7})
    assert out["rodpo"]["dpo"] == {"k": 10, "beta": 1.0, "negative_strategy": "topk_uniform"}
    assert out["model"]["moe_mode"] == "mlp" and out["warmup"]["seed"] == 7
    assert BASE["rodpo"]["dpo"]["k"] == 50 and BASE["model"]["moe_mode"] == "sparse"
    with pytest.raises(ValueError, match="does not apply to this stage"):
        apply_overrides({"rodpo": BASE["rodpo"]}, {"model.moe_mode": "mlp"})


@pytest.mark.parametrize(("overrides", "message"), [
    ({"rodpo.dpo.kk": 10}, "rodpo has no setting 'dpo.kk'"),
    ({"optimizer.lr": 0.1}, "must start with one of"),
    ({"rodpo.seed": 3}, "seeds come from"),
    ({"rodpo.eval_batch_size": 512}, "not part of a training run's checkpoint key"),
    ({"rodpo.stage": "warmup"}, "stage is fixed"),
    ({"warmup.dpo.k": 3}, "no effect in the warm-up stage"),
    ({"model.n_items": 3}, "model has no setting 'n_items'"),
])
def test_bad_variant_overrides_are_refused_with_the_fix(overrides, message):
    study = {"rows": [{"label": "x", "overrides": overrides}]}
    with pytest.raises(ValueError, match=message):
        plan_experiments(design(s=study), BASE)


def test_bad_designs_are_refused():
    with pytest.raises(ValueError, match="distinct integers"):
        plan_experiments({"seeds": [1, 1], "studies": {"t2": TABLE2}}, BASE)
    with pytest.raises(ValueError, match="'recall@5' is not like"):
        plan_experiments({**design(), "metrics": ["ndcg@5", "recall@5"]}, BASE)
    with pytest.raises(ValueError, match="either `rows:`"):
        plan_experiments(design(s={"rows": [], "sweeps": []}), BASE)
    with pytest.raises(ValueError, match="rodpo.\\* overrides have no effect"):
        plan_experiments(design(s={"rows": [{"label": "x", "warmup_only": True,
                                             "overrides": {"rodpo.dpo.k": 3}}]}), BASE)


def test_a_study_spec_keeps_its_controls_through_json():
    """The pipeline hands each study node its spec as a dict: every control must survive the trip."""
    from rodpo.experiments.plan import Study

    rows = {"rows": [{"label": "DPO, M = 4", "overrides": {"rodpo.dpo.n_negatives": 4}},
                     {"label": "S-DPO, M = 4", "overrides": {"rodpo.dpo.objective": "sdpo", "rodpo.dpo.n_negatives": 4},
                      "controls": {"dpo_same_losers": "DPO, M = 4"}}]}
    study = plan_experiments(design(s=rows), BASE).studies["s"]
    assert Study.from_dict(json.loads(json.dumps(study.to_dict()))) == study
