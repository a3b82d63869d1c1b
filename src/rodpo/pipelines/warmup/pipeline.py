from kedro.pipeline import Pipeline, node

from rodpo.pipelines.evaluation.pipeline import SHARED_INPUTS
from rodpo.tracking import history_metrics

from .nodes import train_warmup_model


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(
                train_warmup_model,
                inputs=[*SHARED_INPUTS, "params:model", "params:warmup"],
                outputs=["warmup_model", "warmup_history"],
                name="train_warmup_model",
            ),
            node(history_metrics, inputs="warmup_history", outputs="warmup_history_metrics",
                 name="track_warmup_history"),
        ]
    )
