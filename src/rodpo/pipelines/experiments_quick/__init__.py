"""``experiments_quick``: the ``experiments`` pipeline on the quick preset (``params:experiments_quick``:
fewer seeds, epochs and grid points), for the demo and tests. Outputs go under ``experiments_quick/``."""

from kedro.pipeline import Pipeline

from rodpo.pipelines.experiments.pipeline import create_pipeline as _create_experiments_pipeline

PRESET = "experiments_quick"


def create_pipeline(**kwargs) -> Pipeline:
    return _create_experiments_pipeline(preset=PRESET, **kwargs)


__all__ = ["create_pipeline"]
