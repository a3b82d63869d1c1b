from kedro.pipeline import Pipeline, node, pipeline

from rodpo.tracking import final_metrics

from . import nodes

# What every training and evaluation node reads, in this order (after the model, where there is one).
SHARED_INPUTS = ["sequence_splits", "item_id_map", "item_text_features", "item_image_features", "item_image_mask",
                 "feature_manifest"]


def evaluate_model_pipeline(model: str, namespace: str) -> Pipeline:
    """One model's evaluation, namespaced: outputs `<namespace>.metrics`, `.user_ranks`, `.logit_samples`."""
    template = Pipeline(
        [
            node(
                nodes.evaluate_recommender,
                inputs=["model", *SHARED_INPUTS, "params:evaluation"],
                outputs=["metrics", "user_ranks", "logit_samples"],
                name="evaluate_recommender",
            ),
            node(final_metrics, inputs="metrics", outputs="final_metrics", name="track_final_metrics"),
        ]
    )
    return pipeline(
        template,
        namespace=namespace,
        inputs={"model": model, **{name: name for name in SHARED_INPUTS}},
        parameters={"params:evaluation": "params:evaluation"},
    )


def create_pipeline(**kwargs) -> Pipeline:
    return (
        evaluate_model_pipeline("warmup_model", "warmup")
        + evaluate_model_pipeline("rodpo_model", "rodpo")
        + Pipeline(
            [
                node(
                    nodes.report_warmup_vs_rodpo,
                    inputs=["warmup.metrics", "rodpo.metrics", "warmup.logit_samples",
                            "rodpo.logit_samples", "params:dataset"],
                    outputs=["metrics_report", "logit_distribution"],
                    name="report_warmup_vs_rodpo",
                )
            ]
        )
    )
