"""A study's markdown table, figure and logit panels, from hand-made results."""

from __future__ import annotations

import numpy as np

from rodpo.experiments.reports import study_figure, study_logit_figure, study_table_markdown

METRICS = ["ndcg@5", "mrr@5"]


def setting(mean: float, std: float) -> dict:
    return {"runs": {}, "per_seed": {}, "mean": {m: mean for m in METRICS}, "std": {m: std for m in METRICS}}


def row(label, setting_name, mean, std, markers="", sweep=None, value=None, warmup_only=False, bold=False) -> dict:
    return {"label": label, "setting": setting_name, "warmup": "warmup", "warmup_only": warmup_only,
            "sweep": sweep, "value": value, "mean": {m: mean for m in METRICS},
            "std": {m: std for m in METRICS}, "markers": {m: markers for m in METRICS},
            "bold": {m: bold for m in METRICS}}


def results(kind: str, rows: list[dict]) -> dict:
    return {
        "study": "s", "title": "Table 2: negative sampling", "kind": kind, "dataset": "demo", "split": "test",
        "seeds": [1, 2], "metrics": METRICS, "users": 1234, "reference": "rodpo", "reference_warmup": "warmup",
        "rows": rows,
        "settings": {"rodpo": setting(0.05, 0.001), "rodpo_random": setting(0.04, 0.002),
                     "rodpo_k10": setting(0.045, 0.003), "warmup": setting(0.03, 0.0005)},
        "tests": [{"kind": "vs_warmup", "a": "warmup", "b": "rodpo", "metric": "ndcg@5", "mean_diff": 0.02,
                   "ci95_seed": [0.01, 0.03], "p_seed": 0.0001, "p_signflip": 0.125, "p_holm": 0.0002,
                   "q_bh": 0.0002, "p_users": 0.0001, "significant": True, "primary": True},
                  {"kind": "vs_reference", "a": "rodpo_random", "b": "rodpo", "metric": "ndcg@5",
                   "mean_diff": 0.01, "ci95_seed": [-0.002, 0.02], "p_seed": 0.2, "p_signflip": 0.25, "p_holm": 0.2,
                   "q_bh": 0.2, "p_users": 0.001, "significant": False}],
        "primary": [{"kind": "vs_warmup", "a": "warmup", "b": "rodpo", "metric": "ndcg@5", "mean_diff": 0.02,
                     "ci95_seed": [0.01, 0.03], "verdict": "significant: b better than a"}],
        "significance": {"alpha": 0.05, "confidence": 0.95, "n_resamples": 10_000, "min_seeds": 3},
    }


TABLE = results("rows", [row("Random Sampling", "rodpo_random", 0.04, 0.002, "†‡"),
                         row("Top-K Sampling (Ours)", "rodpo", 0.05, 0.001, "†", bold=True)])
SWEEP = results("sweeps", [row("K=10", "rodpo_k10", 0.045, 0.003, "‡", "K", 10),
                           row("K=50", "rodpo", 0.05, 0.001, "†", "K", 50),
                           row("beta=1.0", "rodpo", 0.05, 0.001, "†", "beta", 1.0)])


def test_table_has_mean_std_markers_legend_and_tests():
    text = study_table_markdown(TABLE)
    assert "| Variant | NDCG@5 | MRR@5 |" in text
    assert "| Random Sampling | 0.0400 ± 0.0020 †‡ | 0.0400 ± 0.0020 †‡ |" in text
    # the reference's warm-up is shown for context when no row is the warm-up
    assert "| _Warm-up (SFT) of Top-K Sampling (Ours)_ | 0.0300 ± 0.0005 |" in text
    assert "† differs significantly from the row's own warm-up" in text
    assert "‡ differs significantly from Top-K Sampling (Ours)" in text and "p < 0.05" in text
    assert "1,234 test users" in text and "Holm-adjusted p < 0.05" in text
    assert "| Top-K Sampling (Ours) | **0.0500 ± 0.0010** † |" in text  # bold: significant after adjustment
    assert "**With fewer than 3 seeds no seed-level test is available" in text  # seeds [1, 2]
    assert ("| Top-K Sampling (Ours) vs Warm-up (SFT) (primary) | NDCG@5 | +0.0200 | [+0.0100, +0.0300] | 0.0001 | "
            "0.1250 | 0.0002 | 0.0002 | 0.0001 | † |") in text
    assert ("| Top-K Sampling (Ours) vs Random Sampling | NDCG@5 | +0.0100 | [-0.0020, +0.0200] | 0.2000 | 0.2500 | "
            "0.2000 | 0.2000 | 0.0010 |  |") in text
    assert "- Top-K Sampling (Ours) vs Warm-up (SFT), NDCG@5: Δ = +0.0200" in text


def test_sweep_table_has_one_table_per_swept_parameter():
    text = study_table_markdown(SWEEP)
    assert "| K | NDCG@5 | MRR@5 |" in text and "| beta | NDCG@5 | MRR@5 |" in text
    assert "| 10 | 0.0450 ± 0.0030 ‡ |" in text
    # a setting shown as several points is named by all its labels
    assert "| K=50 / beta=1.0 vs Warm-up (SFT) (primary) |" in text


def test_figures_have_one_series_per_metric_and_one_panel_per_sweep():
    bars = study_figure(TABLE)
    (ax,) = bars.axes
    assert len(ax.containers) >= len(METRICS)  # one bar series per metric (plus error bars)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["Random Sampling", "Top-K Sampling\n(Ours)"]
    lines = study_figure(SWEEP)
    assert [a.get_xlabel() for a in lines.axes] == ["K", "beta"]
    assert [t.get_text() for t in lines.axes[0].get_xticklabels()] == ["10", "50"]


def test_logit_figure_has_the_warmup_and_each_setting_once():
    rng = np.random.default_rng(0)
    samples = {s: {"positive": rng.normal(1, 1, 50), "negative": rng.normal(0, 1, 50)}
               for s in ("warmup", "rodpo", "rodpo_k10")}
    figure = study_logit_figure(SWEEP, samples)
    titles = [a.get_title() for a in figure.axes]
    assert titles == ["(a) Warm-up (SFT)", "(b) K=10", "(c) K=50 / beta=1.0"]


def test_a_pair_tested_twice_is_listed_once_with_both_markers():
    # Table 3: RoDPO vs its warm-up is the † test of RoDPO and the ‡ test of the "w/o DPO" row
    both = results("rows", [row("Full Model (RoDPO)", "rodpo", 0.05, 0.001, "†"),
                            row("w/o DPO (Baseline)", "warmup", 0.03, 0.0005, "‡", warmup_only=True)])
    twice = {"a": "warmup", "b": "rodpo", "metric": "ndcg@5", "mean_diff": 0.02, "ci95_seed": [0.01, 0.03],
             "p_seed": 0.0001, "p_signflip": 0.125, "p_holm": 0.0002, "q_bh": 0.0002, "p_users": 0.001,
             "significant": True}
    both["tests"] = [{"kind": "vs_warmup", **twice}, {"kind": "vs_reference", **twice}]
    lines = [line for line in study_table_markdown(both).splitlines() if " vs w/o DPO (Baseline) |" in line]
    assert lines == ["| Full Model (RoDPO) vs w/o DPO (Baseline) | NDCG@5 | +0.0200 | [+0.0100, +0.0300] | 0.0001 | "
                     "0.1250 | 0.0002 | 0.0002 | 0.0010 | †‡ |"]


def test_the_control_is_a_context_row_named_in_the_tests_and_masked_metrics_get_their_own_columns():
    masked = [*METRICS, "ndcg@5:masked"]
    with_control = {**TABLE, "metrics": masked, "reference_control": "rodpo_lambda_dpo0p0",
                    "rows": [{**r, "control": "rodpo_lambda_dpo0p0", "mean": {**r["mean"], "ndcg@5:masked": 0.07},
                              "std": {**r["std"], "ndcg@5:masked": 0.001},
                              "markers": {**r["markers"], "ndcg@5:masked": "§"}} for r in TABLE["rows"]],
                    "settings": {name: {**s, "mean": {**s["mean"], "ndcg@5:masked": 0.06},
                                        "std": {**s["std"], "ndcg@5:masked": 0.0}}
                                 for name, s in {**TABLE["settings"], "rodpo_lambda_dpo0p0": setting(0.049, 0.001)}.items()},
                    "tests": [*TABLE["tests"], {"kind": "vs_control", "a": "rodpo_lambda_dpo0p0", "b": "rodpo",
                                                "metric": "ndcg@5:masked", "mean_diff": 0.001,
                                                "ci95_seed": [0.0005, 0.0015], "p_seed": 0.01, "p_signflip": 0.125,
                                                "p_holm": 0.03, "q_bh": 0.02, "p_users": 0.001,
                                                "significant": True}]}
    text = study_table_markdown(with_control)
    assert "| Variant | NDCG@5 | MRR@5 | NDCG@5 (masked) |" in text
    assert "| _λ = 0 control (CE, no dropout)_ | 0.0490 ± 0.0010 | 0.0490 ± 0.0010 | 0.0600 ± 0.0000 |" in text
    assert "| Top-K Sampling (Ours) | **0.0500 ± 0.0010** † | **0.0500 ± 0.0010** † | 0.0700 ± 0.0010 § |" in text
    assert "§ from its λ = 0 control (CE, no dropout): same warm-up" in text
    assert ("| Top-K Sampling (Ours) vs λ = 0 control (CE, no dropout) | NDCG@5 (masked) | +0.0010 | "
            "[+0.0005, +0.0015] | 0.0100 | 0.1250 | 0.0300 | 0.0200 | 0.0010 | § |" in text)


def test_the_training_section_shows_convergence_and_stage_two_diagnostics():
    trained = {**TABLE, "settings": {**TABLE["settings"],
               "warmup": {**TABLE["settings"]["warmup"], "training": {
                   "1": {"epochs_run": 30, "best_epoch": 25, "passed_peak": True, "best_valid": 0.05},
                   "2": {"epochs_run": 28, "best_epoch": 28, "passed_peak": False, "best_valid": 0.07}}},
               "rodpo": {**TABLE["settings"]["rodpo"], "training": {
                   "1": {"epochs_run": 3, "best_epoch": 1, "passed_peak": True, "best_valid": 0.06,
                         "start_valid": 0.05, "dpo_loss": 0.5, "rewards_accuracy": 0.75, "rewards_chosen": -0.2,
                         "score_margin": 1.0}}}}}
    text = study_table_markdown(trained)
    assert "| Warm-up (SFT) | 30, 28 | 25, 28 | 1/2 | — → 0.060 | — | — | — | — |" in text
    assert "| Top-K Sampling (Ours) | 3 | 1 | 1/1 | 0.050 → 0.060 | 0.500 | 0.750 | -0.200 | 1.000 |" in text
