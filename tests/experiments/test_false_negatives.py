"""The false-negative study's pieces on hand-made worlds, and a tiny study end to end (no Kedro)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest
import torch
import yaml

from rodpo.data.known_preferences import GroundTruth
from rodpo.experiments.false_negatives import (
    FalseNegativeStudyParams,
    _exclusion_fields,
    applied_exclusion,
    run_false_negative_study,
    stage2_variants,
)
from rodpo.experiments.false_negatives_inference import (
    CONTROL,
    DPO,
    PRIMARY_FAMILY,
    SECONDARY_FAMILY,
    TRUTH_NDCG,
    WARMUP,
    comparisons,
    levels,
    planned_comparisons,
)
from rodpo.experiments.false_negatives_judge import (
    ABOVE,
    CHOOSABLE_ABOVE,
    CHOOSABLE_DEFINITIONS,
    CHOOSABLE_OBSERVED,
    CHOOSABLE_TRUE_TOP,
    CHOOSABLE_UNOBSERVED,
    FN_DEFINITIONS,
    OBSERVED,
    PAIRS,
    TRUE_TOP,
    UNOBSERVED,
    FalseNegativeJudge,
    FalseNegativeMonitor,
    epoch_rates,
    per_user_rates,
    pool_exclusion_ids,
)
from rodpo.experiments.false_negatives_report import false_negatives_figure, false_negatives_markdown
from rodpo.training.negatives import sample_negatives

PARAMETERS_FILE = Path(__file__).resolve().parents[2] / "conf/base/parameters_false_negatives.yml"
RANDOM_TOLERANCE_SE = 4.0  # |observed - expected| of the random strategy, in standard errors of one epoch


def hand_made_world() -> tuple[GroundTruth, pl.DataFrame]:
    """4 items with utilities 3, 2, 1, 0 for every user in every context (no sequential term).

    User 1 chose 2 (step 0, observed), 1 (step 1, NOT observed), 4 (step 2, observed), 3 (step 3, observed);
    user 2 chose 3 (step 0, observed), 1 (step 1, observed).
    """
    n_users, utilities = 2, [3.0, 2.0, 1.0, 0.0]
    truth = GroundTruth(user_factors=np.zeros((n_users + 1, 1)), item_factors=np.zeros((5, 1)),
                        item_bias=np.array([0.0, *utilities]), item_cluster=np.zeros(5, dtype=int),
                        cluster_affinity=np.zeros((1, 1)), transition_weight=0.0, temperature=1.0)
    choices = pl.DataFrame({"user_id": [1, 1, 1, 1, 2, 2], "step": [0, 1, 2, 3, 0, 1], "item_id": [2, 1, 4, 3, 3, 1],
                            "last_item_id": [0, 2, 1, 4, 0, 3], "timestamp": [0, 1, 2, 3, 0, 1],
                            "observed": [True, False, True, True, True, True]})
    return truth, choices


def _counts(all_items: tuple[int, ...], choosable: tuple[int, ...], pairs: int) -> dict[str, int]:
    return {PAIRS: pairs, **dict(zip((ABOVE, TRUE_TOP, UNOBSERVED, OBSERVED), all_items)),
            **dict(zip(CHOOSABLE_DEFINITIONS, choosable))}


def test_an_earlier_choice_is_never_a_choosable_false_negative():
    judge = FalseNegativeJudge(*hand_made_world(), top_fraction=0.5)  # true top 2
    users, chosen = torch.tensor([1, 1, 1, 1]), torch.tensor([2, 2, 4, 3])
    assert judge.true_last_items(users, chosen).tolist() == [0, 0, 1, 4]  # 1 was chosen before 4, though unobserved
    # (2 vs 1) at step 0: 1 is above, in the top 2 and a later unobserved choice: a false negative both ways.
    # (2 vs 3): 3 is the user's later observed choice (step 3): choosable observed choice only.
    # (4 vs 1) at step 2: 1 was chosen at step 1, (3 vs 4) at step 3: 4 was chosen at step 2: both are
    # false negatives over all items (above / top / unobserved, resp. observed) but never choosable ones.
    counts = judge.count(users, chosen, torch.tensor([[1], [3], [1], [4]]))
    assert counts == _counts(all_items=(2, 2, 2, 2), choosable=(1, 1, 1, 1), pairs=4)
    earlier = judge.judged(torch.tensor([1, 1]), torch.tensor([4, 3]), torch.tensor([[1], [4]]))
    assert not any(earlier[name].any() for name in CHOOSABLE_DEFINITIONS)
    with pytest.raises(ValueError, match="never chosen in this world"):
        judge.count(torch.tensor([2]), torch.tensor([2]), torch.tensor([[4]]))


def test_random_expectation_by_hand_with_and_without_exclusion():
    """Targets (user 1) 2 at step 0, 4 at step 2, 3 at step 3; a random loser is uniform over the pool.

    No exclusion, pools {1, 3, 4}, {1, 2, 3}, {1, 2, 4}. Choosable above chosen: {1} | {3} | nothing,
    so (1/3 + 1/3 + 0) / 3 = 2/9; over all items {1} | {1, 2, 3} | {1, 2}: (1/3 + 1 + 2/3) / 3 = 2/3.
    Earlier items excluded ({} | {2} | {2, 4}): pools {1, 3, 4}, {1, 3}, {1}: choosable (1/3 + 1/2 + 0) / 3
    = 5/18, all items (1/3 + 1 + 1) / 3 = 7/9.
    """
    judge = FalseNegativeJudge(*hand_made_world(), top_fraction=0.5)
    users, chosen = torch.tensor([1, 1, 1]), torch.tensor([2, 4, 3])
    expected = judge.random_expectation(users, chosen)
    by_hand = {CHOOSABLE_ABOVE: 2 / 9, CHOOSABLE_TRUE_TOP: 2 / 9, CHOOSABLE_UNOBSERVED: 1 / 9,
               CHOOSABLE_OBSERVED: 1 / 3, ABOVE: 2 / 3, TRUE_TOP: 5 / 9, UNOBSERVED: 1 / 3, OBSERVED: 2 / 3}
    for name, value in by_hand.items():
        assert expected[name] == pytest.approx(value), name
    earlier = torch.tensor([[0, 0], [2, 0], [2, 4]])
    excluded = judge.random_expectation(users, chosen, earlier)
    assert excluded[CHOOSABLE_ABOVE] == pytest.approx(5 / 18) and excluded[ABOVE] == pytest.approx(7 / 9)
    # The sampler's own random draws, judged, land on the analytic value (20,000 draws per target).
    repeats = 20_000
    draws = sample_negatives(torch.zeros(3 * repeats, 1), torch.zeros(5, 1), chosen.repeat(repeats), "random",
                             generator=torch.Generator().manual_seed(0), exclude_ids=earlier.repeat(repeats, 1))
    counts = judge.count(users.repeat(repeats), chosen.repeat(repeats), draws)
    assert counts[CHOOSABLE_ABOVE] / counts[PAIRS] == pytest.approx(5 / 18, abs=0.01)  # se ~0.0026
    assert counts[ABOVE] / counts[PAIRS] == pytest.approx(7 / 9, abs=0.01)


def test_monitor_counts_per_step_and_per_user_over_the_last_epoch():
    monitor = FalseNegativeMonitor(FalseNegativeJudge(*hand_made_world(), top_fraction=0.5), steps_per_epoch=2)
    # step 1: (user 1, 2 vs 1) as above; (user 2, 1 vs 2) at step 1: 2 is in the true top 2 (and among the
    # choosable {1, 2, 4}) but below the chosen 1. step 2: (user 1, 4 vs 1): an earlier choice.
    for users, chosen, losers in (([1, 2], [2, 1], [[1], [2]]), ([1], [4], [[1]])):
        monitor(users=torch.tensor(users), last_items=torch.zeros(len(users)), chosen=torch.tensor(chosen),
                losers=torch.tensor(losers))
    assert monitor.steps == [_counts((1, 2, 1, 0), (1, 2, 1, 0), 2), _counts((1, 1, 1, 0), (0, 0, 0, 0), 1)]
    per_user = monitor.last_epoch_per_user
    assert per_user[PAIRS][1:].tolist() == [2, 1] and per_user[CHOOSABLE_TRUE_TOP][1:].tolist() == [1, 1]
    assert per_user[ABOVE][1:].tolist() == [2, 0] and per_user[CHOOSABLE_ABOVE][1:].tolist() == [1, 0]
    rates = per_user_rates(per_user)  # scaled by the mean pairs per user (1.5): their mean is the pooled rate
    np.testing.assert_allclose(rates[CHOOSABLE_TRUE_TOP], [1 / 1.5, 1 / 1.5])
    assert rates[CHOOSABLE_ABOVE].mean() == pytest.approx(1 / 3) and rates[ABOVE].mean() == pytest.approx(2 / 3)
    monitor(users=torch.tensor([2]), last_items=torch.zeros(1), chosen=torch.tensor([1]), losers=torch.tensor([[4]]))
    assert monitor.last_epoch_per_user is per_user  # a partial epoch does not replace the last complete one


def test_epoch_rates_pool_the_counts_of_each_epochs_steps():
    steps = [{PAIRS: 4, **{name: 1 for name in FN_DEFINITIONS}}, {PAIRS: 2, **{name: 1 for name in FN_DEFINITIONS}},
             {PAIRS: 3, **{name: 3 for name in FN_DEFINITIONS}}, {PAIRS: 1, **{name: 0 for name in FN_DEFINITIONS}}]
    rates = epoch_rates(steps, steps_per_epoch=2)
    assert [(r["epoch"], r[PAIRS], r[CHOOSABLE_ABOVE]) for r in rates] == [(1, 6, 2 / 6), (2, 4, 3 / 4)]  # pooled
    with pytest.raises(ValueError, match="whole epochs of 3 steps"):
        epoch_rates(steps, steps_per_epoch=3)


def test_pool_exclusion_ids_name_their_semantics():
    data = SimpleNamespace(train=SimpleNamespace(items=np.array([[5, 6, 7, 0]])))  # targets 6 and 7
    assert pool_exclusion_ids(data, "none") is None
    assert pool_exclusion_ids(data, "earlier_items").tolist() == [[5, 0, 0, 0], [5, 6, 0, 0]]
    assert pool_exclusion_ids(data, "window_items").tolist() == [[5, 6, 7, 0], [5, 6, 7, 0]]  # later target 7 too


def test_the_exclusion_axis_maps_onto_dpo_config_in_one_place():
    assert _exclusion_fields("none") == {"exclude_from_pool": "none"}
    params = FalseNegativeStudyParams()
    by_exclusion = {v["exclusion"]: params.dpo_config(v) for v in stage2_variants(params) if v["kind"] == DPO}
    assert by_exclusion["earlier_items"].exclude_from_pool == "earlier_items"
    assert by_exclusion["none"].exclude_from_pool == "none"
    assert applied_exclusion(by_exclusion["earlier_items"]) == "earlier_items"  # what ran is what it says


def test_bad_parameters_name_the_parameter():
    with pytest.raises(ValueError, match=r"false_negatives\.exposures"):
        FalseNegativeStudyParams(exposures=[0.0, 0.5])
    with pytest.raises(ValueError, match=r"false_negatives\.k_shares\[1\]=0\.001: K = round\(0\.001 x 200 items\) = 0"):
        FalseNegativeStudyParams(generator={"n_items": 200}, k_shares=[0.05, 0.001], primary=[])
    with pytest.raises(ValueError, match=r"false_negatives\.k_shares\[0\]=1\.0: .*too small for this share"):
        FalseNegativeStudyParams(k_shares=[1.0], primary=[])
    with pytest.raises(ValueError, match=r"false_negatives\.control_k_share=0\.0001"):
        FalseNegativeStudyParams(control_k_share=0.0001)
    with pytest.raises(ValueError, match=r"false_negatives\.primary\[0\]='choosable_above_chosen: argmax vs random': "
                                         r"not a comparison of this study; use one of \["):
        FalseNegativeStudyParams(primary=["choosable_above_chosen: argmax vs random"])
    with pytest.raises(ValueError, match=r"false_negatives\.exclusions"):
        FalseNegativeStudyParams(exclusions=["history"])
    with pytest.raises(ValueError, match=r"false_negatives\.world_seeds"):
        FalseNegativeStudyParams(world_seeds=[1, 1])
    with pytest.raises(ValueError, match=r"false_negatives\.strategies"):
        FalseNegativeStudyParams(strategies=["hardest"])
    for name in ("exposure", "seed"):
        with pytest.raises(ValueError, match=rf"false_negatives\.generator\.{name}"):
            FalseNegativeStudyParams(generator={name: 1})
    with pytest.raises(ValueError, match=r"false_negatives\.generator: KnownPreferenceSpec\.exposure_bias"):
        FalseNegativeStudyParams(generator={"exposure_bias": "clicks"})
    with pytest.raises(ValueError, match=r"false_negatives\.model: \['moe_mode'\]"):
        FalseNegativeStudyParams(model={"moe_mode": "sparse"})
    with pytest.raises(ValueError, match=r"false_negatives\.preset='fast'"):
        FalseNegativeStudyParams(preset="fast")
    with pytest.raises(ValueError, match=r"false_negatives\.presets\.quick: unknown fields \['epochs'\]"):
        FalseNegativeStudyParams(presets={"quick": {"epochs": 1}})
    with pytest.raises(ValueError, match=r"rodpo\.dpo\.n_negatives=2 > pool size 1 of .*'argmax'"):
        FalseNegativeStudyParams(n_negatives=2)  # dpo takes M losers, argmax has one


def test_the_parameter_file_and_its_quick_preset_validate():
    block = yaml.safe_load(PARAMETERS_FILE.read_text())["false_negatives"]
    full = FalseNegativeStudyParams(**block)
    assert full.effective() is full
    assert full.generator.n_items >= 2000 and len(full.world_seeds) >= 3
    assert [full.pool_size(share) for share in full.k_shares] == [5, 20, 100]
    assert len(full.primary) == len(full.k_shares)
    quick = FalseNegativeStudyParams(**{**block, "preset": "quick"}).effective()
    assert (quick.generator.n_users, quick.generator.n_items) == (200, 400)
    assert quick.generator.temperature == full.generator.temperature  # merged key by key
    assert quick.model == full.model and len(quick.world_seeds) >= 3
    assert [quick.pool_size(share) for share in quick.k_shares] == [1, 4, 20]
    # control + per exclusion (top-K per share + argmax + random), per objective
    assert len(stage2_variants(full)) == 1 + len(full.exclusions) * (len(full.k_shares) + 2)


def test_planned_comparisons_cover_the_ordering_the_exclusion_and_quality():
    names = {plan["name"] for plan in planned_comparisons(FalseNegativeStudyParams(k_shares=[0.01], primary=[]))}
    assert names == {"choosable_above_chosen: topk_uniform@0.01 vs argmax",
                     "choosable_above_chosen: random vs topk_uniform@0.01", "choosable_above_chosen: random vs argmax",
                     *(f"choosable_above_chosen: {pool}, earlier_items vs none"
                       for pool in ("topk_uniform@0.01", "argmax", "random")),
                     *(f"{TRUTH_NDCG}: {pool} vs {base}" for pool in ("topk_uniform@0.01", "argmax", "random")
                       for base in ("warmup", "control"))}


# ----------------------------------------------------------------------------------- inference
def _inference_rows(n_replicates: int) -> list[dict]:
    """Per replicate: a warm-up, top-K and argmax on 2 users; top-K - argmax FN = -0.1, -0.2, -0.3;
    top-K - warm-up truth-NDCG = +0.1 every time; argmax - warm-up = 0."""
    rows = []
    for world in range(n_replicates):
        base = {"exposure": 0.5, "world_seed": world, "seed": 1, "k": None, "k_share": None, "objective": "dpo",
                "exclusion": "none"}
        rows += [{**base, "kind": WARMUP, "strategy": None, "objective": None, "exclusion": None,
                  "per_user": {TRUTH_NDCG: np.array([0.2, 0.4])}},
                 {**base, "kind": DPO, "strategy": "topk_uniform", "k_share": 0.05, "k": 10,
                  "per_user": {CHOOSABLE_ABOVE: np.full(2, 0.4 - 0.1 * world), TRUTH_NDCG: np.array([0.3, 0.5])}},
                 {**base, "kind": DPO, "strategy": "argmax",
                  "per_user": {CHOOSABLE_ABOVE: np.full(2, 0.5), TRUTH_NDCG: np.array([0.2, 0.4])}}]
    return rows


INFERENCE_PARAMS = SimpleNamespace(exposures=(0.5,), objectives=("dpo",), exclusions=("none",), k_shares=(0.05,),
                                   strategies=("topk_uniform", "argmax"), lambda_zero_control=False,
                                   primary=("choosable_above_chosen: topk_uniform@0.05 vs argmax",),
                                   confidence=0.95, n_resamples=500)


def test_comparisons_test_over_replicates_and_adjust_over_the_study_and_the_primary_family():
    tests = {test["name"]: test for test in comparisons(_inference_rows(3), INFERENCE_PARAMS)}
    primary = tests["choosable_above_chosen: topk_uniform@0.05 vs argmax"]
    assert primary["family"] == PRIMARY_FAMILY and primary["per_seed_diff"] == pytest.approx([-0.1, -0.2, -0.3])
    assert primary["p_seed"] == pytest.approx(0.0742, abs=1e-4)  # t = -3.464, 2 df
    assert primary["p_holm_primary"] == primary["q_bh_primary"] == primary["p_seed"]  # alone in the primary family
    # the study's family is all three: Holm 3p, BH 3p for the smallest p
    assert -0.3 - 1e-9 <= primary["ci95_seed"][0] < primary["ci95_seed"][1] <= -0.1 + 1e-9
    gain, tie = tests[f"{TRUTH_NDCG}: topk_uniform@0.05 vs warmup"], tests[f"{TRUTH_NDCG}: argmax vs warmup"]
    assert gain["family"] == tie["family"] == SECONDARY_FAMILY
    assert (gain["p_seed"], tie["p_seed"]) == (0.25, 1.0)  # equal differences: the exact sign-flip p
    assert primary["p_holm"] == pytest.approx(3 * primary["p_seed"]) and primary["q_bh"] == pytest.approx(primary["p_holm"])
    assert (gain["p_holm"], tie["p_holm"]) == (0.5, 1.0) and (gain["q_bh"], tie["q_bh"]) == (0.375, 1.0)
    assert "p_holm_primary" not in gain


def test_fewer_than_three_replicates_give_no_p():
    for test in comparisons(_inference_rows(2), INFERENCE_PARAMS):
        assert test["p_seed"] is None and test["ci95_seed"] is None and test["p_holm"] is None
        assert test["seed_test_unavailable"].startswith("not available: 2 seed(s)")


def test_levels_give_each_rate_a_ci_over_replicates():
    rates = {(lv["variant"], lv["measure"]): lv for lv in levels(_inference_rows(3), confidence=0.95, n_resamples=500)}
    top_k = rates[("topk_uniform@0.05", CHOOSABLE_ABOVE)]
    assert top_k["mean"] == pytest.approx(0.3) and top_k["per_replicate"] == pytest.approx([0.4, 0.3, 0.2])
    assert 0.2 - 1e-9 <= top_k["ci95_seed"][0] < top_k["ci95_seed"][1] <= 0.4 + 1e-9 and top_k["n_replicates"] == 3
    assert ("warmup", CHOOSABLE_ABOVE) not in rates  # a warm-up draws no losers


# ----------------------------------------------------------------------------------- a tiny study
TINY = FalseNegativeStudyParams(
    generator={"n_users": 150, "n_items": 200, "n_clusters": 5, "max_seq_len": 12}, exposures=[0.5],
    world_seeds=[0, 1, 2], k_shares=[0.05], seeds=[7], warmup_epochs=1, dpo_epochs=2, control_k_share=0.05,
    model={"hidden_size": 16, "max_seq_len": 12, "n_layers": 1, "n_heads": 1, "inner_size": 32},
    batch_size=64, primary=["choosable_above_chosen: topk_uniform@0.05 vs argmax"], n_resamples=500)
VARIANTS_PER_WORLD = 1 + len(stage2_variants(TINY))  # warm-up, control, 2 exclusions x (top-K, argmax, random)


@pytest.fixture(scope="module")
def tiny_study():
    return run_false_negative_study(TINY)


def test_random_strategy_matches_its_analytic_expectation(tiny_study):
    """A random loser ignores the model: each epoch's FN rate is a mean of independent draws whose
    expectation is known exactly, with and without the exclusion; 4 standard errors is the tolerance."""
    worlds = {world["world_seed"]: world for world in tiny_study["worlds"]}
    random_rows = [row for row in tiny_study["rows"] if row["strategy"] == "random"]
    assert len(random_rows) == len(TINY.world_seeds) * len(TINY.exclusions)
    for row in random_rows:
        expected = worlds[row["world_seed"]]["random_expectation"][row["exclusion"]]
        assert len(row["epochs"]) == TINY.dpo_epochs
        for epoch in row["epochs"]:
            assert epoch[PAIRS] == worlds[row["world_seed"]]["n_train_targets"]  # every target once per epoch
            for name in FN_DEFINITIONS:
                tolerance = RANDOM_TOLERANCE_SE * max(expected[f"{name}_se"], 1e-3)
                assert abs(epoch[name] - expected[name]) < tolerance, (row["world_seed"], row["exclusion"], name)
    assert tiny_study["exclusions"]["earlier_items"]["applied"] == "earlier_items"
    assert all(row["applied_exclusion"] == "earlier_items" for row in random_rows if row["exclusion"] == "earlier_items")


def test_rows_cover_every_variant_with_metrics(tiny_study):
    rows = tiny_study["rows"]
    assert len(rows) == len(TINY.world_seeds) * len(TINY.seeds) * VARIANTS_PER_WORLD
    for row in rows:
        assert 0.0 <= row["ndcg@10_observed"] <= 1.0 and 0.0 < row["ndcg@10_truth"] <= 1.0
        assert 0.0 < row["ndcg@10_truth_all_items"] <= 1.0
        assert (row["epochs"] == []) == (row["kind"] == WARMUP) and "per_user" not in row
        for epoch in row["epochs"]:
            assert epoch[CHOOSABLE_ABOVE] <= epoch[ABOVE] and epoch[CHOOSABLE_OBSERVED] <= epoch[OBSERVED]
    control = [row for row in rows if row["kind"] == CONTROL]
    assert control and all(row["lambda_dpo"] == 0.0 and row["k"] == 10 for row in control)


def test_every_comparison_reports_seed_level_inference(tiny_study):
    tests = tiny_study["comparisons"]
    assert len(tests) == len(planned_comparisons(TINY))
    for test in tests:
        assert test["n_seeds"] == 3 and test["seed_test_unavailable"] is None
        for key in ("p_seed", "ci95_seed", "p_holm", "q_bh"):
            assert test[key] is not None, (test["name"], key)
    assert [test["exclusion"] for test in tests if test["family"] == PRIMARY_FAMILY] == ["none", "earlier_items"]
    assert all(level["ci95_seed"] is not None for level in tiny_study["levels"])


def _main_table(markdown: str) -> list[str]:
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| Exposure | Pool exclusion | Variant"))
    return list(itertools.takewhile(lambda line: line.startswith("|"), lines[start + 2:]))


def test_table_has_one_row_per_variant_per_exposure(tiny_study):
    markdown = false_negatives_markdown(tiny_study)
    table = _main_table(markdown)
    assert len(table) == len(TINY.exposures) * VARIANTS_PER_WORLD
    assert sum("_Warm-up" in line for line in table) == len(TINY.exposures)
    assert sum("_λ = 0 control" in line for line in table) == len(TINY.exposures)
    warmup = next(line for line in table if "_Warm-up" in line)
    assert warmup.count("—") == 11  # exclusion, objective, 8 FN rates and the per-epoch list: no pairs
    assert not any("ran as" in line for line in table)  # earlier_items runs as exactly that
    top_k = next(line for line in table if "top-K uniform" in line)
    assert top_k.count("[") >= 5  # the four choosable rates and the truth NDCG carry CIs
    assert "(all items, incl. earlier choices)" in markdown and "### Primary comparisons" in markdown


def test_figure_has_a_panel_per_exclusion_and_the_secondary_reading(tiny_study):
    figure = false_negatives_figure(tiny_study)
    assert len(figure.axes) == len(TINY.exclusions) + 1
    assert all(axis.get_xlabel().startswith("K share") for axis in figure.axes)
    assert "all items" in figure.axes[-1].get_title()


def test_results_survive_the_json_round_trip_the_report_node_sees(tiny_study):
    again = json.loads(json.dumps(tiny_study))
    assert again["settings"]["generator"]["n_users"] == 150
    assert false_negatives_markdown(again) == false_negatives_markdown(tiny_study)
