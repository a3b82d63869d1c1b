"""A study's results: mean and std over seeds, and paired significance tests over users.

Seeds: each setting is trained once per seed; a row reports the mean and sample std of the
seeds' test metrics. Pairing: two settings are compared on the same users. With several seeds,
each user's NDCG@5 / MRR@5 is first averaged over the seeds of a setting (the user is the unit
of the test, the seed average is that user's score), then the two settings are paired per user:
``rodpo.evaluation.statistics.paired_bootstrap`` gives the bootstrap CI of the mean difference
and a sign-flip permutation p-value. Two kinds of test per study, both two-sided and without a
multiple-comparison correction:
  vs_warmup:    a = the row's own warm-up, b = the row (DPO's effect; marker †)
  vs_reference: a = the row, b = RoDPO (the base setting) (marker ‡)
so a positive mean_diff always favours the DPO model / RoDPO.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl

from rodpo.metrics import per_user_metrics
from rodpo.evaluation.statistics import CI_METHOD, P_VALUE_METHOD, mean_std, paired_bootstrap
from rodpo.experiments.plan import Study, metric_cutoffs

VS_WARMUP = "vs_warmup"
VS_REFERENCE = "vs_reference"
MARKERS = {VS_WARMUP: "†", VS_REFERENCE: "‡"}
PAIRING = ("per-user test metric averaged over the seeds of each setting, users joined on user_id, "
           "then paired over users")


@dataclass(frozen=True)
class SignificanceParams:
    """Paired tests between settings (see the module docstring)."""

    alpha: float = 0.05          # two-sided; a marker means p < alpha
    confidence: float = 0.95     # bootstrap CI of the mean difference
    n_resamples: int = 10_000    # for both the bootstrap and the permutation test
    seed: int = 0


def _per_user(ranks: pl.DataFrame, metrics: Sequence[str]) -> pl.DataFrame:
    """(user_id, one column per metric) of one run's test ranks, sorted by user."""
    ranks = ranks.sort("user_id")
    values = per_user_metrics(ranks["test_rank"].to_numpy(), metric_cutoffs(metrics))
    return pl.DataFrame({"user_id": ranks["user_id"], **{m: values[m] for m in metrics}})


def seed_averaged_user_metrics(ranks_by_seed: Sequence[pl.DataFrame], metrics: Sequence[str]) -> pl.DataFrame:
    """(user_id, one column per metric): per-user test metrics averaged over seeds.

    ``ranks_by_seed`` are evaluation ``user_ranks`` frames (user_id, test_rank, ...), one per seed;
    they must cover the same users.
    """
    if not ranks_by_seed:
        raise ValueError("ranks_by_seed: expected one user_ranks frame per seed, got none.")
    frames = [_per_user(ranks, metrics) for ranks in ranks_by_seed]
    users = frames[0]["user_id"]
    for index, frame in enumerate(frames[1:], start=1):
        if not frame["user_id"].equals(users):
            raise ValueError(f"ranks_by_seed[{index}]: evaluated on other users than seed 0; all runs of a "
                             "study must use the same sequence_splits.")
    return pl.DataFrame({"user_id": users, **{m: sum(f[m] for f in frames) / len(frames) for m in metrics}})


def paired_tests(a: pl.DataFrame, b: pl.DataFrame, metrics: Sequence[str],
                 params: SignificanceParams) -> dict[str, dict[str, Any]]:
    """Per metric, ``paired_bootstrap`` of b - a over the users both frames share (all of them)."""
    joined = a.join(b, on="user_id", how="inner", suffix="__b")
    if not joined.height == a.height == b.height:
        raise ValueError(f"paired test: the two settings were evaluated on different users ({a.height} vs "
                         f"{b.height}, {joined.height} shared); evaluate both on the same sequence_splits.")
    results = {}
    for metric in metrics:
        result = paired_bootstrap(joined[metric].to_numpy(), joined[f"{metric}__b"].to_numpy(),
                                  n_resamples=params.n_resamples, confidence=params.confidence, seed=params.seed)
        results[metric] = {**result, "significant": bool(result["p_value"] < params.alpha)}
    return results


def _setting_summary(study: Study, setting: str, run_metrics: Mapping[str, Mapping[str, Any]],
                     run_ranks: Mapping[str, pl.DataFrame], metrics: Sequence[str]) -> dict[str, Any]:
    """Per-seed test metrics (the evaluation's, with the studied ones recomputed from the ranks, so
    they exist whatever evaluation.ks is), their mean and sample std over seeds."""
    runs = {str(seed): f"{setting}_s{seed}" for seed in study.seeds}
    per_seed = {}
    for seed, run in runs.items():
        per_user = _per_user(run_ranks[run], metrics)
        per_seed[seed] = {**run_metrics[run]["test"], **{m: float(per_user[m].mean()) for m in metrics}}
    keys = list(next(iter(per_seed.values())))
    spread = {key: mean_std([values[key] for values in per_seed.values()]) for key in keys}
    return {"differs_from_base": study.differences.get(setting, {}), "runs": runs, "per_seed": per_seed,
            "mean": {key: spread[key][0] for key in keys}, "std": {key: spread[key][1] for key in keys}}


def summarise_study(
    study: Study,
    run_metrics: Mapping[str, Mapping[str, Any]],
    run_ranks: Mapping[str, pl.DataFrame],
    *,
    metrics: Sequence[str],
    params: SignificanceParams,
    dataset: str = "",
) -> dict[str, Any]:
    """The study's json-ready results: per setting per-seed test metrics, mean and std; per row
    mean, std and significance markers; every paired test. See the module docstring."""
    missing = [run for run in study.runs() if run not in run_metrics or run not in run_ranks]
    if missing:
        raise ValueError(f"study {study.name!r}: no metrics / user_ranks for runs {missing}; the pipeline "
                         "must hand every run of the study to this node.")
    settings = {name: _setting_summary(study, name, run_metrics, run_ranks, metrics) for name in study.settings()}
    users = {name: seed_averaged_user_metrics([run_ranks[run] for run in summary["runs"].values()], metrics)
             for name, summary in settings.items()}

    tests: list[dict[str, Any]] = []
    done: set[tuple[str, str, str]] = set()

    def compare(kind: str, a: str, b: str) -> None:
        if (kind, a, b) in done:
            return
        done.add((kind, a, b))
        for metric, result in paired_tests(users[a], users[b], metrics, params).items():
            tests.append({"kind": kind, "a": a, "b": b, "metric": metric, **result})

    compare(VS_WARMUP, study.reference_warmup, study.reference)
    for row in study.rows:
        if not row.warmup_only:
            compare(VS_WARMUP, row.warmup, row.setting)
        if row.setting != study.reference:
            compare(VS_REFERENCE, row.setting, study.reference)

    def marker(row_setting: str, row_warmup: str, warmup_only: bool, metric: str) -> str:
        found = {(t["kind"], t["a"], t["b"]) for t in tests if t["metric"] == metric and t["significant"]}
        text = ""
        if not warmup_only and (VS_WARMUP, row_warmup, row_setting) in found:
            text += MARKERS[VS_WARMUP]
        if (VS_REFERENCE, row_setting, study.reference) in found:
            text += MARKERS[VS_REFERENCE]
        return text

    rows = []
    for row in study.rows:
        summary = settings[row.setting]
        rows.append({
            "label": row.label, "setting": row.setting, "warmup": row.warmup, "warmup_only": row.warmup_only,
            "sweep": row.sweep, "value": row.value,
            "mean": {m: summary["mean"][m] for m in metrics}, "std": {m: summary["std"][m] for m in metrics},
            "markers": {m: marker(row.setting, row.warmup, row.warmup_only, m) for m in metrics},
        })
    return {
        "study": study.name,
        "title": study.title,
        "kind": study.kind,
        "dataset": dataset,
        "split": "test",
        "seeds": list(study.seeds),
        "metrics": list(metrics),
        "users": int(next(iter(users.values())).height),
        "reference": study.reference,
        "reference_warmup": study.reference_warmup,
        "rows": rows,
        "settings": settings,
        "tests": tests,
        "significance": {
            "alpha": params.alpha, "confidence": params.confidence, "n_resamples": params.n_resamples,
            "seed": params.seed, "pairing": PAIRING, "p_value_method": P_VALUE_METHOD, "ci_method": CI_METHOD,
            "two_sided": True, "multiple_comparison_correction": None,
            "markers": {MARKERS[VS_WARMUP]: "differs from its own warm-up model (a = warm-up, b = row)",
                        MARKERS[VS_REFERENCE]: "differs from RoDPO, the base setting (a = row, b = RoDPO)"},
        },
    }
