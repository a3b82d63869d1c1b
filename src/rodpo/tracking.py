"""Shape training histories and evaluation metrics for MLflow (logged by kedro-mlflow datasets).

Both functions return kedro-mlflow's metrics-history format, ``{key: [{"step": s, "value": v}, ...]}``,
which ``kedro_mlflow.io.metrics.MlflowMetricsHistoryDataset`` logs under its ``prefix``. MLflow
metric keys may not contain ``@``, so ``ndcg@10`` becomes ``ndcg_at_10``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

MetricsHistory = dict[str, list[dict[str, float | int]]]
# History fields that label an entry rather than measure it.
NOT_METRICS = ("stage", "epoch")
FINAL_SPLITS = ("valid", "test")


def metric_key(name: str) -> str:
    """An MLflow-safe metric key: ``valid_ndcg@10`` -> ``valid_ndcg_at_10``."""
    return name.replace("@", "_at_")


def history_metrics(history: Sequence[Mapping[str, Any]]) -> MetricsHistory:
    """Per-epoch training history (the trainer's list of dicts) -> one metric series per field.

    The step is the entry's ``epoch`` (DPO's epoch 0 is the warm-up model's validation score).
    Non-numeric and non-finite values are left out rather than failing the run.
    """
    series: MetricsHistory = {}
    for position, entry in enumerate(history):
        step = int(entry.get("epoch", position))
        for name, value in entry.items():
            if name in NOT_METRICS or not _is_number(value):
                continue
            series.setdefault(metric_key(name), []).append({"step": step, "value": float(value)})
    return series


def final_metrics(metrics: Mapping[str, Any]) -> MetricsHistory:
    """An evaluation's ``{"valid": {...}, "test": {...}, ...}`` -> ``valid.ndcg_at_10``, ``test.mrr_at_5``, ... at step 0."""
    missing = [split for split in FINAL_SPLITS if split not in metrics]
    if missing:
        raise ValueError(f"evaluation metrics lack {missing}; expected the `<model>.metrics` JSON written by "
                         "the evaluation pipeline, with 'valid' and 'test' metric dicts.")
    return {
        f"{split}.{metric_key(name)}": [{"step": 0, "value": float(value)}]
        for split in FINAL_SPLITS
        for name, value in metrics[split].items()
        if _is_number(value)
    }


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
