"""A study's markdown table (paper layout, mean ± std, significance markers), its figure and its
Figure-4 logit panels, all built from the results of ``aggregate.summarise_study``."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from rodpo.evaluation.inference import MIN_SEEDS
from rodpo.evaluation.reports import MISSING, logit_distribution_figure, metric_label
from rodpo.experiments.aggregate import MARKERS, VS_CONTINUED, VS_CONTROL, VS_REFERENCE, VS_WARMUP
from rodpo.experiments.controls import CONTINUED_WARMUP, CONTROL_LABELS, LAMBDA_ZERO

REFERENCE_NAME = "RoDPO"
WARMUP_NAME = "Warm-up (SFT)"
CONTROL_NAME = CONTROL_LABELS[LAMBDA_ZERO]
METRIC_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:red", "tab:brown", "tab:pink", "tab:olive")
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
    for row in results["rows"]:
        controls = row.get("controls") or ({LAMBDA_ZERO: row["control"]} if row.get("control") else {})
        for kind, setting in controls.items():
            if kind in CONTROL_LABELS and setting not in names:
                own = row["warmup"] == results["reference_warmup"]
                label = CONTROL_LABELS[kind]
                names[setting] = label if own else f"{label} of {names.get(row['warmup'], row['warmup'])}"
    reference = results.get("reference_controls") or (
        {LAMBDA_ZERO: results["reference_control"]} if results.get("reference_control") else {})
    for kind, setting in reference.items():
        names.setdefault(setting, CONTROL_LABELS.get(kind, f"`{setting}`"))
    for setting in results["settings"]:
        names.setdefault(setting, f"Warm-up `{setting}`" if setting.startswith("warmup") else f"`{setting}`")
    return names


def _cell(mean: float | None, std: float | None, markers: str, decimals: int, bold: bool = False) -> str:
    if mean is None or not math.isfinite(mean):
        return MISSING
    text = f"{mean:.{decimals}f} ± {std:.{decimals}f}"
    text = f"**{text}**" if bold else text
    return f"{text} {markers}" if markers else text


def _row_cell(row: Mapping[str, Any], metric: str, decimals: int) -> str:
    return _cell(row["mean"][metric], row["std"][metric], row["markers"][metric], decimals,
                 bool(row.get("bold", {}).get(metric)))


def _p(value: float | None, decimals: int) -> str:
    return MISSING if value is None else f"{value:.{decimals}f}"


def _interval(bounds: list[float] | None, decimals: int) -> str:
    return MISSING if bounds is None else f"[{bounds[0]:+.{decimals}f}, {bounds[1]:+.{decimals}f}]"


def _table(header: list[str], body: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([" --- "] + [" ---: "] * (len(header) - 1)) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in body]


def _context_rows(results: Mapping[str, Any], warmup_label: str, decimals: int) -> list[list[str]]:
    """The reference's warm-up and controls as italic context rows, unless a row shows them."""
    shown = {row["setting"] for row in results["rows"]}
    controls = results.get("reference_controls") or {LAMBDA_ZERO: results.get("reference_control")}
    context = [(results["reference_warmup"], warmup_label),
               *((setting, CONTROL_LABELS[kind]) for kind, setting in controls.items() if kind in CONTROL_LABELS)]
    lines = []
    for setting, label in context:
        if setting and setting not in shown:
            summary = results["settings"][setting]
            lines.append([f"_{label}_", *(_cell(summary["mean"][m], summary["std"][m], "", decimals)
                                          for m in results["metrics"])])
    return lines


def _legend(results: Mapping[str, Any], names: Mapping[str, str]) -> str:
    significance = results["significance"]
    alpha, confidence = significance["alpha"], significance["confidence"]
    seeds = results["seeds"]
    unavailable = len(seeds) < significance.get("min_seeds", MIN_SEEDS)
    return (
        f"{MARKERS[VS_WARMUP]} differs significantly from the row's own warm-up model; "
        f"{MARKERS[VS_CONTROL]} from its {CONTROL_NAME}: same warm-up and stage-2 budget, preference term "
        f"off (the preference term's effect beyond training longer); "
        f"{MARKERS[VS_CONTINUED]} from its {CONTROL_LABELS[CONTINUED_WARMUP]}: the same budget with the warm-up's "
        f"loss, dropout and optimizer (beyond training the warm-up longer); "
        f"{MARKERS[VS_REFERENCE]} differs significantly from {names[results['reference']]} "
        f"(the base setting, `{results['reference']}`). **Significant** means Holm-adjusted p < {alpha:g} over "
        f"all {len(results['tests'])} tests of this report, where each test is across the trained seeds: the "
        f"per-seed differences (each seed's two models on the same {results['users']:,} test users) in a "
        f"paired t-test (p_seed); bold: better than its warm-up and every control, all significant. "
        + ("**With fewer than 3 seeds no seed-level test is available: no markers, no bold.** " if unavailable else "")
        + f"Full ranking over all items; mean ± sample std over seeds {', '.join(str(s) for s in seeds)}. "
        f"The tests below give each difference, its {confidence:.0%} two-level bootstrap CI (seeds, then users), "
        f"p_seed, the exact sign-flip p over seeds, Holm p and Benjamini-Hochberg q; the last p column is the "
        f"users-only test (users, models fixed), secondary: it ignores training randomness."
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
            body = [[str(row["value"]), *(_row_cell(row, m, decimals) for m in metrics)]
                    for row in results["rows"] if row["sweep"] == sweep]
            lines += _table([sweep, *header_metrics], body + _context_rows(results, WARMUP_NAME, decimals)) + [""]
    else:
        body = [[row["label"], *(_row_cell(row, m, decimals) for m in metrics)] for row in results["rows"]]
        context = _context_rows(results, f"{WARMUP_NAME} of {names[results['reference']]}", decimals)
        lines += _table(["Variant", *header_metrics], body + context) + [""]
    lines += [_legend(results, names), ""] + _primary_lines(results, names, decimals) + [
        "### Paired tests", "",
        "Δ = mean over seeds of the per-seed mean over users of (b − a): positive favours the DPO model (†, §) "
        "or RoDPO (‡). \"(masked)\": the user's history left out of the ranking. \"n/a\": fewer than 3 seeds.", ""]
    body, line_of = [], {}
    for test in results["tests"]:
        marker = MARKERS.get(test["kind"], "*") if test["significant"] else ""
        pair = (test["a"], test["b"], test["metric"])
        if pair in line_of:  # e.g. RoDPO vs its warm-up is both † and ‡ in Table 3: one line, both markers
            body[line_of[pair]][-1] += marker
            continue
        line_of[pair] = len(body)
        body.append([f"{names[test['b']]} vs {names[test['a']]}" + (" (primary)" if test.get("primary") else ""),
                     metric_label(test["metric"]), f"{test['mean_diff']:+.{decimals}f}",
                     _interval(test.get("ci95_seed"), decimals), _p(test.get("p_seed"), p_decimals),
                     _p(test.get("p_signflip"), p_decimals), _p(test.get("p_holm"), p_decimals),
                     _p(test.get("q_bh"), p_decimals), _p(test.get("p_users"), p_decimals), marker])
    confidence = f"{results['significance']['confidence']:.0%}"
    lines += _table(["b vs a", "Metric", "Δ", f"{confidence} CI (seeds)", "p_seed", "p sign-flip", "p Holm", "q BH",
                     "p (users, models fixed)", ""], body)
    return "\n".join(lines + _training_lines(results, names)) + "\n"


def _primary_lines(results: Mapping[str, Any], names: Mapping[str, str], decimals: int) -> list[str]:
    """The declared primary comparisons and their verdicts, before everything else."""
    if not results.get("primary"):
        return []
    lines = ["### Primary comparisons (declared before the run)", ""]
    for test in results["primary"]:
        lines.append(f"- {names[test['b']]} vs {names[test['a']]}, {metric_label(test['metric'])}: "
                     f"Δ = {test['mean_diff']:+.{decimals}f}, {results['significance']['confidence']:.0%} CI "
                     f"{_interval(test.get('ci95_seed'), decimals)}: {test['verdict']}.")
    return lines + [""]


def _mean_of(values: list[Any]) -> str:
    numbers = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return f"{sum(numbers) / len(numbers):.3f}" if numbers else MISSING


def _training_lines(results: Mapping[str, Any], names: Mapping[str, str]) -> list[str]:
    """Per setting: epochs run and best epoch per seed, whether the validation peak was passed, and
    the stage-2 diagnostics at the best epoch (means over seeds): why a row gains or does not."""
    trained = {name: s["training"] for name, s in results["settings"].items() if s.get("training")}
    if not trained:
        return []
    body = []
    for name, per_seed in trained.items():
        runs = list(per_seed.values())
        body.append([names[name], ", ".join(str(r["epochs_run"]) for r in runs),
                     ", ".join(str(r["best_epoch"]) for r in runs),
                     f"{sum(bool(r['passed_peak']) for r in runs)}/{len(runs)}",
                     f"{_mean_of([r.get('start_valid') for r in runs])} → {_mean_of([r['best_valid'] for r in runs])}",
                     *(_mean_of([r.get(key) for r in runs]) for key in ("dpo_loss", "rewards_accuracy",
                                                                        "rewards_chosen", "score_margin"))])
    return ["", "### Training", "",
            "Epochs run and best epoch per seed (the model kept is the best epoch's; a stage-2 best epoch of "
            "0: no epoch beat the warm-up on validation, so the stage kept the warm-up's weights); \"peak "
            "passed\": seeds whose best epoch came before their last (trained to the validation peak). Valid "
            "NDCG@10 from the "
            "stage's start (stage 2: the warm-up model) to its best epoch; the stage-2 diagnostics at the "
            "best epoch, means over seeds: the preference loss, TRL's reward accuracy and chosen reward "
            "β(s − s_ref)(y_w) (below 0: the chosen item's score drifted down), and the policy's score "
            "margin s(y_w) − s(y_l).", "",
            *_table(["Setting", "Epochs run", "Best epoch", "Peak passed", "Valid NDCG@10", "Pref. loss",
                     "Reward acc.", "Chosen reward", "Score margin"], body)]


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
