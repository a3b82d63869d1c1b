"""``objectives``: the ``experiments`` pipeline on the ``objectives`` preset (``params:objectives``): the preference
objectives x negative pools study, each row against its warm-up, its λ = 0 control and RoDPO.
Outputs go under ``objectives/``."""

from kedro.pipeline import Pipeline

from rodpo.pipelines.experiments.pipeline import create_pipeline as _create_experiments_pipeline

PRESET = "objectives"


def create_pipeline(**kwargs) -> Pipeline:
    return _create_experiments_pipeline(preset=PRESET, **kwargs)


__all__ = ["create_pipeline"]
