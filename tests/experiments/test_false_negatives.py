"""The false-negative study's pieces on hand-made worlds, and a tiny study end to end (no Kedro)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import yaml

from rodpo.data.known_preferences import GroundTruth
from rodpo.experiments.false_negatives import (
    ABOVE,
    CONTROL,
    FN_DEFINITIONS,
    OBSERVED,
    PAIRS,
    TRUE_TOP,
    UNOBSERVED,
    WARMUP,
    FalseNegativeJudge,
    FalseNegativeMonitor,
    FalseNegativeStudyParams,
    epoch_rates,
    run_false_negative_study,
    stage2_variants,
)
from rodpo.experiments.false_negatives_report import false_negatives_figure, false_negatives_markdown

PARAMETERS_FILE = Path(__file__).resolve().parents[2] / "conf/base/parameters_false_negatives.yml"
RANDOM_TOLERANCE_SE = 4.0  # |observed - expected| of the random strategy, in standard errors of one epoch


def hand_made_world() -> tuple[GroundTruth, pl.DataFrame]:
    """4 items with utilities 3, 2, 1, 0 for every user in every context (no sequential term).

    User 1 chose 2 (observed), 1 (NOT observed), 4 (observed), 3 (observed); user 2 chose nothing.
    """
    n_users, utilities = 2, [3.0, 2.0, 1.0, 0.0]
    truth = GroundTruth(user_factors=np.zeros((n_users + 1, 1)), item_factors=np.zeros((5, 1)),
                        item_bias=np.array([0.0, *utilities]), item_cluster=np.zeros(5, dtype=int),
                        cluster_affinity=np.zeros((1, 1)), transition_weight=0.0, temperature=1.0)
    choices = pl.DataFrame({"user_id": [1, 1, 1, 1], "step": [0, 1, 2, 3], "item_id": [2, 1, 4, 3],
                            "last_item_id": [0, 2, 1, 4], "timestamp": [0, 1, 2, 3],
                            "observed": [True, False, True, True]})
    return truth, choices


def test_judge_counts_each_definition_in_the_true_context():
    judge = FalseNegativeJudge(*hand_made_world(), top_fraction=0.5)  # true top 2 = items 1, 2
    users, chosen = torch.tensor([1, 1]), torch.tensor([4, 3])
    assert judge.true_last_items(users, chosen).tolist() == [1, 4]  # 1 was chosen before 4, though unobserved
    # pair 1: chosen 4 (u=0), loser 1 (u=3): above, in the top 2, an unobserved choice;
    # pair 2: chosen 3 (u=1), loser 4 (u=0): only an observed choice (of step 2)
    counts = judge.count(users, chosen, torch.tensor([[1], [4]]))
    assert counts == {PAIRS: 2, ABOVE: 1, TRUE_TOP: 1, UNOBSERVED: 1, OBSERVED: 1}
    # a random loser among the 3 non-positive items: chosen 4 -> above 3/3, top 2/3 (items 1, 2),
    # unobserved 1/3 (item 1), observed 2/3 (items 2, 3); chosen 3 -> above 2/3, top 2/3, unobserved 1/3,
    # observed 2/3 (items 2, 4)
    expected = judge.random_expectation(users, chosen)
    assert expected[ABOVE] == pytest.approx(5 / 6)
    assert expected[TRUE_TOP] == pytest.approx(2 / 3)
    assert expected[UNOBSERVED] == pytest.approx(1 / 3)
    assert expected[OBSERVED] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="never chosen in this world"):
        judge.count(torch.tensor([2]), torch.tensor([1]), torch.tensor([[3]]))


def test_monitor_records_one_count_per_step():
    monitor = FalseNegativeMonitor(FalseNegativeJudge(*hand_made_world(), top_fraction=0.5))
    for losers in ([[1], [4]], [[2], [2]]):
        monitor(users=torch.tensor([1, 1]), last_items=torch.tensor([0, 0]), chosen=torch.tensor([4, 3]),
                losers=torch.tensor(losers))
    assert monitor.steps == [{PAIRS: 2, ABOVE: 1, TRUE_TOP: 1, UNOBSERVED: 1, OBSERVED: 1},
                             {PAIRS: 2, ABOVE: 2, TRUE_TOP: 2, UNOBSERVED: 0, OBSERVED: 2}]


def test_epoch_rates_pool_the_counts_of_each_epochs_steps():
    steps = [{PAIRS: 4, ABOVE: 1, TRUE_TOP: 2, UNOBSERVED: 0, OBSERVED: 4},
             {PAIRS: 2, ABOVE: 1, TRUE_TOP: 0, UNOBSERVED: 1, OBSERVED: 0},
             {PAIRS: 3, ABOVE: 3, TRUE_TOP: 3, UNOBSERVED: 3, OBSERVED: 0},
             {PAIRS: 1, ABOVE: 0, TRUE_TOP: 0, UNOBSERVED: 0, OBSERVED: 1}]
    assert epoch_rates(steps, steps_per_epoch=2) == [
        {"epoch": 1, PAIRS: 6, ABOVE: 2 / 6, TRUE_TOP: 2 / 6, UNOBSERVED: 1 / 6, OBSERVED: 4 / 6},  # pooled,
        {"epoch": 2, PAIRS: 4, ABOVE: 3 / 4, TRUE_TOP: 3 / 4, UNOBSERVED: 3 / 4, OBSERVED: 1 / 4},  # not step means
    ]
    with pytest.raises(ValueError, match="whole epochs of 3 steps"):
        epoch_rates(steps, steps_per_epoch=3)


def test_bad_parameters_name_the_parameter():
    with pytest.raises(ValueError, match=r"false_negatives\.exposures"):
        FalseNegativeStudyParams(exposures=[0.0, 0.5])
    with pytest.raises(ValueError, match=r"false_negatives\.ks"):
        FalseNegativeStudyParams(generator={"n_items": 30}, ks=[50])
    with pytest.raises(ValueError, match=r"false_negatives\.strategies"):
        FalseNegativeStudyParams(strategies=["hardest"])
    with pytest.raises(ValueError, match=r"false_negatives\.generator\.exposure"):
        FalseNegativeStudyParams(generator={"exposure": 0.5})
    with pytest.raises(ValueError, match=r"false_negatives\.generator: KnownPreferenceSpec\.n_items"):
        FalseNegativeStudyParams(generator={"n_items": 1})
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
    quick = FalseNegativeStudyParams(**{**block, "preset": "quick"}).effective()
    assert (quick.generator.n_users, quick.generator.n_items) == (200, 100)
    assert quick.generator.temperature == full.generator.temperature  # merged key by key
    assert quick.model == full.model
    assert (quick.exposures, quick.ks, quick.dpo_epochs) == ((0.5, 1.0), (20,), 1)
    # control + top-K per K + argmax + random, per objective
    assert len(stage2_variants(full)) == 1 + len(full.ks) + 2


TINY = FalseNegativeStudyParams(
    generator={"n_users": 150, "n_items": 60, "n_clusters": 5, "max_seq_len": 12}, exposures=[0.5, 1.0],
    strategies=["topk_uniform", "argmax", "random"], ks=[10], seeds=[7], warmup_epochs=1, dpo_epochs=2,
    model={"hidden_size": 16, "max_seq_len": 12, "n_layers": 1, "n_heads": 1, "inner_size": 32},
    batch_size=64)


@pytest.fixture(scope="module")
def tiny_study():
    return run_false_negative_study(TINY)


def test_random_strategy_matches_its_analytic_expectation(tiny_study):
    """A random loser ignores the model: each epoch's FN rate is a mean of independent draws whose
    expectation is known exactly; 4 standard errors (about 0.03-0.05 here) is the tolerance."""
    worlds = {world["exposure"]: world for world in tiny_study["worlds"]}
    random_rows = [row for row in tiny_study["rows"] if row["strategy"] == "random"]
    assert len(random_rows) == len(TINY.exposures)
    for row in random_rows:
        expected = worlds[row["exposure"]]["random_expectation"]
        assert len(row["epochs"]) == TINY.dpo_epochs
        for epoch in row["epochs"]:
            assert epoch[PAIRS] == worlds[row["exposure"]]["n_train_targets"]  # every target once per epoch
            for name in FN_DEFINITIONS:
                tolerance = RANDOM_TOLERANCE_SE * max(expected[f"{name}_se"], 1e-3)
                assert abs(epoch[name] - expected[name]) < tolerance, (row["exposure"], name)
    full_exposure = next(row for row in random_rows if row["exposure"] == 1.0)
    assert all(epoch[UNOBSERVED] == 0.0 for epoch in full_exposure["epochs"])  # nothing is hidden


def test_rows_cover_every_variant_with_metrics(tiny_study):
    rows = tiny_study["rows"]
    assert len(rows) == len(TINY.exposures) * len(TINY.seeds) * (1 + len(stage2_variants(TINY)))
    for row in rows:
        assert 0.0 <= row["ndcg@10_observed"] <= 1.0 and 0.0 < row["ndcg@10_truth"] <= 1.0
        assert (row["epochs"] == []) == (row["kind"] == WARMUP)
    control = [row for row in rows if row["kind"] == CONTROL]
    assert control and all(row["lambda_dpo"] == 0.0 and row["k"] == TINY.control_k for row in control)


def _main_table(markdown: str) -> list[str]:
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| Exposure | Variant"))
    return list(itertools.takewhile(lambda line: line.startswith("|"), lines[start + 2:]))


def test_table_has_one_row_per_variant_per_exposure(tiny_study):
    table = _main_table(false_negatives_markdown(tiny_study))
    assert len(table) == len(TINY.exposures) * (1 + len(stage2_variants(TINY)))
    assert sum("_Warm-up" in line for line in table) == len(TINY.exposures)
    assert sum("_λ = 0 control" in line for line in table) == len(TINY.exposures)
    warmup = next(line for line in table if "_Warm-up" in line)
    assert warmup.count("—") == 6  # objective, four FN rates and the per-epoch list: no pairs in a warm-up
    control = next(line for line in table if "_λ = 0 control" in line)
    assert control.split(" | ")[2] == "—"  # its preference loss is weighted 0


def test_seeds_are_averaged_in_the_table(tiny_study):
    """Two copies of each row under another seed: the table shows mean ± std over the two."""
    doubled = {**tiny_study, "settings": {**tiny_study["settings"], "seeds": [7, 8]},
               "rows": tiny_study["rows"] + [{**row, "seed": 8} for row in tiny_study["rows"]]}
    table = _main_table(false_negatives_markdown(doubled))
    assert len(table) == len(TINY.exposures) * (1 + len(stage2_variants(TINY)))
    assert all("± 0.000" in line for line in table)


def test_figure_has_two_panels(tiny_study):
    figure = false_negatives_figure(tiny_study)
    assert len(figure.axes) == 2
    by_k, by_exposure = figure.axes
    assert by_k.get_xlabel().startswith("K") and by_exposure.get_xlabel().startswith("observation rate")
    assert len(by_exposure.get_lines()) >= 1 + 3  # the random expectation + one line per strategy / K


def test_results_survive_the_json_round_trip_the_report_node_sees(tiny_study):
    again = json.loads(json.dumps(tiny_study))
    assert again["settings"]["generator"]["n_users"] == 150
    assert false_negatives_markdown(again) == false_negatives_markdown(tiny_study)
