"""A study's markdown table (paper layout, mean ± std, significance markers), its figure and its
Figure-4 logit panels, all built from the results of ``aggregate.summarise_study``."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from rodpo.evaluation.reports import MISSING, logit_distribution_figure, metric_label
from rodpo.experiments.aggregate import MARKERS, VS_REFERENCE, VS_WARMUP

REFERENCE_NAME = "RoDPO"
WARMUP_NAME = "Warm-up (SFT)"
METRIC_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:purple")
LABEL_WRAP = 16          # characters per line of a bar label
BAR_GROUP_WIDTH = 0.8    # share of a bar-chart slot taken by one row's bars
BAR_HEADROOM = 1.35      # y-axis top over the tallest bar: room for markers and the legend
PANEL_SIZE = (4.5, 3.5)  # inches per figure panel


def display_names(results: Mapping[str, Any]) -> dict[str, str]:
    """Setting name -> what the report calls it: its row label(s), else RoDPO / Warm-up."""
    labels: dict[str, list[str]] = {}
    for row in results["rows"]:
        labels.setdefault(row["setting"], []).append(row["label"])
    names = {setting: " / ".join(dict.fromkeys(values)) for setting, values in labels.items()}
    names.setdefault(results["reference"], REFERENCE_NAME)
    names.setdefault(results["reference_warmup"], WARMUP_NAME)
    for setting in results["settings"]:
        names.setdefault(setting, f"Warm-up `{setting}`" if setting.startswith("warmup") else f"`{setting}`")
    return names


def _cell(mean: float | None, std: float | None, markers: str, decimals: int) -> str:
    if mean is None or not math.isfinite(mean):
        return MISSING
    text = f"{mean:.{decimals}f} ± {std:.{decimals}f}"
    return f"{text} {markers}" if markers else text


def _table(header: list[str], body: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([" --- "] + [" ---: "] * (len(header) - 1)) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in body]


def _warmup_row(results: Mapping[str, Any], first_column: str, decimals: int) -> list[str] | None:
    """The reference's warm-up as an italic context row, unless a row already shows it."""
    warmup = results["reference_warmup"]
    if any(row["setting"] == warmup for row in results["rows"]):
        return None
    summary = results["settings"][warmup]
    return [f"_{first_column}_", *(_cell(summary["mean"][m], summary["std"][m], "", decimals)
                                   for m in results["metrics"])]


def _legend(results: Mapping[str, Any], names: Mapping[str, str]) -> str:
    significance = results["significance"]
    alpha, confidence = significance["alpha"], significance["confidence"]
    return (
        f"{MARKERS[VS_WARMUP]} differs significantly from the row's own warm-up model; "
        f"{MARKERS[VS_REFERENCE]} differs significantly from {names[results['reference']]} "
        f"(the base setting, `{results['reference']}`). Two-sided p < {alpha:g}, paired over the "
        f"{results['users']:,} test users on each user's metric averaged over seeds; p from a paired "
        f"sign-flip permutation test ({significance['n_resamples']:,} resamples), no multiple-comparison "
        f"correction. Full ranking over all items; mean ± sample std over seeds "
        f"{', '.join(str(s) for s in results['seeds'])}. The paired tests below give each difference and "
        f"its {confidence:.0%} paired-bootstrap CI."
    )


def study_table_markdown(results: Mapping[str, Any], *, decimals: int = 4, p_decimals: int = 4) -> str:
    """Paper layout (Table 2 / 3, or one table per sweep of Figure 3) plus the paired tests."""
    metrics = results["metrics"]
    names = display_names(results)
    header_metrics = [metric_label(m) for m in metrics]
    lines = [f"## {results['title']}", "",
             f"Dataset `{results['dataset']}`, {results['split']} split, {len(results['seeds'])} seeds.", ""]
    if results["kind"] == "sweeps":
        sweeps = list(dict.fromkeys(row["sweep"] for row in results["rows"]))
        for sweep in sweeps:
            body = [[str(row["value"]), *(_cell(row["mean"][m], row["std"][m], row["markers"][m], decimals)
                                          for m in metrics)]
                    for row in results["rows"] if row["sweep"] == sweep]
            warmup = _warmup_row(results, WARMUP_NAME, decimals)
            lines += _table([sweep, *header_metrics], body + ([warmup] if warmup else [])) + [""]
    else:
        body = [[row["label"], *(_cell(row["mean"][m], row["std"][m], row["markers"][m], decimals)
                                 for m in metrics)] for row in results["rows"]]
        warmup = _warmup_row(results, f"{WARMUP_NAME} of {names[results['reference']]}", decimals)
        lines += _table(["Variant", *header_metrics], body + ([warmup] if warmup else [])) + [""]
    lines += [_legend(results, names), "", "### Paired tests", "",
              "Δ = mean over users of (b − a): positive favours the DPO model (†) or RoDPO (‡).", ""]
    body, line_of = [], {}
    for test in results["tests"]:
        marker = MARKERS[test["kind"]] if test["significant"] else ""
        pair = (test["a"], test["b"], test["metric"])
        if pair in line_of:  # e.g. RoDPO vs its warm-up is both † and ‡ in Table 3: one line, both markers
            body[line_of[pair]][-1] += marker
            continue
        line_of[pair] = len(body)
        body.append([f"{names[test['b']]} vs {names[test['a']]}", metric_label(test["metric"]),
                     f"{test['mean_diff']:+.{decimals}f}",
                     f"[{test['ci_low']:+.{decimals}f}, {test['ci_high']:+.{decimals}f}]",
                     f"{test['p_value']:.{p_decimals}f}", marker])
    lines += _table(["b vs a", "Metric", "Δ", f"{results['significance']['confidence']:.0%} CI", "p", ""], body)
    return "\n".join(lines) + "\n"


def _warmup_lines(ax, results: Mapping[str, Any]) -> None:
    summary = results["settings"][results["reference_warmup"]]
    for color, metric in zip(METRIC_COLORS, results["metrics"]):
        ax.axhline(summary["mean"][metric], color=color, linestyle="--", linewidth=1,
                   label=f"{WARMUP_NAME} {metric_label(metric)}")


def _bar_figure(results: Mapping[str, Any]) -> Figure:
    rows, metrics = results["rows"], results["metrics"]
    width, height = PANEL_SIZE
    figure = Figure(figsize=(max(width, 1.3 * len(rows) + 1.5), height), layout="constrained")
    ax = figure.subplots()
    positions = np.arange(len(rows))
    bar_width = BAR_GROUP_WIDTH / len(metrics)
    for index, (color, metric) in enumerate(zip(METRIC_COLORS, metrics)):
        offsets = positions - BAR_GROUP_WIDTH / 2 + (index + 0.5) * bar_width
        means = [row["mean"][metric] for row in rows]
        stds = [row["std"][metric] for row in rows]
        bars = ax.bar(offsets, means, bar_width, yerr=stds, capsize=3, color=color, label=metric_label(metric))
        ax.bar_label(bars, labels=[row["markers"][metric] for row in rows], padding=2)
    if not any(row["setting"] == results["reference_warmup"] for row in rows):
        _warmup_lines(ax, results)
    tallest = max(row["mean"][m] + row["std"][m] for row in rows for m in metrics)
    if math.isfinite(tallest) and tallest > 0:
        ax.set_ylim(0, BAR_HEADROOM * tallest)
    ax.set_xticks(positions, [textwrap.fill(row["label"], LABEL_WRAP) for row in rows])
    ax.set_ylabel(f"Test score (mean ± std, {len(results['seeds'])} seeds)")
    ax.set_title(results["title"])
    ax.legend(fontsize="small", loc="upper left", ncol=2)
    return figure


def _sweep_figure(results: Mapping[str, Any]) -> Figure:
    sweeps = list(dict.fromkeys(row["sweep"] for row in results["rows"]))
    width, height = PANEL_SIZE
    figure = Figure(figsize=(width * len(sweeps), height), layout="constrained")
    axes = figure.subplots(1, len(sweeps), squeeze=False)[0]
    for ax, sweep in zip(axes, sweeps):
        rows = [row for row in results["rows"] if row["sweep"] == sweep]
        positions = np.arange(len(rows))  # evenly spaced, as the paper's Figure 3
        for color, metric in zip(METRIC_COLORS, results["metrics"]):
            ax.errorbar(positions, [row["mean"][metric] for row in rows], yerr=[row["std"][metric] for row in rows],
                        color=color, marker="o", capsize=3, label=metric_label(metric))
        _warmup_lines(ax, results)
        ax.set_xticks(positions, [str(row["value"]) for row in rows])
        ax.set_xlabel(sweep)
        ax.set_ylabel("Test score (mean ± std over seeds)")
        ax.legend(fontsize="small")
    figure.suptitle(results["title"])
    return figure


def study_figure(results: Mapping[str, Any]) -> Figure:
    """Tables 2-3: grouped bars per row; Figure 3: one line panel per sweep. Std error bars."""
    return _sweep_figure(results) if results["kind"] == "sweeps" else _bar_figure(results)


def study_logit_figure(results: Mapping[str, Any], samples: Mapping[str, Mapping[str, np.ndarray]]) -> Figure:
    """Paper Figure 4 for every setting of the study: ``samples`` maps a setting name to its
    {"positive": logits, "negative": logits} (one seed); panels follow the rows, warm-up first."""
    names = display_names(results)
    order = [results["reference_warmup"], *(row["setting"] for row in results["rows"])]
    panels = {names[setting]: samples[setting] for setting in dict.fromkeys(order)}
    return logit_distribution_figure(
        panels, title=f"{results['title']}: test logits of positives vs top-K sampled negatives "
                      f"(seed {results['seeds'][0]})")
