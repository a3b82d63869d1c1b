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


def test_two_seeds_give_no_seed_level_p_and_no_markers():
    """RoDPO beats its warm-up on every user (users-only p = 1/1000), but with 2 trained seeds
    there is no test across seeds: no p_seed, no marker, and the users-only test is secondary."""
    metrics, user_ranks = study_inputs()
    results = summarise_study(STUDY, metrics, user_ranks, metrics=METRICS, params=PARAMS)
    assert all(row["markers"] == {"ndcg@5": "", "mrr@5": ""} for row in results["rows"])
    tests = {(t["kind"], t["a"], t["b"], t["metric"]): t for t in results["tests"]}
    better = tests["vs_reference", "rodpo_other", "rodpo", "mrr@5"]
    assert better["p_users"] == pytest.approx(1 / 1000)
    for test in results["tests"]:
        assert test["p_seed"] is None and test["ci95_seed"] is None and test["p_holm"] is None
        assert test["q_bh"] is None and not test["significant"]
        assert test["seed_test_unavailable"].startswith("not available: 2 seed(s)")


FRACTIONS = (1.0, 0.9, 0.95, 0.85)  # per seed, the share of users RoDPO ranks 1st (else 10th)


def four_seed_inputs() -> tuple[Study, dict, dict]:
    """Warm-up and 'Other' rank every target 10th (metric 0); RoDPO ranks FRACTIONS[s] of the users
    1st with seed s, so its per-seed NDCG@5 (= MRR@5) difference to both is exactly FRACTIONS[s]."""
    study = Study(name="t2", title="Table 2", kind="rows", seeds=(1, 2, 3, 4), rows=STUDY.rows)
    users = list(range(1, N_USERS + 1))
    metrics, user_ranks = {}, {}
    for setting in ("rodpo", "rodpo_other", "warmup"):
        for seed, fraction in zip(study.seeds, FRACTIONS):
            first = round(fraction * N_USERS) if setting == "rodpo" else 0
            metrics[f"{setting}_s{seed}"] = {"test": {}}
            user_ranks[f"{setting}_s{seed}"] = ranks(users, [1] * first + [10] * (N_USERS - first))
    return study, metrics, user_ranks


def test_seed_level_tests_holm_and_markers_on_four_seeds():
    from rodpo.evaluation.inference import paired_t

    study, metrics, user_ranks = four_seed_inputs()
    results = summarise_study(study, metrics, user_ranks, metrics=METRICS, params=PARAMS)
    tests = {(t["kind"], t["a"], t["b"], t["metric"]): t for t in results["tests"]}
    assert len(tests) == 6  # 3 comparisons x 2 metrics: one family
    better = tests["vs_warmup", "warmup", "rodpo", "ndcg@5"]
    assert better["per_seed_diff"] == pytest.approx(list(FRACTIONS))
    p = paired_t(FRACTIONS)[1]
    assert better["p_seed"] == pytest.approx(p) and better["p_signflip"] == pytest.approx(2 / 16)
    # four equal p and two p = 1 (Other = warm-up: all differences 0): Holm 6p, BH 6p / 4
    assert better["p_holm"] == pytest.approx(6 * p) and better["q_bh"] == pytest.approx(1.5 * p)
    low, high = better["ci95_seed"]
    # seeds resampled, then the 40 users within each: around the seed range, a little wider
    assert min(FRACTIONS) - 0.05 < low < sum(FRACTIONS) / 4 < high <= 1.0
    same = tests["vs_warmup", "warmup", "rodpo_other", "ndcg@5"]
    assert same["p_seed"] == 1.0 and same["p_holm"] == 1.0 and not same["significant"]
    markers = {row["label"]: row["markers"] for row in results["rows"]}
    assert markers == {"RoDPO": {"ndcg@5": "†", "mrr@5": "†"}, "Other": {"ndcg@5": "‡", "mrr@5": "‡"}}
    assert results["rows"][1]["bold"] == {"ndcg@5": True, "mrr@5": True}  # beats its warm-up (no control)
    assert results["rows"][0]["bold"] == {"ndcg@5": False, "mrr@5": False}


def test_primary_comparisons_get_their_own_family_and_a_verdict():
    study, metrics, user_ranks = four_seed_inputs()
    primary = [{"row": "RoDPO", "versus": "warmup", "metric": "ndcg@5"}]
    results = summarise_study(study, metrics, user_ranks, metrics=METRICS, params=PARAMS, primary=primary)
    chosen = [t for t in results["tests"] if t["primary"]]
    assert [(t["a"], t["b"], t["metric"]) for t in chosen] == [("warmup", "rodpo", "ndcg@5")]
    assert chosen[0]["p_holm_primary"] == pytest.approx(chosen[0]["p_seed"])  # a family of one
    (verdict,) = results["primary"]
    assert verdict["verdict"].startswith("significant: b better than a")


@pytest.mark.parametrize("entry, message", [
    ({"row": "Nope", "versus": "warmup", "metric": "ndcg@5"}, "not a row"),
    ({"row": "RoDPO", "versus": "sideways", "metric": "ndcg@5"}, "versus='sideways'"),
    ({"row": "RoDPO", "versus": "warmup", "metric": "hit@99"}, "not tested"),
    ({"row": "RoDPO", "versus": "lambda_zero_control", "metric": "ndcg@5"}, "no lambda_zero_control"),
    ({"row": "RoDPO"}, "expected {study, row, versus, metric}"),
])
def test_unknown_primary_comparisons_are_refused_by_name(entry, message):
    study, metrics, user_ranks = four_seed_inputs()
    with pytest.raises(ValueError, match=r"primary\[0\]") as error:
        summarise_study(study, metrics, user_ranks, metrics=METRICS, params=PARAMS, primary=[entry])
    assert message in str(error.value)


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
    assert row["markers"] == {"ndcg@5": "", "mrr@5": "", "ndcg@5:masked": "", "mrr@5:masked": ""}  # 1 seed
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


def test_rows_are_tested_against_both_automatic_controls_and_named_rows():
    """RoDPO beats the warm-up, both controls and the named 'DPO-M' row on every seed: †§¶ and bold;
    the named control is tested (vs_<name>) but carries no marker of its own."""
    seeds = (1, 2, 3, 4)
    study = Study(name="t", title="T", kind="rows", seeds=seeds, reference_control="c0",
                  reference_controls={"lambda0": "c0", "continued_warmup": "c1"},
                  rows=(Row(label="RoDPO", setting="rodpo", warmup="warmup", control="c0",
                            controls={"lambda0": "c0", "continued_warmup": "c1", "same_losers": "dpo_m"}),
                        Row(label="DPO-M", setting="dpo_m", warmup="warmup", control="c0",
                            controls={"lambda0": "c0", "continued_warmup": "c1"})))
    users = list(range(1, N_USERS + 1))
    metrics, user_ranks = {}, {}
    for setting in ("rodpo", "dpo_m", "warmup", "c0", "c1"):
        for seed, fraction in zip(seeds, FRACTIONS):
            first = round(fraction * N_USERS) if setting == "rodpo" else 0
            metrics[f"{setting}_s{seed}"] = {"test": {}}
            user_ranks[f"{setting}_s{seed}"] = ranks(users, [1] * first + [10] * (N_USERS - first))
    results = summarise_study(study, metrics, user_ranks, metrics=["ndcg@5"], params=PARAMS,
                              primary=[{"row": "RoDPO", "versus": "continued_warmup_control", "metric": "ndcg@5"},
                                       {"row": "RoDPO", "versus": "same_losers", "metric": "ndcg@5"}])
    kinds = {(t["kind"], t["a"], t["b"]) for t in results["tests"]}
    assert {("vs_control", "c0", "rodpo"), ("vs_continued_warmup", "c1", "rodpo"),
            ("vs_same_losers", "dpo_m", "rodpo")} <= kinds
    assert {("vs_warmup", "warmup", "c0"), ("vs_warmup", "warmup", "c1")} <= kinds  # the controls themselves
    assert len(results["tests"]) == len(kinds)  # each comparison once, though both rows name the controls
    rodpo = results["rows"][0]
    assert rodpo["markers"]["ndcg@5"] == "†§¶" and rodpo["bold"]["ndcg@5"]
    assert results["rows"][1]["markers"]["ndcg@5"] == "‡" and not results["rows"][1]["bold"]["ndcg@5"]
    assert {(v["kind"], v["a"]) for v in results["primary"]} == {("vs_continued_warmup", "c1"), ("vs_same_losers", "dpo_m")}
