"""Importing rodpo hides exactly one warning: MLflow's note on kedro-mlflow's predict type hints."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import warnings
import rodpo
import kedro_mlflow.mlflow  # defines KedroPipelineModel: MLflow's type-hint note
warnings.warn("any other warning is still shown", UserWarning)
"""


def test_only_the_mlflow_type_hint_note_is_hidden():
    result = subprocess.run([sys.executable, "-W", "default", "-c", SCRIPT], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Add type hints to the `predict` method" not in result.stderr
    assert "any other warning is still shown" in result.stderr
