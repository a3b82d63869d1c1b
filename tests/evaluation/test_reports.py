"""Markdown tables in the paper's layout and the Figure 4 logit-density figure."""

import io

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from rodpo.evaluation.reports import (
    comparison_table_markdown,
    logit_distribution_figure,
    metric_label,
    metrics_markdown,
    relative_improvement,
)

PNG_MAGIC = b"\x89PNG"


def _rows():
    return [
        ("Warm-up (SFT)", {"ndcg@5": 0.0400, "ndcg@10": 0.0500, "mrr@5": 0.0300, "mrr@10": 0.0350}),
        ("RoDPO", {"ndcg@5": 0.0420, "ndcg@10": 0.0490, "mrr@5": 0.0330, "mrr@10": 0.0350}),
    ]


def _table_lines(markdown):
    return [line for line in markdown.splitlines() if line.startswith("|")]


def test_comparison_table_has_rows_values_and_signed_improvement():
    table = comparison_table_markdown(_rows(), baseline="Warm-up (SFT)", title="Table 3: ablation")
    assert table.startswith("**Table 3: ablation**")
    header, rule, warm_up, rodpo, improv = _table_lines(table)
    assert header == "| Model | NDCG@5 | NDCG@10 | MRR@5 | MRR@10 |"
    assert rule.count("---") == 5
    assert warm_up == "| Warm-up (SFT) | 0.0400 | 0.0500 | 0.0300 | 0.0350 |"
    assert rodpo == "| RoDPO | 0.0420 | 0.0490 | 0.0330 | 0.0350 |"
    # 0.0400 -> 0.0420 is +5.00%; 0.0500 -> 0.0490 is -2.00%; 0.03 -> 0.033 is +10.00%;
    # equal values give +0.00%
    assert improv == "| Improv. | +5.00% | -2.00% | +10.00% | +0.00% |"


def test_improvement_compares_the_last_row_with_the_named_baseline():
    rows = [
        ("HM4SR", {"ndcg@5": 0.0495}),
        ("SASRec", {"ndcg@5": 0.0348}),
        ("RoDPO", {"ndcg@5": 0.0521}),
    ]
    table = comparison_table_markdown(rows, metrics=("ndcg@5",), baseline="HM4SR")
    assert _table_lines(table)[-1] == "| Improv. | +5.25% |"  # the paper's Table 1 number


def test_no_baseline_means_no_improvement_row_and_missing_values_show_a_dash():
    rows = [("A", {"ndcg@5": 0.1}), ("B", {"ndcg@5": float("nan"), "hit@20": 0.5})]
    table = comparison_table_markdown(rows, metrics=("ndcg@5", "hit@20"))
    assert "Improv." not in table
    assert _table_lines(table)[2:] == ["| A | 0.1000 | — |", "| B | — | 0.5000 |"]


def test_improvement_against_zero_or_missing_baseline_is_a_dash():
    rows = [("A", {"ndcg@5": 0.0}), ("B", {"ndcg@5": 0.1})]
    table = comparison_table_markdown(rows, metrics=("ndcg@5", "mrr@5"), baseline="A")
    assert _table_lines(table)[-1] == "| Improv. | — | — |"


def test_bad_baselines_are_rejected():
    with pytest.raises(ValueError, match="not one of the table rows"):
        comparison_table_markdown(_rows(), baseline="HM4SR")
    with pytest.raises(ValueError, match="last row"):
        comparison_table_markdown(_rows(), baseline="RoDPO")
    with pytest.raises(ValueError, match="at least one"):
        comparison_table_markdown([])


def test_relative_improvement_and_labels():
    assert relative_improvement(0.04, 0.042) == pytest.approx(5.0)
    assert np.isnan(relative_improvement(0.0, 0.1))
    assert metric_label("ndcg@10") == "NDCG@10"
    assert metric_label("mrr@5") == "MRR@5"
    assert metric_label("hit@20") == "Hit@20"


def test_metrics_markdown_has_one_row_per_split():
    table = metrics_markdown(
        {"valid": {"ndcg@5": 0.12345, "mrr@5": 0.1}, "test": {"ndcg@5": 0.1, "mrr@5": 0.09876}}
    )
    assert _table_lines(table) == [
        "| Split | NDCG@5 | MRR@5 |",
        "| --- | ---: | ---: |",
        "| valid | 0.1235 | 0.1000 |",
        "| test | 0.1000 | 0.0988 |",
    ]


def _png_bytes(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def test_logit_figure_has_one_panel_per_model_with_kde_curves():
    rng = np.random.default_rng(0)
    panels = {
        "Warm-up (SFT)": {"positive": rng.normal(2, 1, 300), "negative": rng.normal(3, 0.3, 300)},
        "RoDPO": {"positive": rng.normal(3, 1, 300), "negative": torch.randn(300)},
    }
    figure = logit_distribution_figure(panels, title="Toys and Games")
    assert len(figure.axes) == 2
    for ax, name in zip(figure.axes, panels):
        assert ax.get_title().endswith(name)
        assert ax.get_xlabel() and ax.get_ylabel()
        assert len(ax.get_lines()) == 2  # one KDE curve per series
        colors = [line.get_color() for line in ax.get_lines()]
        assert colors == ["tab:green", "tab:red"]
        assert [t.get_text().split(" (")[0] for t in ax.get_legend().get_texts()] == [
            "positive",
            "negative",
        ]
    assert figure.axes[0].get_xlim() == figure.axes[1].get_xlim()
    assert _png_bytes(figure).startswith(PNG_MAGIC)


def test_constant_tiny_and_non_finite_logits_fall_back_to_histograms():
    panels = {
        "collapsed": {"positive": np.full(50, 1.5), "negative": np.array([2.0, np.nan, np.inf])},
        "empty": {"positive": np.array([]), "negative": np.full(10, 1.5)},
    }
    figure = logit_distribution_figure(panels)
    collapsed, empty = figure.axes
    assert len(collapsed.get_lines()) == 0 and len(collapsed.patches) > 0  # histograms, no KDE
    low, high = collapsed.get_xlim()
    assert low < 1.5 and high > 2.0
    assert any("no data" in t.get_text() for t in empty.get_legend().get_texts())
    assert _png_bytes(figure).startswith(PNG_MAGIC)


def test_all_constant_logits_still_draw():
    figure = logit_distribution_figure({"m": {"positive": np.zeros(5), "negative": np.zeros(5)}})
    assert figure.axes[0].get_xlim()[0] < 0.0 < figure.axes[0].get_xlim()[1]
    assert _png_bytes(figure).startswith(PNG_MAGIC)


def test_empty_panels_are_rejected():
    with pytest.raises(ValueError, match="panels"):
        logit_distribution_figure({})
