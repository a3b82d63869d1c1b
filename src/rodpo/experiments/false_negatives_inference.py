"""The false-negative study's inference: every rate with a CI over replicates, every comparison
with a seed-level test, multiplicity over the study's families (`rodpo.evaluation.inference`).

The replicate is one generated world x one training seed: worlds differ in their truth and
choices, seeds in the model's init, shuffling and draws. Within a replicate, users are the
within-replicate noise (the two-level bootstrap resamples them). A comparison pairs two variants
on the same replicates and users: the false-negative rate of one pool against another's on the
same world and warm-up, or a stage-2 model's truth-NDCG against the warm-up's or the λ = 0
control's. The declared `primary` comparisons are one family, every other comparison another;
`p_holm` and `q_bh` adjust `p_seed` within each.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rodpo.evaluation.inference import adjust_family, describe, seed_level_comparison
from rodpo.experiments.false_negatives_judge import FN_DEFINITIONS, PRIMARY_DEFINITION

PARAMS = "false_negatives"  # the parameter block (conf/base/parameters_false_negatives.yml), named in errors
WARMUP, CONTROL, DPO = "warmup", "control", "dpo"  # row kinds
REPORT_K = 10  # NDCG@10 in the tables, against the observed item and against the truth
OBSERVED_NDCG = f"ndcg@{REPORT_K}_observed"
TRUTH_NDCG = f"ndcg@{REPORT_K}_truth"                       # gains on still-choosable items only (primary reading)
TRUTH_NDCG_ALL_ITEMS = f"ndcg@{REPORT_K}_truth_all_items"   # gains on every item, earlier choices included
QUALITY_MEASURES = (OBSERVED_NDCG, TRUTH_NDCG, TRUTH_NDCG_ALL_ITEMS)
MEASURES = FN_DEFINITIONS + QUALITY_MEASURES
PRIMARY_FAMILY, SECONDARY_FAMILY = "primary", "secondary"
REPLICATE = "generated world x training seed"


def variant_id(row: Mapping[str, Any]) -> str:
    """The variant's name in comparisons: warmup, control, argmax, random or topk_uniform@<K share>."""
    if row["kind"] in (WARMUP, CONTROL):
        return row["kind"]
    return f"{row['strategy']}@{row['k_share']:g}" if row["k_share"] is not None else row["strategy"]


def _pools(params: Any) -> list[dict[str, Any]]:
    """The DPO pools of the study in the ordering's order: top-K by share, argmax, random."""
    pools = [{"strategy": "topk_uniform", "k_share": share} for share in params.k_shares
             if "topk_uniform" in params.strategies]
    return pools + [{"strategy": name, "k_share": None} for name in ("argmax", "random") if name in params.strategies]


def _dpo(pool: Mapping[str, Any], objective: str, exclusion: str) -> dict[str, Any]:
    return {"kind": DPO, **pool, "objective": objective, "exclusion": exclusion}


def planned_comparisons(params: Any) -> list[dict[str, Any]]:
    """Every comparison of the study (b - a), named without its setting (exposure, objective,
    exclusion) so that one name in `primary` covers every setting:
      "<definition>: <pool b> vs <pool a>"          FN rate, pools on the same exclusion;
      "<definition>: <pool>, earlier_items vs none"  FN rate, with the exclusion vs without;
      "ndcg@10_truth: <variant> vs warmup|control"   truth-NDCG of a stage-2 variant."""
    plan = []
    pools = _pools(params)
    top_k = [pool for pool in pools if pool["strategy"] == "topk_uniform"]
    pairs = [(b, a) for b in top_k for a in pools if a["strategy"] == "argmax"]
    pairs += [(b, a) for b in pools if b["strategy"] == "random" for a in pools if a["strategy"] != "random"]
    for exposure in params.exposures:
        for objective in params.objectives:
            setting = {"exposure": exposure, "objective": objective}
            for exclusion in params.exclusions:
                for b, a in pairs:
                    b_row, a_row = _dpo(b, objective, exclusion), _dpo(a, objective, exclusion)
                    plan.append({"name": f"{PRIMARY_DEFINITION}: {variant_id(b_row)} vs {variant_id(a_row)}",
                                 "measure": PRIMARY_DEFINITION, **setting, "exclusion": exclusion,
                                 "b": b_row, "a": a_row})
            if len(params.exclusions) > 1:
                first = params.exclusions[0]
                for exclusion in params.exclusions[1:]:
                    for pool in pools:
                        b_row, a_row = _dpo(pool, objective, exclusion), _dpo(pool, objective, first)
                        plan.append({"name": f"{PRIMARY_DEFINITION}: {variant_id(b_row)}, {exclusion} vs {first}",
                                     "measure": PRIMARY_DEFINITION, **setting,
                                     "exclusion": f"{exclusion} vs {first}", "b": b_row, "a": a_row})
            baselines = [{"kind": WARMUP}] + ([{"kind": CONTROL}] if params.lambda_zero_control else [])
            for exclusion in params.exclusions:
                for pool in pools:
                    b_row = _dpo(pool, objective, exclusion)
                    for a_row in baselines:
                        plan.append({"name": f"{TRUTH_NDCG}: {variant_id(b_row)} vs {a_row['kind']}",
                                     "measure": TRUTH_NDCG, **setting, "exclusion": exclusion,
                                     "b": b_row, "a": a_row})
    return plan


def check_primary(params: Any) -> None:
    """Every name in `primary` must be a planned comparison; an error lists them otherwise."""
    names = list(dict.fromkeys(comparison["name"] for comparison in planned_comparisons(params)))
    for index, name in enumerate(params.primary):
        if name not in names:
            raise ValueError(f"{PARAMS}.primary[{index}]={name!r}: not a comparison of this study; "
                             f"use one of {names}.")


def _matches(row: Mapping[str, Any], selector: Mapping[str, Any]) -> bool:
    return all(row.get(key) == value for key, value in selector.items())


def _replicates(rows: Sequence[Mapping[str, Any]], exposure: float, selector: Mapping[str, Any]) -> dict:
    """(world_seed, seed) -> the row of this variant at this exposure."""
    return {(row["world_seed"], row["seed"]): row for row in rows
            if row["exposure"] == exposure and _matches(row, selector)}


def _group_key(row: Mapping[str, Any]) -> tuple:
    return (row["exposure"], row["kind"], row["strategy"], row["k_share"], row["objective"], row["exclusion"])


def levels(rows: Sequence[Mapping[str, Any]], *, confidence: float, n_resamples: int) -> list[dict[str, Any]]:
    """Per variant, exposure and measure: the mean over replicates and its two-level bootstrap CI
    (`seed_level_comparison` against 0; its p is not a test of anything and is not kept)."""
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault(_group_key(row), []).append(row)
    result = []
    for group in groups.values():
        group = sorted(group, key=lambda row: (row["world_seed"], row["seed"]))
        first = group[0]
        for measure in MEASURES:
            if measure not in first["per_user"]:
                continue  # a warm-up draws no losers
            values = [row["per_user"][measure] for row in group]
            test = seed_level_comparison([np.zeros_like(v) for v in values], values, confidence=confidence,
                                         n_resamples=n_resamples)
            result.append({**{key: first[key] for key in ("exposure", "kind", "strategy", "k_share", "k",
                                                           "objective", "exclusion")},
                           "variant": variant_id(first), "measure": measure, "n_replicates": len(group),
                           "mean": test["mean_diff_seed"], "sd_replicates": test["sd_diff_seed"],
                           "per_replicate": test["per_seed_diff"], "ci95_seed": test["ci95_seed"],
                           "seed_test_unavailable": test["seed_test_unavailable"]})
    return result


def comparisons(rows: Sequence[Mapping[str, Any]], params: Any) -> list[dict[str, Any]]:
    """Every planned comparison that has rows, through `seed_level_comparison`, with p_holm and q_bh
    over the study's whole family, and p_holm_primary / q_bh_primary over the declared primary ones."""
    primary = set(params.primary)
    result = []
    for plan in planned_comparisons(params):
        b_rows = _replicates(rows, plan["exposure"], plan["b"])
        a_rows = _replicates(rows, plan["exposure"], plan["a"])
        shared = sorted(set(a_rows) & set(b_rows))
        if not shared:
            continue
        per_b = [b_rows[key]["per_user"][plan["measure"]] for key in shared]
        per_a = [a_rows[key]["per_user"][plan["measure"]] for key in shared]
        test = seed_level_comparison(per_a, per_b, confidence=params.confidence, n_resamples=params.n_resamples)
        result.append({key: plan[key] for key in ("name", "measure", "exposure", "objective", "exclusion")}
                      | {"b": variant_id(plan["b"]), "a": variant_id(plan["a"]),
                         "family": PRIMARY_FAMILY if plan["name"] in primary else SECONDARY_FAMILY,
                         "replicates": [list(key) for key in shared],
                         "mean_b": float(np.mean([v.mean() for v in per_b])),
                         "mean_a": float(np.mean([v.mean() for v in per_a])), **test})
    adjust_family(result)  # one family: every comparison of the study
    adjust_family([test for test in result if test["family"] == PRIMARY_FAMILY], suffix="_primary")
    return result


def significance(params: Any) -> dict[str, Any]:
    """The methods and the declared primary comparisons, for the report."""
    return {**describe(params.confidence, params.n_resamples), "unit_of_replication": REPLICATE,
            "primary": list(params.primary),
            "families": f"p_holm and q_bh adjust p_seed over every comparison of the study; p_holm_primary and "
                        f"q_bh_primary over the {PRIMARY_FAMILY} ones alone (named in {PARAMS}.primary, at every "
                        f"exposure and exclusion); {SECONDARY_FAMILY}: every other comparison.",
            "per_user_false_negatives": "a user's false negatives in the last stage-2 epoch over the mean number "
                                        "of pairs per user, so the mean over users is the epoch's pooled rate"}
