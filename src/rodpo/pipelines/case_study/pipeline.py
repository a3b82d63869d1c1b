from kedro.pipeline import Pipeline, node

from .nodes import report_case_study


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(
                report_case_study,
                inputs=[
                    "warmup_model",
                    "rodpo_model",
                    "sequence_splits",
                    "items",
                    "user_id_map",
                    "item_text_features",
                    "item_image_features",
                    "item_image_mask",
                    "params:case_study",
                    "params:dataset",
                ],
                outputs="case_study_report",
                name="report_case_study",
            )
        ]
    )
