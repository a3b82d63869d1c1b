"""``false_negatives`` end to end through KedroSession with the `quick` preset, in a project copy.

The study generates its own worlds, so no data pipeline runs first; `dataset` only keys the paths.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

QUICK = {"false_negatives": {"preset": "quick"}}
# quick: exposures [0.5, 1.0], strategies topk_uniform (K = 20), argmax, random, objective dpo, one seed;
# per exposure the warm-up, the lambda = 0 control and 3 DPO variants
EXPECTED_ROWS = 2 * (1 + 1 + 3)


def test_quick_study_writes_results_table_and_figure(kedro_project: Path, kedro_runner):
    kedro_runner(kedro_project, ["false_negatives"], QUICK)
    reports = kedro_project / "data/08_reporting/demo/experiments"
    results_file = sorted((reports / "false_negatives.json").iterdir())[-1] / "false_negatives.json"  # versioned
    results = json.loads(results_file.read_text())
    assert len(results["rows"]) == EXPECTED_ROWS
    assert {row["exposure"] for row in results["rows"]} == {0.5, 1.0}
    assert all(len(row["epochs"]) == 1 for row in results["rows"] if row["kind"] != "warmup")
    assert (reports / "false_negatives.png").stat().st_size > 0
    lines = (reports / "false_negatives.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| Exposure | Variant"))
    table = list(itertools.takewhile(lambda line: line.startswith("|"), lines[start + 2:]))
    assert len(table) == EXPECTED_ROWS
    assert not (kedro_project / "data/03_primary/demo").exists() or not any(
        (kedro_project / "data/03_primary/demo").iterdir())  # it read and wrote no dataset
