"""Nodes of ``experiments``: adapters over ``rodpo.experiments``.

Training and evaluation are the ``warmup`` / ``rodpo`` / ``evaluation`` node functions; the nodes
here only give each run its parameters (base parameters + the run's overrides) and collect a
study's runs into results, a table and figures.
"""

from __future__ import annotations

import logging
from typing import Any

import matplotlib.figure
import polars as pl

from rodpo.experiments.aggregate import SignificanceParams, summarise_study
from rodpo.experiments.overrides import apply_overrides
from rodpo.experiments.plan import Study, plan_experiments
from rodpo.experiments.reports import study_figure, study_logit_figure, study_table_markdown
from rodpo.training.trainer import TrainConfig

logger = logging.getLogger(__name__)

# Prefixes of the keyword inputs of the study nodes: "<kind>:<run or setting>".
METRICS_INPUT = "metrics:"
RANKS_INPUT = "ranks:"
HISTORY_INPUT = "history:"
LOGITS_INPUT = "logits:"


def plan_runs(design: dict, model: dict, warmup: TrainConfig, rodpo: TrainConfig) -> dict[str, Any]:
    """The plan, each run's overrides ("run:<name>") and each study's spec ("study:<name>").

    The pipeline was built from the same plan; if parameters given at run time change the set of
    runs, Kedro stops here with the runs it expected and the runs planned now.
    """
    plan = plan_experiments(design, {"model": model, "warmup": warmup, "rodpo": rodpo})
    stages = [setting.stage for setting in plan.settings.values()]
    logger.info("experiments: %d warm-up and %d DPO settings x %d seeds for studies %s.", stages.count("warmup"),
                stages.count("dpo"), len(plan.seeds), list(plan.studies))
    return {
        "plan": plan.to_dict(),
        **{f"run:{run}": overrides for run, overrides in plan.runs().items()},
        **{f"study:{name}": study.to_dict() for name, study in plan.studies.items()},
    }


def warmup_run_parameters(model: dict, warmup: TrainConfig, overrides: dict) -> tuple[dict, TrainConfig]:
    """``params:model`` and ``params:warmup`` with one warm-up run's overrides (and seed) applied."""
    sections = apply_overrides({"model": model, "warmup": warmup}, overrides, where="warm-up run")
    return sections["model"], TrainConfig(**sections["warmup"])


def dpo_run_parameters(rodpo: TrainConfig, overrides: dict) -> TrainConfig:
    """``params:rodpo`` with one DPO run's overrides (and seed) applied."""
    return TrainConfig(**apply_overrides({"rodpo": rodpo}, overrides, where="DPO run")["rodpo"])


def _by_prefix(inputs: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {name.removeprefix(prefix): value for name, value in inputs.items() if name.startswith(prefix)}


def summarise_experiment_study(spec: dict, metrics: list[str], significance: SignificanceParams,
                               primary: list[dict] | None, dataset: str, **run_outputs: Any) -> dict:
    """Results of one study from its runs' metrics ("metrics:<run>"), user ranks ("ranks:<run>") and
    training histories ("history:<run>"); `primary`: the preset's declared primary comparisons."""
    return summarise_study(Study.from_dict(spec), _by_prefix(run_outputs, METRICS_INPUT),
                           _by_prefix(run_outputs, RANKS_INPUT), metrics=metrics, params=significance,
                           dataset=dataset, run_histories=_by_prefix(run_outputs, HISTORY_INPUT), primary=primary)


def report_experiment_study(results: dict, **logit_samples: pl.DataFrame
                            ) -> tuple[str, matplotlib.figure.Figure, matplotlib.figure.Figure]:
    """Markdown table, bar / line figure, and Figure-4 panels ("logits:<setting>", first seed)."""
    samples = {setting: {"positive": frame["positive"].to_numpy(), "negative": frame["negative"].to_numpy()}
               for setting, frame in _by_prefix(logit_samples, LOGITS_INPUT).items()}
    return study_table_markdown(results), study_figure(results), study_logit_figure(results, samples)
