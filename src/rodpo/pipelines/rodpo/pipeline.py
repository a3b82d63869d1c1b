from kedro.pipeline import Pipeline, node

from rodpo.pipelines import evaluation, warmup
from rodpo.pipelines.evaluation.pipeline import SHARED_INPUTS
from rodpo.tracking import history_metrics

from .nodes import train_rodpo_model


def dpo_stage() -> Pipeline:
    return Pipeline(
        [
            node(
                train_rodpo_model,
                inputs=["warmup_model", *SHARED_INPUTS, "params:rodpo"],
                outputs=["rodpo_model", "rodpo_history"],
                name="train_rodpo_model",
            ),
            node(history_metrics, inputs="rodpo_history", outputs="rodpo_history_metrics",
                 name="track_rodpo_history"),
        ]
    )


def create_pipeline(**kwargs) -> Pipeline:
    """Warm-up (resumed or reused from its checkpoint when already trained), DPO, evaluation."""
    return warmup.create_pipeline() + dpo_stage() + evaluation.create_pipeline()
