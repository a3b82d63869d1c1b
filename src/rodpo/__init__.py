"""RoDPO: robust DPO for multimodal sequential recommendation, as Kedro pipelines."""

import warnings

from rodpo.allocator import tune_malloc

__version__ = "0.1.0"

# Large scoring buffers are kept by the heap instead of being unmapped on every free (rodpo.allocator).
MALLOC_TUNED = tune_malloc()

# MLflow warns "Add type hints to the `predict` method ..." when kedro-mlflow's KedroPipelineModel
# class is defined: a note to kedro-mlflow's authors, printed on every `kedro run`, that no user of
# this project can act on. A warnings filter cannot hide it: MLflow emits it inside its own
# `catch_warnings()` with `simplefilter("once")`, which shadows every filter set outside. What that
# block keeps is `warnings.showwarning` (a documented hook), so the note is dropped there, matched by
# category, message and the MLflow file that emits it; every other warning is shown as before. It
# sits here, not in settings.py, because Kedro imports this package (bootstrap_project) before it
# loads kedro-mlflow's CLI plugin, which defines that class; settings.py is read only later.
_MLFLOW_TYPE_HINT_NOTE = "Add type hints to the `predict` method"
_MLFLOW_TYPE_HINT_SOURCE = "mlflow/pyfunc/utils/data_validation.py"


def _without_mlflow_type_hint_note(show):
    def showwarning(message, category, filename, lineno, file=None, line=None):
        if not (issubclass(category, UserWarning) and _MLFLOW_TYPE_HINT_NOTE in str(message)
                and str(filename).replace("\\", "/").endswith(_MLFLOW_TYPE_HINT_SOURCE)):
            show(message, category, filename, lineno, file, line)

    return showwarning


warnings.showwarning = _without_mlflow_type_hint_note(warnings.showwarning)
