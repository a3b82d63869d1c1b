"""``multimodal``: the ``experiments`` pipeline on the ``multimodal`` preset (``params:multimodal``): the
paper's regime (ID + text, sparse MoE, temporal module) with every stage-2 row of the verdict, the
w/o-MoE ablation and the text ablation. Outputs go under ``multimodal/``."""

from kedro.pipeline import Pipeline

from rodpo.pipelines.experiments.pipeline import create_pipeline as _create_experiments_pipeline

PRESET = "multimodal"


def create_pipeline(**kwargs) -> Pipeline:
    return _create_experiments_pipeline(preset=PRESET, **kwargs)


__all__ = ["create_pipeline"]
