from kedro.pipeline import Pipeline, node

from .nodes import report_study, run_study


def create_pipeline(**kwargs) -> Pipeline:
    """Study (generates its own data: no inputs but its parameters) -> results json -> table, figure."""
    return Pipeline(
        [
            node(run_study, inputs="params:false_negatives", outputs="false_negatives_results",
                 name="run_false_negative_study"),
            node(report_study, inputs="false_negatives_results",
                 outputs=["false_negatives_table", "false_negatives_figure"], name="report_false_negative_study"),
        ]
    )
