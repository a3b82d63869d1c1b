from kedro.pipeline import Pipeline, node

from .nodes import recommend_for_all_users


def create_pipeline(**kwargs) -> Pipeline:
    """`recommendation_model` is the model named by `recommend.model` (see catalog_recommend.yml)."""
    return Pipeline(
        [
            node(
                recommend_for_all_users,
                inputs=[
                    "recommendation_model",
                    "sequences",
                    "user_id_map",
                    "item_id_map",
                    "item_text_features",
                    "item_image_features",
                    "item_image_mask",
                    "params:recommend",
                ],
                outputs="recommendations",
                name="recommend_for_all_users",
            )
        ]
    )
