"""``experiments``: one namespaced warm-up / DPO / evaluation pipeline per distinct run, one
namespace per study.

The runs depend on the study design, so the pipeline is built from the parameters (Kedro's
dynamic-pipeline pattern): ``create_pipeline`` reads ``parameters_experiments.yml`` (conf/base, then
$KEDRO_ENV or conf/local) from the project the command runs in, plans the runs with
``rodpo.experiments.plan`` and instantiates, per run, under the namespace ``<preset>.runs.<run>``:
  warm-up run: warmup_run_parameters -> train_warmup_model (the ``warmup`` node) -> evaluation
  DPO run:     dpo_run_parameters -> train_rodpo_model (the ``rodpo`` node, from the warm-up run of
               the same seed) -> evaluation
and per study, under ``<preset>.studies.<study>``: summarise (results json) -> report (md, png).
The first node, ``<preset>.plan_runs``, plans again from the parameters the run actually got and
hands each run its overrides.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from kedro.framework.project import settings
from kedro.pipeline import Pipeline, node, pipeline
from kedro.utils import find_kedro_project

from rodpo.experiments.aggregate import resolve_primary
from rodpo.experiments.plan import SECTIONS, ExperimentPlan, Study, plan_experiments
from rodpo.metrics import history_masked
from rodpo.pipelines.evaluation.pipeline import SHARED_INPUTS, evaluate_model_pipeline
from rodpo.pipelines.rodpo.nodes import train_rodpo_model
from rodpo.pipelines.warmup.nodes import train_warmup_model
from rodpo.tracking import history_metrics

from . import nodes

logger = logging.getLogger(__name__)

DEFAULT_PRESET = "experiments"


def _same(*names: str) -> dict[str, str]:
    """Names kept as they are (not prefixed with the namespace): shared data and base parameters."""
    return {name: name for name in names}


def project_parameters(project_path: Path | None = None, env: str | None = None) -> dict[str, Any] | None:
    """The project's parameters as ``kedro run`` loads them (without --params / --env, which
    pipelines cannot see); None when the working directory is not inside a Kedro project."""
    project_path = project_path or find_kedro_project(Path.cwd())
    if project_path is None:
        return None
    loader = settings.CONFIG_LOADER_CLASS(
        conf_source=str(Path(project_path) / settings.CONF_SOURCE),
        env=env or os.getenv("KEDRO_ENV"),
        **settings.CONFIG_LOADER_ARGS,
    )
    return loader["parameters"]


def plan_from_parameters(parameters: dict[str, Any], preset: str) -> ExperimentPlan:
    """The preset's plan; its declared primary comparisons are checked here, before anything trains."""
    if preset not in parameters:
        raise ValueError(f"params:{preset} not found; define the preset in conf/base/parameters_experiments.yml.")
    design = parameters[preset]
    plan = plan_experiments(design, {section: parameters[section] for section in SECTIONS})
    metrics = [*design.get("metrics", []), *(history_masked(m) for m in design.get("metrics", []))]
    for study in plan.studies.values():
        resolve_primary(design.get("primary"), study, metrics, list(plan.studies), where=f"{preset}.primary")
    return plan


def _run_outputs(preset: str, run: str) -> str:
    return f"{preset}.runs.{run}"


def plan_pipeline(plan: ExperimentPlan, preset: str) -> Pipeline:
    """``<preset>.plan_runs``: the plan json, ``<preset>.runs.<run>.overrides`` and the studies' specs."""
    overrides = {f"{run}__overrides": f"{_run_outputs(preset, run)}.overrides" for run in plan.runs()}
    specs = {f"{name}__spec": f"{preset}.studies.{name}.spec" for name in plan.studies}
    outputs = {"plan": "experiment_plan",
               **{f"run:{run}": f"{run}__overrides" for run in plan.runs()},
               **{f"study:{name}": f"{name}__spec" for name in plan.studies}}
    template = Pipeline([node(nodes.plan_runs, ["params:design", "params:model", "params:warmup", "params:rodpo"],
                              outputs, name="plan_runs")])
    return pipeline(template, namespace=preset, outputs={**overrides, **specs},
                    parameters={"params:design": f"params:{preset}",
                                **_same("params:model", "params:warmup", "params:rodpo")})


def _track_history_node():
    """Per-epoch curves of a run to MLflow, as ``<preset>.runs.<run>.epoch.<field>`` (catalog_experiments.yml)."""
    return node(history_metrics, "history", "history_metrics", name="track_history")


def warmup_run_pipeline(preset: str, run: str) -> Pipeline:
    """Stage 1 for one (model / warm-up setting, seed), then its evaluation ("w/o DPO")."""
    namespace = _run_outputs(preset, run)
    template = Pipeline([
        node(nodes.warmup_run_parameters, ["params:model", "params:warmup", "overrides"],
             ["model_params", "warmup_config"], name="warmup_run_parameters"),
        node(train_warmup_model, [*SHARED_INPUTS, "model_params", "warmup_config"], ["model", "history"],
             name="train_warmup_model"),
        _track_history_node(),
    ])
    training = pipeline(template, namespace=namespace, inputs=_same(*SHARED_INPUTS),
                        parameters=_same("params:model", "params:warmup"))
    return training + evaluate_model_pipeline(f"{namespace}.model", namespace)


def dpo_run_pipeline(preset: str, run: str, warmup_run: str) -> Pipeline:
    """Stage 2 for one (DPO setting, seed) from ``warmup_run`` (policy start and reference)."""
    namespace = _run_outputs(preset, run)
    template = Pipeline([
        node(nodes.dpo_run_parameters, ["params:rodpo", "overrides"], "rodpo_config", name="dpo_run_parameters"),
        node(train_rodpo_model, ["warmup_model", *SHARED_INPUTS, "rodpo_config"], ["model", "history"],
             name="train_rodpo_model"),
        _track_history_node(),
    ])
    training = pipeline(template, namespace=namespace,
                        inputs={"warmup_model": f"{_run_outputs(preset, warmup_run)}.model",
                                **_same(*SHARED_INPUTS)},
                        parameters=_same("params:rodpo"))
    return training + evaluate_model_pipeline(f"{namespace}.model", namespace)


def study_pipeline(preset: str, study: Study) -> Pipeline:
    """Results json (seeds, paired tests), markdown table, figure and logit panels of one study."""
    first_seed = study.seeds[0]
    run_inputs, external = {}, {}
    for run in study.runs():
        for prefix, output in ((nodes.METRICS_INPUT, "metrics"), (nodes.RANKS_INPUT, "user_ranks"),
                               (nodes.HISTORY_INPUT, "history")):
            run_inputs[f"{prefix}{run}"] = f"{run}__{output}"
            external[f"{run}__{output}"] = f"{_run_outputs(preset, run)}.{output}"
    logit_inputs = {}
    for setting in study.settings():
        run = f"{setting}_s{first_seed}"
        logit_inputs[f"{nodes.LOGITS_INPUT}{setting}"] = f"{run}__logit_samples"
        external[f"{run}__logit_samples"] = f"{_run_outputs(preset, run)}.logit_samples"
    template = Pipeline([
        node(nodes.summarise_experiment_study,
             {"spec": "spec", "metrics": "params:metrics", "significance": "params:significance",
              "primary": "params:primary", "dataset": "params:dataset", **run_inputs},
             "results", name="summarise_study"),
        node(nodes.report_experiment_study, {"results": "results", **logit_inputs},
             ["table", "figure", "logit_distribution"], name="report_study"),
    ])
    return pipeline(template, namespace=f"{preset}.studies.{study.name}", inputs=external,
                    parameters={"params:metrics": f"params:{preset}.metrics",
                                "params:significance": f"params:{preset}.significance",
                                "params:primary": f"params:{preset}.primary",
                                "params:dataset": "params:dataset"})


def experiments_pipeline(plan: ExperimentPlan, preset: str = DEFAULT_PRESET) -> Pipeline:
    """The whole study pipeline of a plan (built once per preset)."""
    pipe = plan_pipeline(plan, preset)
    for run in plan.runs():
        setting, _ = plan.split_run(run)
        if plan.settings[setting].stage == "warmup":
            pipe += warmup_run_pipeline(preset, run)
        else:
            pipe += dpo_run_pipeline(preset, run, plan.warmup_run(run))
    for study in plan.studies.values():
        pipe += study_pipeline(preset, study)
    return pipe


def create_pipeline(preset: str = DEFAULT_PRESET, **kwargs) -> Pipeline:
    """``kedro run --pipelines=experiments``: the paper's grids and seeds (``params:experiments``)."""
    parameters = project_parameters()
    if parameters is None:
        logger.warning("%s: no Kedro project at or above %s, so no study design to build the pipeline from; "
                       "the pipeline is empty. Run kedro from inside the project.", preset, Path.cwd())
        return Pipeline([])
    return experiments_pipeline(plan_from_parameters(parameters, preset), preset)
