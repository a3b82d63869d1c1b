"""Seed summaries, seed-averaged per-user metrics and significance markers on hand-made runs."""

from __future__ import annotations

import math

import polars as pl
import pytest

from rodpo.experiments.aggregate import SignificanceParams, seed_averaged_user_metrics, summarise_study
from rodpo.experiments.plan import Row, Study

METRICS = ["ndcg@5", "mrr@5"]
PARAMS = SignificanceParams(alpha=0.05, n_resamples=999, seed=0)
N_USERS = 40


def ranks(user_ids, test_ranks) -> pl.DataFrame:
    return pl.DataFrame({"user_id": user_ids, "valid_rank": test_ranks, "test_rank": test_ranks})


def test_per_user_metrics_are_averaged_over_seeds_per_user():
    # user 7: ranks 1 and 3 -> NDCG@5 (1 + 1/log2(4)) / 2 = 0.75, MRR@5 (1 + 1/3) / 2 = 2/3
    # user 3: ranks 6 and 2 -> NDCG@5 (0 + 1/log2(3)) / 2,        MRR@5 (0 + 1/2) / 2 = 0.25
    seed_a = ranks([7, 3], [1, 6])
    seed_b = ranks([3, 7], [2, 3])  # another row order: users are matched by id
    averaged = seed_averaged_user_metrics([seed_a, seed_b], METRICS)
    assert averaged["user_id"].to_list() == [3, 7]
    assert averaged["ndcg@5"].to_list() == pytest.approx([0.5 / math.log2(3), 0.75])
    assert averaged["mrr@5"].to_list() == pytest.approx([0.25, 2 / 3])


def test_seeds_on_different_users_are_refused():
    with pytest.raises(ValueError, match="other users"):
        seed_averaged_user_metrics([ranks([1, 2], [1, 1]), ranks([1, 3], [1, 1])], METRICS)


STUDY = Study(
    name="t2", title="Table 2", kind="rows", seeds=(1, 2),
    rows=(Row(label="Other", setting="rodpo_other", warmup="warmup"),
          Row(label="RoDPO", setting="rodpo", warmup="warmup")),
)


def study_inputs() -> tuple[dict, dict]:
    """RoDPO ranks every target 1st with seed 1 and half of them 1st, half 10th with seed 2; the
    warm-up and 'Other' rank every target 10th (NDCG@5 = MRR@5 = 0).

    So RoDPO's per-seed test NDCG@5 is 1.0 and 0.5: mean 0.75, sample std sqrt(0.125).
    """
    users = list(range(1, N_USERS + 1))
    half = N_USERS // 2
    per_run_ranks = {("rodpo", 1): [1] * N_USERS, ("rodpo", 2): [1] * half + [10] * half}
    metrics, user_ranks = {}, {}
    for setting in ("rodpo", "rodpo_other", "warmup"):
        for seed in (1, 2):
            test_ranks = per_run_ranks.get((setting, seed), [10] * N_USERS)
            metrics[f"{setting}_s{seed}"] = {"test": {"hit@10": 0.5 + seed / 10}}  # only in the evaluation json
            user_ranks[f"{setting}_s{seed}"] = ranks(users, test_ranks)
    return metrics, user_ranks


def test_summary_has_mean_and_std_over_seeds():
    metrics, user_ranks = study_inputs()
    results = summarise_study(STUDY, metrics, user_ranks, metrics=METRICS, params=PARAMS, dataset="demo")
    rodpo = results["settings"]["rodpo"]
    assert rodpo["runs"] == {"1": "rodpo_s1", "2": "rodpo_s2"}
    assert rodpo["per_seed"]["1"]["ndcg@5"] == 1.0 and rodpo["per_seed"]["2"]["ndcg@5"] == 0.5
    assert rodpo["mean"]["ndcg@5"] == pytest.approx(0.75)
    assert rodpo["std"]["ndcg@5"] == pytest.approx(math.sqrt(0.125))
    assert rodpo["mean"]["hit@10"] == pytest.approx(0.65)  # the evaluation's other test metrics pass through
    assert [row["label"] for row in results["rows"]] == ["Other", "RoDPO"]
    assert results["rows"][1]["mean"] == {"ndcg@5": pytest.approx(0.75), "mrr@5": pytest.approx(0.75)}
    assert results["users"] == N_USERS and results["seeds"] == [1, 2]


def test_markers_flag_significant_differences_only():
    metrics, user_ranks = study_inputs()
    results = summarise_study(STUDY, metrics, user_ranks, metrics=METRICS, params=PARAMS)
    markers = {row["label"]: row["markers"] for row in results["rows"]}
    # RoDPO beats its warm-up on every user (seed-averaged MRR@5 1 or 0.5 vs 0): †; it is the reference: no ‡
    assert markers["RoDPO"] == {"ndcg@5": "†", "mrr@5": "†"}
    # 'Other' ranks exactly like its warm-up (p = 1): no †; RoDPO beats it on every user: ‡
    assert markers["Other"] == {"ndcg@5": "‡", "mrr@5": "‡"}
    tests = {(t["kind"], t["a"], t["b"], t["metric"]): t for t in results["tests"]}
    assert set(tests) == {(kind, a, b, m) for kind, a, b in [("vs_warmup", "warmup", "rodpo"),
                                                            ("vs_warmup", "warmup", "rodpo_other"),
                                                            ("vs_reference", "rodpo_other", "rodpo")]
                          for m in METRICS}
    same = tests["vs_warmup", "warmup", "rodpo_other", "ndcg@5"]
    assert same["mean_diff"] == 0 and same["p_value"] == 1 and not same["significant"]
    better = tests["vs_reference", "rodpo_other", "rodpo", "mrr@5"]
    assert better["mean_diff"] == pytest.approx(0.75)  # b - a: RoDPO's MRR@5 (1 or 0.5) vs 0 on every user
    assert better["p_value"] == pytest.approx(1 / 1000) and better["significant"]


def test_missing_runs_are_named():
    metrics, user_ranks = study_inputs()
    del metrics["rodpo_other_s2"]
    with pytest.raises(ValueError, match="rodpo_other_s2"):
        summarise_study(STUDY, metrics, user_ranks, metrics=METRICS, params=PARAMS)


def test_rows_are_tested_against_their_lambda_zero_control_and_under_the_masked_protocol():
    """RoDPO ranks every target 10th like its warm-up and control, but 1st once history is masked."""
    study = Study(name="t", title="T", kind="rows", seeds=(1,), reference_control="control",
                  rows=(Row(label="RoDPO", setting="rodpo", warmup="warmup", control="control"),))
    users = list(range(1, N_USERS + 1))
    metrics, user_ranks = {}, {}
    for setting, masked in (("rodpo", 1), ("warmup", 10), ("control", 10)):
        metrics[f"{setting}_s1"] = {"test": {}}
        user_ranks[f"{setting}_s1"] = ranks(users, [10] * N_USERS).with_columns(
            pl.lit(masked).alias("test_rank_history_masked"))
    results = summarise_study(study, metrics, user_ranks, metrics=METRICS, params=PARAMS)
    assert results["metrics"] == [*METRICS, "ndcg@5:masked", "mrr@5:masked"]
    row = results["rows"][0]
    assert row["mean"]["ndcg@5"] == 0 and row["mean"]["ndcg@5:masked"] == 1.0
    assert row["markers"] == {"ndcg@5": "", "mrr@5": "", "ndcg@5:masked": "†§", "mrr@5:masked": "†§"}
    kinds = {(t["kind"], t["a"], t["b"]) for t in results["tests"]}
    assert kinds == {("vs_warmup", "warmup", "rodpo"), ("vs_control", "control", "rodpo")}
    # runs evaluated before the masked column existed: the first protocol only
    old = {run: frame.drop("test_rank_history_masked") for run, frame in user_ranks.items()}
    assert summarise_study(study, metrics, old, metrics=METRICS, params=PARAMS)["metrics"] == METRICS


def test_training_summary_finds_the_trainers_best_epoch_and_its_diagnostics():
    from rodpo.experiments.aggregate import training_summary

    history = [{"epoch": 0, "valid_ndcg@10": 0.10},
               {"epoch": 1, "valid_ndcg@10": 0.12, "rewards_accuracy": 0.6, "dpo_loss": 0.6},
               {"epoch": 2, "valid_ndcg@10": 0.12, "rewards_accuracy": 0.7, "dpo_loss": 0.5},  # tie: latest wins
               {"epoch": 3, "valid_ndcg@10": 0.11, "rewards_accuracy": 0.8, "dpo_loss": 0.4}]
    summary = training_summary(history)
    assert summary["epochs_run"] == 3 and summary["best_epoch"] == 2 and summary["passed_peak"]
    assert summary["best_valid"] == 0.12 and summary["start_valid"] == 0.10
    assert summary["rewards_accuracy"] == 0.7 and summary["dpo_loss"] == 0.5 and "rewards_margin" not in summary
    still_rising = training_summary(history[:2])
    assert still_rising["best_epoch"] == 1 and not still_rising["passed_peak"]
