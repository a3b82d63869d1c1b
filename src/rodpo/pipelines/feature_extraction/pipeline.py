from kedro.pipeline import Pipeline, node

from . import nodes


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(
                nodes.extract_item_text_features,
                inputs=["items", "params:dataset_spec", "params:feature_extraction", "params:dataset"],
                outputs=["item_text_features", "text_feature_manifest"],
                name="extract_item_text_features",
            ),
            node(
                nodes.extract_item_image_features,
                inputs=["items", "params:dataset_spec", "params:feature_extraction"],
                outputs=["item_image_features", "item_image_mask", "image_feature_manifest"],
                name="extract_item_image_features",
            ),
            node(
                nodes.merge_feature_manifests,
                inputs=["text_feature_manifest", "image_feature_manifest", "items", "params:dataset"],
                outputs="feature_manifest",
                name="merge_feature_manifests",
            ),
        ]
    )
