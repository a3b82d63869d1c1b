from kedro.pipeline import Pipeline, node

from . import nodes


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(
                nodes.parse_raw_interactions,
                inputs=["raw_files", "params:data_processing", "params:dataset_spec"],
                outputs="raw_interactions",
                name="parse_raw_interactions",
            ),
            node(
                nodes.parse_raw_items,
                inputs=["raw_files", "params:data_processing"],
                outputs="raw_items",
                name="parse_raw_items",
            ),
            node(
                nodes.filter_and_index_interactions,
                inputs=["raw_interactions", "params:data_processing", "params:dataset_spec"],
                outputs=["interactions", "user_id_map", "item_id_map"],
                name="filter_and_index_interactions",
            ),
            node(
                nodes.build_items,
                inputs=["raw_items", "item_id_map"],
                outputs="items",
                name="build_items",
            ),
            node(
                nodes.build_sequences,
                inputs=["interactions", "params:data_processing"],
                outputs="sequences",
                name="build_sequences",
            ),
            node(
                nodes.split_sequences,
                inputs=["sequences", "params:data_processing", "params:dataset_spec"],
                outputs="sequence_splits",
                name="split_sequences",
            ),
            node(
                nodes.summarise_dataset,
                inputs=["interactions", "sequence_splits", "params:dataset"],
                outputs=["dataset_stats", "dataset_stats_report"],
                name="summarise_dataset",
            ),
        ]
    )
