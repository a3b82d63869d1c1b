"""The false-negatives study's report: the declared primary comparisons, one table row per variant
(mean and 95% CI over replicates: generated world x training seed), every other comparison, the
worlds, and the figure (the false-negative ordering of the pools vs the K share, per exclusion)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from matplotlib.figure import Figure

from rodpo.evaluation.reports import MISSING
from rodpo.experiments.false_negatives import variant_label
from rodpo.experiments.false_negatives_inference import (
    CONTROL,
    DPO,
    OBSERVED_NDCG,
    PRIMARY_FAMILY,
    REPORT_K,
    SECONDARY_FAMILY,
    TRUTH_NDCG,
    TRUTH_NDCG_ALL_ITEMS,
    WARMUP,
)
from rodpo.experiments.false_negatives_judge import (
    ABOVE,
    ALL_ITEMS_DEFINITIONS,
    ALL_ITEMS_LABEL,
    CHOOSABLE_DEFINITIONS,
    PRIMARY_DEFINITION,
)

ALPHA = 0.05  # bold: p_holm below it; †: only q_bh below it
PANEL_SIZE = (4.6, 3.6)
SHORT = {"choosable_above_chosen": "above chosen", "choosable_true_top": "true top",
         "choosable_unobserved_choice": "unobserved choice", "choosable_observed_choice": "observed choice",
         "above_chosen": "above chosen", "true_top": "true top", "unobserved_choice": "unobserved choice",
         "observed_choice": "observed choice"}


def _variant_key(level: Mapping[str, Any]) -> tuple:
    return (level["exposure"], level["exclusion"], level["kind"], level["strategy"], level["k_share"],
            level["objective"])


def variant_levels(results: Mapping[str, Any]) -> dict[tuple, dict[str, Any]]:
    """(exposure, exclusion, kind, strategy, K share, objective) -> the variant's fields and its
    levels by measure, in the study's row order."""
    variants: dict[tuple, dict[str, Any]] = {}
    for level in results["levels"]:
        entry = variants.setdefault(_variant_key(level), {**level, "measures": {}})
        entry["measures"][level["measure"]] = level
    order = {WARMUP: 0, CONTROL: 1, DPO: 2}
    exclusions = list(results["settings"]["exclusions"])
    return dict(sorted(variants.items(), key=lambda item: (
        item[0][0], order[item[0][2]], exclusions.index(item[0][1]) if item[0][1] in exclusions else -1)))


def _cell(level: Mapping[str, Any] | None, with_ci: bool = True) -> str:
    if level is None or not math.isfinite(level["mean"]):
        return MISSING
    if with_ci and level["ci95_seed"] is not None:
        low, high = level["ci95_seed"]
        return f"{level['mean']:.3f} [{low:.3f}, {high:.3f}]"
    return f"{level['mean']:.3f}"


def _p(value: float | None) -> str:
    if value is None:
        return MISSING
    return f"{value:.2g}" if value >= 0.001 else "< 0.001"


def _comparison_rows(tests: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = ["| Comparison (b vs a) | Exposure | Exclusion | b − a | 95% CI | p_seed | p_signflip | p_holm | q_bh | "
             "Replicates |", "| --- | ---: | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    for test in tests:
        significant = test["p_holm"] is not None and test["p_holm"] < ALPHA
        marker = "" if significant or test["q_bh"] is None or test["q_bh"] >= ALPHA else " †"
        diff = f"{test['mean_diff_seed']:+.3f}"
        ci = MISSING if test["ci95_seed"] is None else f"[{test['ci95_seed'][0]:+.3f}, {test['ci95_seed'][1]:+.3f}]"
        name = f"**{test['name']}**" if significant else test["name"] + marker
        lines.append(f"| {name} | {test['exposure']:g} | {test['exclusion']} | {diff} | {ci} | {_p(test['p_seed'])} | "
                     f"{_p(test['p_signflip'])} | {_p(test['p_holm'])} | {_p(test['q_bh'])} | {test['n_seeds']} |")
    unavailable = {test["seed_test_unavailable"] for test in tests if test["seed_test_unavailable"]}
    return lines + [f"\nSeed-level test {reason}." for reason in sorted(unavailable)]


def _main_table(results: Mapping[str, Any]) -> list[str]:
    header = ["Exposure", "Pool exclusion", "Variant", "Objective",
              *(f"FN {SHORT[name]}" for name in CHOOSABLE_DEFINITIONS),
              *(f"FN {SHORT[name]} ({ALL_ITEMS_LABEL})" for name in ALL_ITEMS_DEFINITIONS),
              f"FN {SHORT[PRIMARY_DEFINITION]}, per epoch", f"Test NDCG@{REPORT_K} (observed)",
              f"NDCG@{REPORT_K} vs truth", f"NDCG@{REPORT_K} vs truth ({ALL_ITEMS_LABEL})"]
    per_epoch = _per_epoch(results["rows"])
    lines = ["| " + " | ".join(header) + " |", "| --- | --- | --- | --- |" + " ---: |" * (len(header) - 4)]
    for key, variant in variant_levels(results).items():
        measures = variant["measures"]
        label = variant_label(variant)
        label = f"_{label}_" if variant["kind"] in (WARMUP, CONTROL) else label
        exclusion = results["exclusions"][variant["exclusion"]]["label"] if variant["kind"] == DPO else MISSING
        objective = variant["objective"] if variant["kind"] == DPO else MISSING  # the control's is weighted 0
        lines.append("| " + " | ".join([
            f"{variant['exposure']:g}", exclusion, label, objective,
            *(_cell(measures.get(name)) for name in CHOOSABLE_DEFINITIONS),
            *(_cell(measures.get(name), with_ci=False) for name in ALL_ITEMS_DEFINITIONS),
            " → ".join(f"{v:.3f}" for v in per_epoch.get(key, [])) or MISSING,
            _cell(measures.get(OBSERVED_NDCG)), _cell(measures.get(TRUTH_NDCG)),
            _cell(measures.get(TRUTH_NDCG_ALL_ITEMS), with_ci=False)]) + " |")
    return lines


def _per_epoch(rows: Sequence[Mapping[str, Any]]) -> dict[tuple, list[float]]:
    """Variant key -> the primary definition's rate per stage-2 epoch, mean over replicates."""
    groups: dict[tuple, list[list[float]]] = {}
    for row in rows:
        if row["epochs"]:
            groups.setdefault(_variant_key(row), []).append([epoch[PRIMARY_DEFINITION] for epoch in row["epochs"]])
    return {key: [sum(values) / len(values) for values in zip(*runs)] for key, runs in groups.items()}


def false_negatives_markdown(results: Mapping[str, Any]) -> str:
    """Primary comparisons, the variants' rates and quality with CIs, every other comparison, the worlds."""
    settings, definitions, significance = results["settings"], results["definitions"], results["significance"]
    generator = settings["generator"]
    tests = results["comparisons"]
    primary = [test for test in tests if test["family"] == PRIMARY_FAMILY]
    k_values = ", ".join(f"{float(share):.2%} → K = {k}" for share, k in results["k_values"].items())
    exclusions = "; ".join(f"`{name}`: {entry['label']}" for name, entry in results["exclusions"].items())
    n_replicates = len(settings["world_seeds"]) * len(settings["seeds"])
    exposures = ", ".join(f"{e:g}" for e in settings["exposures"])
    lines = [
        f"## {results['title']}", "",
        f"Generated worlds (`rodpo.data.known_preferences`): {generator['n_users']} users, {generator['n_items']} "
        f"items, temperature {generator['temperature']}, exposure bias `{generator['exposure_bias']}`; world seeds "
        f"{', '.join(map(str, settings['world_seeds']))} at each exposure ({exposures}); "
        f"training seeds {', '.join(map(str, settings['seeds']))}: {n_replicates} replicates (world × seed) per "
        f"setting. K shares of the catalog: {k_values}. Pool exclusions: {exclusions}. ID-only model; warm-up (CE) "
        f"at most {settings['warmup_epochs']} epochs (patience {settings['patience']}), stage 2 "
        f"{settings['dpo_epochs']} epoch(s) (β = {settings['beta']}, λ = {settings['lambda_dpo']}, M = "
        f"{settings['n_negatives']}). Study time {results['seconds']:.0f} s.", "",
        "### Primary comparisons (declared in `false_negatives.primary`)", ""]
    lines += _comparison_rows(primary) if primary else ["None declared."]
    lines += ["", "### False negatives among sampled losers and quality, mean [95% CI over replicates]", "",
              *_main_table(results), "",
              "FN columns: share of the sampled losers y_l of the **last** stage-2 epoch that are false negatives in "
              "the true context (user, the step y_w was chosen at). Primary (first four): only items the user could "
              "still choose at that step count (the generator never repeats a choice, so earlier choices are true "
              f"negatives): above chosen = {definitions[PRIMARY_DEFINITION]}; true top = "
              f"{definitions['choosable_true_top']}; unobserved choice = {definitions['choosable_unobserved_choice']}; "
              f"observed choice = {definitions['choosable_observed_choice']}. Secondary, labelled '{ALL_ITEMS_LABEL}': "
              "the same readings over every item (the study's first definitions; mean only, CIs in the json). The "
              "λ = 0 control's losers are drawn and judged but never trained on. Metrics are of the model `train` "
              "returns (best valid NDCG@10 epoch). Observed: full ranking of the held-out test item (history not "
              f"masked). Truth: NDCG@{REPORT_K} of the same list graded by the true choice probabilities at the test "
              "step, only still-choosable items earning a gain (secondary: every item).", "",
              f"### Every other comparison (family `{SECONDARY_FAMILY}`)", "",
              *_comparison_rows([test for test in tests if test["family"] == SECONDARY_FAMILY]), "",
              f"Tests over replicates ({significance['unit_of_replication']}): b − a is the mean over replicates of "
              "each replicate's mean user difference; p_seed: " + significance["p_seed"] + "; 95% CI: "
              + significance["ci95_seed"] + ". " + significance["families"] + f" **Bold**: p_holm < {ALPHA}; †: "
              f"q_bh < {ALPHA} only. A user's false negatives: {significance['per_user_false_negatives']}.", "",
              "### Worlds and the random pool's expectation", "",
              *_worlds_table(results)]
    return "\n".join(lines) + "\n"


def _worlds_table(results: Mapping[str, Any]) -> list[str]:
    exclusions = list(results["exclusions"])
    header = ["Exposure", "World seed", "Observation rate", "Users", "Train targets",
              *(f"E[FN {SHORT[PRIMARY_DEFINITION]}] random, {name}" for name in exclusions),
              *(f"E[FN {SHORT[ABOVE]}] random ({ALL_ITEMS_LABEL}), {name}" for name in exclusions)]
    lines = ["| " + " | ".join(header) + " |", "|" + " ---: |" * len(header)]
    for world in results["worlds"]:
        expected = world["random_expectation"]
        cells = [f"{expected[name][key]:.3f} (se {expected[name][f'{key}_se']:.3f})"
                 for key in (PRIMARY_DEFINITION, ABOVE) for name in exclusions]
        lines.append(f"| {world['exposure']:g} | {world['world_seed']} | {world['observation_rate']:.3f} | "
                     f"{world['n_users']} | {world['n_train_targets']} | " + " | ".join(cells) + " |")
    return lines + ["", "A random loser is uniform over its pool (every real item but y_w, and the excluded items), "
                    "so its expected rate is the mean share of false-negative items in the pool per training target "
                    "(se: of one epoch's draws)."]


def false_negatives_figure(results: Mapping[str, Any]) -> Figure:
    """One panel per pool exclusion under the primary (choosable) definition, and one under the
    secondary all-items definition without exclusion: FN rate vs K share (top-K, error bars = 95% CI
    over replicates), argmax dashed and random dotted with their CI bands, one colour per exposure."""
    exclusions = list(results["exclusions"])
    panels = [(PRIMARY_DEFINITION, name) for name in exclusions] + [(ABOVE, exclusions[0])]
    objective = results["settings"]["objectives"][0]
    variants = [v for v in variant_levels(results).values() if v["kind"] == DPO and v["objective"] == objective]
    width, height = PANEL_SIZE
    figure = Figure(figsize=(len(panels) * width, height), layout="constrained")
    axes = figure.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    exposures = sorted({v["exposure"] for v in variants})
    colors = {exposure: f"C{index}" for index, exposure in enumerate(exposures)}
    shares = sorted({v["k_share"] for v in variants if v["k_share"] is not None})
    for axis, (definition, exclusion) in zip(axes, panels):
        for exposure in exposures:
            rows = [v for v in variants if v["exposure"] == exposure and v["exclusion"] == exclusion]
            top_k = sorted((v for v in rows if v["strategy"] == "topk_uniform"), key=lambda v: v["k_share"])
            if top_k:
                means, errors = _errorbars([v["measures"][definition] for v in top_k])
                axis.errorbar([v["k_share"] for v in top_k], means, yerr=errors, marker="o", capsize=3,
                              color=colors[exposure], label=f"top-K, exposure {exposure:g}")
            for strategy, style in (("argmax", "--"), ("random", ":")):
                for v in rows:
                    if v["strategy"] == strategy:
                        level = v["measures"][definition]
                        axis.axhline(level["mean"], color=colors[exposure], linestyle=style, linewidth=1,
                                     label=f"{strategy}, exposure {exposure:g}")
                        if level["ci95_seed"] is not None:
                            axis.axhspan(*level["ci95_seed"], color=colors[exposure], alpha=0.12, linewidth=0)
        if shares:
            axis.set_xscale("log")
            axis.set_xticks(shares, [f"{share:.2%}" for share in shares])
            axis.set_xticks([], minor=True)  # no log-scale minor labels between the shares
        axis.set_xlabel("K share of the catalog (top-K pool)")
        reading = "choosable items" if definition == PRIMARY_DEFINITION else ALL_ITEMS_LABEL
        axis.set_title(f"{results['exclusions'][exclusion]['label']};\n{reading}", fontsize="small")
    axes[0].set_ylabel("FN rate of sampled losers (above chosen)")
    axes[0].legend(fontsize="x-small")
    figure.suptitle(f"Sampled losers truly above the chosen item (objective {objective}, last stage-2 epoch; "
                    "error bars, bands: 95% CI over worlds × seeds)", fontsize="medium")
    return figure


def _errorbars(levels: Sequence[Mapping[str, Any]]) -> tuple[list[float], list[list[float]] | None]:
    """Means and asymmetric (below, above) errors from the CIs; None when any CI is unavailable."""
    means = [level["mean"] for level in levels]
    if any(level["ci95_seed"] is None for level in levels):
        return means, None
    return means, [[max(m - level["ci95_seed"][0], 0.0) for m, level in zip(means, levels)],
                   [max(level["ci95_seed"][1] - m, 0.0) for m, level in zip(means, levels)]]
