from kedro.pipeline import Pipeline, node

from .nodes import download_raw_data


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(
                download_raw_data,
                inputs=["params:dataset", "params:dataset_spec", "params:sources", "params:download"],
                outputs="raw_files",
                name="download_raw_data",
            )
        ]
    )
