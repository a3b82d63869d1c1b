"""The false-negatives study's report: one table row per variant and exposure (mean +- std over
seeds) and the figure (false-negative rate vs K, and vs the observation rate, per strategy)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from rodpo.evaluation.reports import MISSING
from rodpo.experiments.false_negatives import (
    ABOVE,
    CONTROL,
    DPO,
    FN_DEFINITIONS,
    OBSERVED,
    REPORT_K,
    TRUE_TOP,
    UNOBSERVED,
    WARMUP,
    variant_label,
)

FIGURE_DEFINITION = ABOVE     # the definition the figure plots
PANEL_SIZE = (5.0, 3.8)


def summary_rows(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per (exposure, variant, objective), mean and std over seeds of the last epoch's
    false-negative rates and of the final metrics; what the table and the figure both show."""
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for row in results["rows"]:
        groups.setdefault((row["exposure"], row["kind"], row["strategy"], row["k"], row["objective"]), []).append(row)
    observation = {world["exposure"]: world["observation_rate"] for world in results["worlds"]}
    summaries = []
    for (exposure, kind, strategy, k, objective), rows in groups.items():
        values: dict[str, list[float]] = {}
        for row in rows:
            last = row["epochs"][-1] if row["epochs"] else {}
            for name in FN_DEFINITIONS:
                values.setdefault(name, []).append(last.get(name, math.nan))
            for name in (f"ndcg@{REPORT_K}_observed", f"ndcg@{REPORT_K}_truth"):
                values.setdefault(name, []).append(row[name])
        n_epochs = max(len(row["epochs"]) for row in rows)
        per_epoch = [float(np.mean([row["epochs"][e][ABOVE] for row in rows if len(row["epochs"]) > e]))
                     for e in range(n_epochs)]
        summaries.append({
            "exposure": exposure, "observation_rate": observation[exposure], "kind": kind, "strategy": strategy,
            "k": k, "objective": objective, "label": variant_label(rows[0]), "n_seeds": len(rows),
            "mean": {name: float(np.mean(v)) for name, v in values.items()},
            "std": {name: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for name, v in values.items()},
            f"{ABOVE}_per_epoch": per_epoch,
        })
    return summaries


def _cell(summary: Mapping[str, Any], name: str) -> str:
    mean, std = summary["mean"][name], summary["std"][name]
    if not math.isfinite(mean):
        return MISSING
    return f"{mean:.3f} ± {std:.3f}" if summary["n_seeds"] > 1 else f"{mean:.3f}"


def false_negatives_markdown(results: Mapping[str, Any]) -> str:
    """One row per variant per exposure (warm-up and lambda = 0 control marked), then the worlds."""
    settings, definitions = results["settings"], results["definitions"]
    header = ["Exposure", "Variant", "Objective", "FN above chosen", f"FN in true top {settings['top_fraction']:.0%}",
              "FN unobserved choice", "FN observed choice", "FN above chosen, per epoch",
              f"Test NDCG@{REPORT_K} (observed)", f"NDCG@{REPORT_K} vs truth"]
    body = []
    for summary in summary_rows(results):
        label = summary["label"]
        label = f"_{label}_" if summary["kind"] in (WARMUP, CONTROL) else label
        objective = summary["objective"] if summary["kind"] == DPO else MISSING  # the control's is weighted 0
        body.append([f"{summary['exposure']:g}", label, objective,
                     *(_cell(summary, name) for name in FN_DEFINITIONS),
                     " → ".join(f"{v:.3f}" for v in summary[f"{ABOVE}_per_epoch"]) or MISSING,
                     _cell(summary, f"ndcg@{REPORT_K}_observed"), _cell(summary, f"ndcg@{REPORT_K}_truth")])
    generator = settings["generator"]
    seeds = settings["seeds"]
    lines = [f"## {results['title']}", "",
             f"Generated worlds (`rodpo.data.known_preferences`): {generator['n_users']} users, "
             f"{generator['n_items']} items, temperature {generator['temperature']}, generator seed "
             f"{generator['seed']}; one world per exposure. ID-only model; epochs: warm-up (CE) "
             f"{settings['warmup_epochs']}, stage 2 {settings['dpo_epochs']} (β = {settings['beta']}, "
             f"λ = {settings['lambda_dpo']}, M = {settings['n_negatives']}); seeds {', '.join(map(str, seeds))}"
             f"{' (mean ± std)' if len(seeds) > 1 else ''}. Study time {results['seconds']:.0f} s.", "",
             "| " + " | ".join(header) + " |", "| --- | --- | --- |" + " ---: |" * (len(header) - 3),
             *("| " + " | ".join(row) + " |" for row in body), "",
             "FN columns: share of the sampled losers y_l of the **last** stage-2 epoch that are false negatives, "
             f"in the true context (user, previous choice, observed or not): above chosen = {definitions[ABOVE]}; "
             f"true top = {definitions[TRUE_TOP]}; unobserved choice = {definitions[UNOBSERVED]}; observed "
             f"choice = {definitions[OBSERVED]} (the last two together: any true choice). The λ = 0 "
             "control's losers are drawn and scored but never trained on. Metrics are of the model `train` "
             "returns (best valid NDCG@10 epoch). Observed: full ranking of the held-out test item (history not "
             f"masked). Truth: NDCG@{REPORT_K} of the same top-{REPORT_K} list graded by the true choice "
             "probabilities at the test step (dense `score_next` scores over the small catalog).", "",
             "### Worlds and the random strategy's expectation", "",
             "| Exposure | Observation rate | Users | Train targets | E[FN] random: above chosen | "
             "true top | unobserved | observed |", "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for world in results["worlds"]:
        expected = world["random_expectation"]
        lines.append(f"| {world['exposure']:g} | {world['observation_rate']:.3f} | {world['n_users']} | "
                     f"{world['n_train_targets']} | "
                     + " | ".join(f"{expected[name]:.3f} (se {expected[f'{name}_se']:.3f})" for name in FN_DEFINITIONS)
                     + " |")
    lines += ["", "A random loser is uniform over the n_items − 1 non-positive items, so its expected rate is the "
              "mean share of false-negative items per training target (se: of one epoch's draws)."]
    return "\n".join(lines) + "\n"


def false_negatives_figure(results: Mapping[str, Any]) -> Figure:
    """(a) FN rate vs K per exposure (top-K uniform; argmax dashed, random dotted), (b) FN rate vs
    observation rate per strategy (the random expectation in grey). First objective, last epoch."""
    summaries = [s for s in summary_rows(results) if s["kind"] == DPO]
    objective = results["settings"]["objectives"][0]
    summaries = [s for s in summaries if s["objective"] == objective]
    width, height = PANEL_SIZE
    figure = Figure(figsize=(2 * width, height), layout="constrained")
    by_k, by_exposure = figure.subplots(1, 2)
    exposures = sorted({s["exposure"] for s in summaries})
    colors = {exposure: f"C{index}" for index, exposure in enumerate(exposures)}
    for exposure in exposures:
        rows = [s for s in summaries if s["exposure"] == exposure]
        top_k = sorted((s for s in rows if s["strategy"] == "topk_uniform"), key=lambda s: s["k"])
        if top_k:
            by_k.errorbar([s["k"] for s in top_k], [s["mean"][FIGURE_DEFINITION] for s in top_k],
                          yerr=[s["std"][FIGURE_DEFINITION] for s in top_k], marker="o", capsize=3,
                          color=colors[exposure], label=f"top-K, exposure {exposure:g}")
        for strategy, style in (("argmax", "--"), ("random", ":")):
            for s in rows:
                if s["strategy"] == strategy:
                    by_k.axhline(s["mean"][FIGURE_DEFINITION], color=colors[exposure], linestyle=style, linewidth=1,
                                 label=f"{strategy}, exposure {exposure:g}")
    if any(s["strategy"] == "topk_uniform" for s in summaries):
        by_k.set_xscale("log")
        ks = sorted({s["k"] for s in summaries if s["k"] is not None})
        by_k.set_xticks(ks, [str(k) for k in ks])
        by_k.set_xticks([], minor=True)  # no log-scale minor labels between the Ks
    by_k.set_xlabel("K (top-K pool size)")
    by_k.set_ylabel(f"FN rate of sampled losers ({FIGURE_DEFINITION.replace('_', ' ')})")
    by_k.set_title("(a) false negatives vs K")
    by_k.legend(fontsize="x-small")

    variants = list(dict.fromkeys((s["strategy"], s["k"]) for s in summaries))
    for index, (strategy, k) in enumerate(variants):
        rows = sorted((s for s in summaries if (s["strategy"], s["k"]) == (strategy, k)),
                      key=lambda s: s["observation_rate"])
        by_exposure.errorbar([s["observation_rate"] for s in rows], [s["mean"][FIGURE_DEFINITION] for s in rows],
                             yerr=[s["std"][FIGURE_DEFINITION] for s in rows], marker="o", capsize=3,
                             color=f"C{index}", label=variant_label({"kind": DPO, "strategy": strategy, "k": k}))
    worlds = sorted(results["worlds"], key=lambda w: w["observation_rate"])
    by_exposure.plot([w["observation_rate"] for w in worlds],
                     [w["random_expectation"][FIGURE_DEFINITION] for w in worlds], color="grey", linestyle="--",
                     linewidth=1, label="random: analytic expectation")
    by_exposure.set_xlabel("observation rate (observed / all choices)")
    by_exposure.set_ylabel(f"FN rate of sampled losers ({FIGURE_DEFINITION.replace('_', ' ')})")
    by_exposure.set_title("(b) false negatives vs observation rate")
    by_exposure.legend(fontsize="x-small")
    figure.suptitle(f"Sampled losers truly above the chosen item (objective {objective}, last stage-2 epoch)")
    return figure
