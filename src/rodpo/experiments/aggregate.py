"""A study's results: mean and std over seeds, and paired tests with the trained seed as the unit.

Seeds: each setting is trained once per seed; a row reports the mean and sample std of the seeds'
test metrics. A comparison of settings a and b (b - a, so a positive difference favours b) is made
per seed on the same users: d_s = mean over users of b_s(u) - a_s(u). Its reported test is across
seeds (``rodpo.evaluation.inference``): p_seed (paired t over the d_s), p_signflip (exact sign-flip
over seeds), ci95_seed (two-level bootstrap: seeds, then users within a seed); fewer than 3 seeds
gives "not available", never a p. Every test of the study is one family: p_holm (Holm) and q_bh
(Benjamini-Hochberg) adjust p_seed over it, and markers mean p_holm < alpha. The comparisons the
study declares primary (``<preset>.primary``) are also adjusted over their own, smaller family
(p_holm_primary). The old user-level test (per-user metrics averaged over seeds, sign-flip over
users) stays as a secondary column, "users, models fixed": it ignores training randomness.
Kinds of comparison:
  vs_warmup:    a = the row's own warm-up, b = the row (stage 2's effect; marker †); also each
                automatic control against that warm-up (what training longer does without the
                preference term)
  vs_control:   a = the row's λ = 0 control (same warm-up and stage-2 budget, CE only, no dropout),
                b = the row (the preference term's own effect, beyond training longer; marker §)
  vs_continued_warmup: a = the row's continued warm-up (the same budget with the warm-up's loss,
                dropout and optimizer), b = the row (beyond simply training the warm-up longer; ¶)
  vs_<name>:    a = another row the row names as a control (``controls: {name: label}``), b = the row
  vs_reference: a = the row, b = RoDPO (the base setting) (marker ‡)
Every metric comes twice when the runs' user ranks have the history-masked column: as evaluated
(RecBole's protocol, the paper's) and with the user's history masked ("ndcg@5:masked").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl

from rodpo.metrics import HISTORY_MASKED, history_masked, per_user_metrics
from rodpo.evaluation.inference import adjust_family, describe, seed_level_comparison
from rodpo.evaluation.statistics import CI_METHOD, P_VALUE_METHOD, mean_std, paired_bootstrap
from rodpo.experiments.controls import CONTINUED_WARMUP, LAMBDA_ZERO
from rodpo.experiments.plan import Study, metric_cutoffs

VS_WARMUP = "vs_warmup"
VS_CONTROL = "vs_control"                       # the λ = 0 control
VS_CONTINUED = "vs_continued_warmup"            # the continued warm-up control
VS_REFERENCE = "vs_reference"
MARKERS = {VS_WARMUP: "†", VS_CONTROL: "§", VS_CONTINUED: "¶", VS_REFERENCE: "‡"}
CONTROL_KINDS = {LAMBDA_ZERO: VS_CONTROL, CONTINUED_WARMUP: VS_CONTINUED}  # Row.controls key -> test kind
# How `<preset>.primary` names a comparison (besides a row's named controls, by their names).
VERSUS = {"warmup": VS_WARMUP, "lambda_zero_control": LAMBDA_ZERO, "continued_warmup_control": CONTINUED_WARMUP,
          "reference": VS_REFERENCE}
MASKED_RANK_COLUMN = "test_rank_history_masked"


def control_kind(name: str) -> str:
    """The test kind of a row's control: § / ¶ for the automatic ones, ``vs_<name>`` for a named row."""
    return CONTROL_KINDS.get(name, f"vs_{name}")


USERS_PAIRING = ("users, models fixed: per-user test metric averaged over the seeds of each setting, "
                 "paired over users (ignores training randomness; secondary)")


@dataclass(frozen=True)
class SignificanceParams:
    """Paired tests between settings (see the module docstring)."""

    alpha: float = 0.05          # two-sided; a marker means p_holm < alpha
    confidence: float = 0.95     # of both bootstrap CIs (seed-level and users-only)
    n_resamples: int = 10_000    # seed-level bootstrap, users-only bootstrap and permutation test
    seed: int = 0


def _per_user(ranks: pl.DataFrame, metrics: Sequence[str]) -> pl.DataFrame:
    """(user_id, one column per metric) of one run's test ranks, sorted by user; a ":masked"
    metric is read from the history-masked ranks. With several test targets per user (a
    ``target_index`` column) a user's value is the mean over their targets."""
    if "target_index" in ranks.columns:
        ranks = ranks.filter(pl.col("test_rank").is_not_null())
    ranks = ranks.sort("user_id", maintain_order=True)
    columns = {"user_id": ranks["user_id"]}
    for protocol, rank_column in (("", "test_rank"), (HISTORY_MASKED, MASKED_RANK_COLUMN)):
        wanted = [m for m in metrics if m.endswith(HISTORY_MASKED) == bool(protocol)]
        if wanted:
            bases = [m.removesuffix(HISTORY_MASKED) for m in wanted]
            values = per_user_metrics(ranks[rank_column].to_numpy(), metric_cutoffs(bases))
            columns.update({m: values[base] for m, base in zip(wanted, bases)})
    per_target = pl.DataFrame(columns)
    if "target_index" in ranks.columns:
        return per_target.group_by("user_id", maintain_order=True).mean()
    return per_target


def study_columns(metrics: Sequence[str], run_ranks: Mapping[str, pl.DataFrame], runs: Sequence[str]) -> list[str]:
    """The studied metrics, then each under the history-masked protocol when every run has its ranks
    (runs evaluated before the masked column existed get the first set only)."""
    if all(MASKED_RANK_COLUMN in run_ranks[run].columns for run in runs):
        return [*metrics, *(history_masked(m) for m in metrics)]
    return list(metrics)


def _same_users(frames: Sequence[pl.DataFrame], what: str) -> None:
    users = frames[0]["user_id"]
    for index, frame in enumerate(frames[1:], start=1):
        if not frame["user_id"].equals(users):
            raise ValueError(f"{what}[{index}]: evaluated on other users than {what}[0]; all runs of a study "
                             "must use the same sequence_splits.")


def _average(frames_by_seed: Sequence[pl.DataFrame], metrics: Sequence[str]) -> pl.DataFrame:
    _same_users(frames_by_seed, "ranks_by_seed")
    return pl.DataFrame({"user_id": frames_by_seed[0]["user_id"],
                         **{m: sum(f[m] for f in frames_by_seed) / len(frames_by_seed) for m in metrics}})


def seed_averaged_user_metrics(ranks_by_seed: Sequence[pl.DataFrame], metrics: Sequence[str]) -> pl.DataFrame:
    """(user_id, one column per metric): per-user test metrics averaged over seeds.

    ``ranks_by_seed`` are evaluation ``user_ranks`` frames (user_id, test_rank, ...), one per seed;
    they must cover the same users.
    """
    if not ranks_by_seed:
        raise ValueError("ranks_by_seed: expected one user_ranks frame per seed, got none.")
    return _average([_per_user(ranks, metrics) for ranks in ranks_by_seed], metrics)


def paired_tests(a_by_seed: Sequence[pl.DataFrame], b_by_seed: Sequence[pl.DataFrame], metrics: Sequence[str],
                 params: SignificanceParams) -> dict[str, dict[str, Any]]:
    """Per metric, b - a: the seed-level test (reported) and the users-only test (secondary). The two
    settings' frames are per seed, in the same seed order, on the same users."""
    _same_users([*a_by_seed, *b_by_seed], "per-seed user frames")
    users_a, users_b = _average(a_by_seed, metrics), _average(b_by_seed, metrics)
    results = {}
    for metric in metrics:
        seed = seed_level_comparison([f[metric].to_numpy() for f in a_by_seed], [f[metric].to_numpy() for f in b_by_seed],
                                     confidence=params.confidence, n_resamples=params.n_resamples, seed=params.seed)
        users = paired_bootstrap(users_a[metric].to_numpy(), users_b[metric].to_numpy(),
                                 n_resamples=params.n_resamples, confidence=params.confidence, seed=params.seed)
        results[metric] = {"mean_diff": seed["mean_diff_seed"], **seed,
                           "p_users": users["p_value"], "ci95_users": [users["ci_low"], users["ci_high"]],
                           "n_users": users["n"]}
    return results


def resolve_primary(entries: Sequence[Mapping[str, Any]] | None, study: Study, metrics: Sequence[str],
                    studies: Sequence[str] | None = None, where: str = "primary") -> set[tuple[str, str, str, str]]:
    """The (kind, a, b, metric) tests `entries` declare primary for `study`; an entry is
    {study (when the preset has several), row: <row label>, versus: warmup | lambda_zero_control |
    continued_warmup_control | reference | a control the row names, metric: <a studied metric, or
    "<metric>:masked">}. Anything unknown is an error naming
    `where` (the parameter) and the choices. `studies`: every study of the preset (None: entries
    naming another study are skipped, as the pipeline node does after the build-time check)."""
    known = list(studies) if studies is not None else [study.name]
    chosen: set[tuple[str, str, str, str]] = set()
    for index, entry in enumerate(entries or []):
        label = f"{where}[{index}]"
        if not isinstance(entry, Mapping) or not {"row", "versus", "metric"} <= set(entry) or \
                set(entry) - {"study", "row", "versus", "metric"}:
            raise ValueError(f"{label}={entry!r}: expected {{study, row, versus, metric}} (study only when the preset "
                             f"has several: {known}).")
        name = entry.get("study", known[0] if len(known) == 1 else None)
        if studies is None and name != study.name and "study" in entry:
            continue  # another study's entry (the preset's entries were checked when the pipeline was built)
        if name not in known:
            raise ValueError(f"{label}: study {entry.get('study')!r} unknown or missing; expected one of {known}.")
        if name != study.name:
            continue
        rows = {row.label: row for row in study.rows}
        if entry["row"] not in rows:
            raise ValueError(f"{label}: row {entry['row']!r} is not a row of study {name!r}; rows: {sorted(rows)}.")
        row = rows[entry["row"]]
        named = sorted(set(row.controls) - set(CONTROL_KINDS))
        if entry["versus"] not in VERSUS and entry["versus"] not in named:
            raise ValueError(f"{label}: versus={entry['versus']!r}; expected one of {sorted(VERSUS)} or a control this "
                             f"row names ({named}).")
        if entry["metric"] not in metrics:
            raise ValueError(f"{label}: metric={entry['metric']!r} is not tested; expected one of {list(metrics)}.")
        versus = VERSUS.get(entry["versus"], entry["versus"])
        if versus == VS_WARMUP:
            kind, pair = VS_WARMUP, (None if row.warmup_only else row.warmup, row.setting)
        elif versus == VS_REFERENCE:
            kind, pair = VS_REFERENCE, (row.setting, study.reference)
        else:
            kind, pair = control_kind(versus), (row.controls.get(versus), row.setting)
        if None in pair or pair[0] == pair[1]:
            raise ValueError(f"{label}: row {entry['row']!r} has no {entry['versus']} comparison.")
        chosen.add((kind, *pair, entry["metric"]))
    return chosen


def _setting_summary(study: Study, setting: str, run_metrics: Mapping[str, Mapping[str, Any]],
                     frames: Sequence[pl.DataFrame], metrics: Sequence[str]) -> dict[str, Any]:
    """Per-seed test metrics (the evaluation's, with the studied ones recomputed from the ranks, so
    they exist whatever evaluation.ks is), their mean and sample std over seeds."""
    runs = {str(seed): f"{setting}_s{seed}" for seed in study.seeds}
    per_seed = {}
    for (seed, run), per_user in zip(runs.items(), frames):
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
    primary: Sequence[Mapping[str, Any]] | None = None,
    studies: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The study's json-ready results: per setting per-seed test metrics, mean and std; per row
    mean, std and significance markers (from p_holm); every paired test with its seed-level and
    users-only results; the primary comparisons (`primary`, see ``resolve_primary``; `studies`: the
    preset's study names) and their verdicts; with `run_histories`, per setting and seed how it
    trained (``training_summary``). See the module docstring."""
    missing = [run for run in study.runs() if run not in run_metrics or run not in run_ranks]
    if missing:
        raise ValueError(f"study {study.name!r}: no metrics / user_ranks for runs {missing}; the pipeline "
                         "must hand every run of the study to this node.")
    metrics = study_columns(metrics, run_ranks, study.runs())
    primary_tests = resolve_primary(primary, study, metrics, studies)
    frames = {name: [_per_user(run_ranks[f"{name}_s{seed}"], metrics) for seed in study.seeds]
              for name in study.settings()}
    settings = {name: _setting_summary(study, name, run_metrics, frames[name], metrics) for name in study.settings()}
    if run_histories is not None:
        for summary in settings.values():
            summary["training"] = {seed: training_summary(run_histories[run]) for seed, run in summary["runs"].items()
                                   if run in run_histories}

    tests: list[dict[str, Any]] = []
    done: set[tuple[str, str, str]] = set()

    def compare(kind: str, a: str, b: str) -> None:
        if (kind, a, b) in done:
            return
        done.add((kind, a, b))
        for metric, result in paired_tests(frames[a], frames[b], metrics, params).items():
            tests.append({"kind": kind, "a": a, "b": b, "metric": metric,
                          "primary": (kind, a, b, metric) in primary_tests, **result})

    def compare_controls(controls: Mapping[str, str], setting: str) -> None:
        for name, control in controls.items():
            if control != setting:  # e.g. the components table's own "λ = 0" row
                compare(control_kind(name), control, setting)

    compare(VS_WARMUP, study.reference_warmup, study.reference)
    compare_controls(study.reference_controls or ({LAMBDA_ZERO: study.reference_control}
                                                  if study.reference_control else {}), study.reference)
    for row in study.rows:
        if not row.warmup_only:
            compare(VS_WARMUP, row.warmup, row.setting)
        compare_controls(row.controls or ({LAMBDA_ZERO: row.control} if row.control else {}), row.setting)
        if row.setting != study.reference:
            compare(VS_REFERENCE, row.setting, study.reference)
    for row in study.rows:  # the automatic controls against their warm-up: does training longer help at all?
        for name, control in (row.controls or {}).items():
            if name in CONTROL_KINDS and not row.warmup_only and control != row.setting:
                compare(VS_WARMUP, row.warmup, control)
    adjust_family(tests)
    chosen = [test for test in tests if test["primary"]]
    adjust_family(chosen, suffix="_primary")
    for test in tests:
        test["significant"] = test["p_holm"] is not None and test["p_holm"] < params.alpha
        if test["primary"]:
            test["significant_primary"] = test["p_holm_primary"] is not None and test["p_holm_primary"] < params.alpha

    significant_tests = {(t["kind"], t["a"], t["b"], t["metric"]) for t in tests if t["significant"]}

    def significant(kind: str, a: str | None, b: str, metric: str) -> bool:
        return (kind, a, b, metric) in significant_tests

    def baselines(row) -> list[tuple[str, str]]:
        """(kind, setting) a row is measured against for its markers and bold: warm-up and automatic controls."""
        wanted = [] if row.warmup_only else [(VS_WARMUP, row.warmup)]
        controls = row.controls or ({LAMBDA_ZERO: row.control} if row.control else {})
        return wanted + [(CONTROL_KINDS[name], setting) for name, setting in controls.items()
                         if name in CONTROL_KINDS and setting != row.setting]

    def marker(row, metric: str) -> str:
        found = [kind for kind, a in baselines(row) if significant(kind, a, row.setting, metric)]
        if significant(VS_REFERENCE, row.setting, study.reference, metric):
            found.append(VS_REFERENCE)
        return "".join(MARKERS[kind] for kind in MARKERS if kind in found)

    def beats_all(row, metric: str) -> bool:
        """Bold: better than its warm-up and every automatic control of it, each significant after Holm."""
        wanted = baselines(row)
        if row.warmup_only or not wanted:
            return False
        found = [t for t in tests if t["metric"] == metric and t["b"] == row.setting and (t["kind"], t["a"]) in wanted]
        return len(found) == len(wanted) and all(t["significant"] and t["mean_diff"] > 0 for t in found)

    rows = []
    for row in study.rows:
        summary = settings[row.setting]
        rows.append({
            "label": row.label, "setting": row.setting, "warmup": row.warmup, "warmup_only": row.warmup_only,
            "control": row.control, "controls": dict(row.controls), "sweep": row.sweep, "value": row.value,
            "mean": {m: summary["mean"][m] for m in metrics}, "std": {m: summary["std"][m] for m in metrics},
            "markers": {m: marker(row, m) for m in metrics}, "bold": {m: beats_all(row, m) for m in metrics},
        })
    return {
        "study": study.name,
        "title": study.title,
        "kind": study.kind,
        "dataset": dataset,
        "split": "test",
        "seeds": list(study.seeds),
        "metrics": list(metrics),
        "users": int(frames[study.reference_warmup][0].height),
        "reference": study.reference,
        "reference_warmup": study.reference_warmup,
        "reference_control": study.reference_control,
        "reference_controls": dict(study.reference_controls),
        "rows": rows,
        "settings": settings,
        "tests": tests,
        "primary": [_verdict(test, params.alpha) for test in chosen],
        "significance": {
            "alpha": params.alpha, "confidence": params.confidence, "n_resamples": params.n_resamples,
            "seed": params.seed, **describe(params.confidence, params.n_resamples), "two_sided": True,
            "family": f"all {len(tests)} seed-level tests of this report (every comparison x metric)",
            "primary_family": f"the {len(chosen)} comparison(s) declared in primary",
            "users_only": {"pairing": USERS_PAIRING, "p_value_method": P_VALUE_METHOD, "ci_method": CI_METHOD},
            "markers": {MARKERS[VS_WARMUP]: "differs from its own warm-up model (a = warm-up, b = row)",
                        MARKERS[VS_CONTROL]: "differs from its λ = 0 control: same warm-up and stage-2 budget, CE "
                                             "only, no dropout (a = control, b = row)",
                        MARKERS[VS_CONTINUED]: "differs from its continued warm-up: same warm-up and stage-2 "
                                               "budget, the warm-up's loss, dropout and optimizer (a = control, b = row)",
                        MARKERS[VS_REFERENCE]: "differs from RoDPO, the base setting (a = row, b = RoDPO)"},
        },
    }


def _verdict(test: Mapping[str, Any], alpha: float) -> dict[str, Any]:
    """A primary comparison's verdict in words, from its Holm-adjusted seed-level p."""
    keys = ("kind", "a", "b", "metric", "mean_diff", "ci95_seed", "p_seed", "p_holm_primary", "p_holm", "q_bh")
    if test["p_seed"] is None:
        verdict = test["seed_test_unavailable"]
    elif test["p_holm_primary"] < alpha:
        verdict = (f"significant: b {'better' if test['mean_diff'] > 0 else 'worse'} than a "
                   f"(Holm over the primary family, p = {test['p_holm_primary']:.4g} < {alpha:g})")
    else:
        verdict = f"no significant difference (Holm over the primary family, p = {test['p_holm_primary']:.4g})"
    return {**{key: test.get(key) for key in keys}, "verdict": verdict}
