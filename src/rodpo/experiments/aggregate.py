"""A study's results: mean and std over seeds, and paired significance tests over users.

Seeds: each setting is trained once per seed; a row reports the mean and sample std of the
seeds' test metrics. Pairing: two settings are compared on the same users. With several seeds,
each user's NDCG@5 / MRR@5 is first averaged over the seeds of a setting (the user is the unit
of the test, the seed average is that user's score), then the two settings are paired per user:
``rodpo.evaluation.statistics.paired_bootstrap`` gives the bootstrap CI of the mean difference
and a sign-flip permutation p-value. Two kinds of test per study, both two-sided and without a
multiple-comparison correction:
  vs_warmup:    a = the row's own warm-up, b = the row (stage 2's effect; marker †)
  vs_control:   a = the row's λ = 0 control (same warm-up and stage-2 budget, CE only), b = the row
                (the preference term's own effect, beyond training longer; marker §)
  vs_reference: a = the row, b = RoDPO (the base setting) (marker ‡)
so a positive mean_diff always favours the DPO model / RoDPO. Every metric comes twice when the
runs' user ranks have the history-masked column: as evaluated (RecBole's protocol, the paper's)
and with the user's history masked ("ndcg@5:masked", the S3-Rec / BSARec lineage).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl

from rodpo.metrics import HISTORY_MASKED, history_masked, per_user_metrics
from rodpo.evaluation.statistics import CI_METHOD, P_VALUE_METHOD, mean_std, paired_bootstrap
from rodpo.experiments.plan import Study, metric_cutoffs

VS_WARMUP = "vs_warmup"
VS_CONTROL = "vs_control"
VS_REFERENCE = "vs_reference"
MARKERS = {VS_WARMUP: "†", VS_CONTROL: "§", VS_REFERENCE: "‡"}
MASKED_RANK_COLUMN = "test_rank_history_masked"
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
    """(user_id, one column per metric) of one run's test ranks, sorted by user; a ":masked"
    metric is read from the history-masked ranks."""
    ranks = ranks.sort("user_id")
    columns = {"user_id": ranks["user_id"]}
    for protocol, rank_column in (("", "test_rank"), (HISTORY_MASKED, MASKED_RANK_COLUMN)):
        wanted = [m for m in metrics if m.endswith(HISTORY_MASKED) == bool(protocol)]
        if wanted:
            bases = [m.removesuffix(HISTORY_MASKED) for m in wanted]
            values = per_user_metrics(ranks[rank_column].to_numpy(), metric_cutoffs(bases))
            columns.update({m: values[base] for m, base in zip(wanted, bases)})
    return pl.DataFrame(columns)


def study_columns(metrics: Sequence[str], run_ranks: Mapping[str, pl.DataFrame], runs: Sequence[str]) -> list[str]:
    """The studied metrics, then each under the history-masked protocol when every run has its ranks
    (runs evaluated before the masked column existed get the first set only)."""
    if all(MASKED_RANK_COLUMN in run_ranks[run].columns for run in runs):
        return [*metrics, *(history_masked(m) for m in metrics)]
    return list(metrics)


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


TRAINING_DIAGNOSTICS = ("ce_loss", "dpo_loss", "rewards_accuracy", "rewards_chosen", "rewards_margin", "score_margin")


def training_summary(history: Sequence[Mapping[str, Any]], valid_metric: str = "ndcg@10") -> dict[str, Any]:
    """How a run trained, from its per-epoch history: epochs run, the best epoch (the trainer's rule:
    the latest epoch with the highest validation metric; in stage 2 epoch 0, the warm-up itself, is a
    candidate, so best_epoch 0 means the stage returned the warm-up's weights), its validation score,
    and the stage-2 diagnostics of that epoch (DPO loss, TRL's reward accuracy / chosen reward /
    margin, the policy's own score margin; absent for the warm-up and the reference-free objectives'
    reward terms). A best epoch before the last one means the run passed its validation peak."""
    key = f"valid_{valid_metric}"
    trained = [entry for entry in history if entry.get("epoch", 0) >= 1]
    scored = [entry for entry in history if key in entry]
    if not scored:
        return {"epochs_run": len(trained), "best_epoch": None, "best_valid": None, "passed_peak": False}
    best = max(scored, key=lambda entry: (entry[key], entry["epoch"]))  # ties: the latest, as the trainer
    start = next((entry for entry in history if entry.get("epoch") == 0 and key in entry), None)
    last = max((entry["epoch"] for entry in trained), default=0)
    return {"epochs_run": last, "best_epoch": best["epoch"],
            "best_valid": best[key], "start_valid": start[key] if start else None,
            "passed_peak": best["epoch"] < last,
            **{name: best[name] for name in TRAINING_DIAGNOSTICS if name in best}}


def summarise_study(
    study: Study,
    run_metrics: Mapping[str, Mapping[str, Any]],
    run_ranks: Mapping[str, pl.DataFrame],
    *,
    metrics: Sequence[str],
    params: SignificanceParams,
    dataset: str = "",
    run_histories: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
) -> dict[str, Any]:
    """The study's json-ready results: per setting per-seed test metrics, mean and std; per row
    mean, std and significance markers; every paired test; with `run_histories`, per setting and
    seed how it trained (``training_summary``). See the module docstring."""
    missing = [run for run in study.runs() if run not in run_metrics or run not in run_ranks]
    if missing:
        raise ValueError(f"study {study.name!r}: no metrics / user_ranks for runs {missing}; the pipeline "
                         "must hand every run of the study to this node.")
    metrics = study_columns(metrics, run_ranks, study.runs())
    settings = {name: _setting_summary(study, name, run_metrics, run_ranks, metrics) for name in study.settings()}
    if run_histories is not None:
        for summary in settings.values():
            summary["training"] = {seed: training_summary(run_histories[run]) for seed, run in summary["runs"].items()
                                   if run in run_histories}
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
    if study.reference_control:
        compare(VS_CONTROL, study.reference_control, study.reference)
    for row in study.rows:
        if not row.warmup_only:
            compare(VS_WARMUP, row.warmup, row.setting)
        if row.control and row.control != row.setting:
            compare(VS_CONTROL, row.control, row.setting)
        if row.setting != study.reference:
            compare(VS_REFERENCE, row.setting, study.reference)

    def marker(row, metric: str) -> str:
        found = {(t["kind"], t["a"], t["b"]) for t in tests if t["metric"] == metric and t["significant"]}
        text = ""
        if not row.warmup_only and (VS_WARMUP, row.warmup, row.setting) in found:
            text += MARKERS[VS_WARMUP]
        if (VS_CONTROL, row.control, row.setting) in found:
            text += MARKERS[VS_CONTROL]
        if (VS_REFERENCE, row.setting, study.reference) in found:
            text += MARKERS[VS_REFERENCE]
        return text

    rows = []
    for row in study.rows:
        summary = settings[row.setting]
        rows.append({
            "label": row.label, "setting": row.setting, "warmup": row.warmup, "warmup_only": row.warmup_only,
            "control": row.control, "sweep": row.sweep, "value": row.value,
            "mean": {m: summary["mean"][m] for m in metrics}, "std": {m: summary["std"][m] for m in metrics},
            "markers": {m: marker(row, m) for m in metrics},
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
        "reference_control": study.reference_control,
        "rows": rows,
        "settings": settings,
        "tests": tests,
        "significance": {
            "alpha": params.alpha, "confidence": params.confidence, "n_resamples": params.n_resamples,
            "seed": params.seed, "pairing": PAIRING, "p_value_method": P_VALUE_METHOD, "ci_method": CI_METHOD,
            "two_sided": True, "multiple_comparison_correction": None,
            "markers": {MARKERS[VS_WARMUP]: "differs from its own warm-up model (a = warm-up, b = row)",
                        MARKERS[VS_CONTROL]: "differs from its λ = 0 control: same warm-up and stage-2 budget, CE "
                                             "only (a = control, b = row)",
                        MARKERS[VS_REFERENCE]: "differs from RoDPO, the base setting (a = row, b = RoDPO)"},
        },
    }
