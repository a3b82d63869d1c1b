"""Project pipelines.

``__default__`` is the whole workflow on the chosen dataset, in dependency order:
download -> processing -> features -> warm-up -> RoDPO -> evaluation -> case study.
``recommend`` and the ``experiments`` studies run on demand.
"""

from __future__ import annotations

from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline

DEFAULT_ORDER = (
    "data_download",
    "data_processing",
    "feature_extraction",
    "warmup",
    "rodpo",
    "evaluation",
    "case_study",
)


def register_pipelines() -> dict[str, Pipeline]:
    pipelines = find_pipelines(raise_errors=True)
    pipelines["__default__"] = sum(
        (pipelines[name] for name in DEFAULT_ORDER if name in pipelines), Pipeline([])
    )
    return pipelines
