from kedro.pipeline import Pipeline, node

from rodpo.tracking import history_metrics

from .nodes import train_warmup_model


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(
                train_warmup_model,
                inputs=[
                    "sequence_splits",
                    "item_text_features",
                    "item_image_features",
                    "item_image_mask",
                    "params:model",
                    "params:warmup",
                ],
                outputs=["warmup_model", "warmup_history"],
                name="train_warmup_model",
            ),
            node(history_metrics, inputs="warmup_history", outputs="warmup_history_metrics",
                 name="track_warmup_history"),
        ]
    )
