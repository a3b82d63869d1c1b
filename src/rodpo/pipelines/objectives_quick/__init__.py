"""``objectives_quick``: the ``experiments`` pipeline on the ``objectives_quick`` preset (``params:objectives_quick``): the preference
objectives x negative pools study, each row against its warm-up, its λ = 0 control and RoDPO.
Outputs go under ``objectives_quick/``."""

from kedro.pipeline import Pipeline

from rodpo.pipelines.experiments.pipeline import create_pipeline as _create_experiments_pipeline

PRESET = "objectives_quick"


def create_pipeline(**kwargs) -> Pipeline:
    return _create_experiments_pipeline(preset=PRESET, **kwargs)


__all__ = ["create_pipeline"]
