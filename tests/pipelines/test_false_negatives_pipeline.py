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
# quick: exposure 0.5, world seeds 0-2, one training seed; strategies topk_uniform (3 K shares), argmax,
# random, objective dpo, exclusions none and earlier_items; per world the warm-up, the lambda = 0 control
# and 2 x 5 DPO variants
WORLDS, VARIANTS = 3, 1 + 1 + 2 * 5


def test_quick_study_writes_results_table_and_figure(kedro_project: Path, kedro_runner):
    kedro_runner(kedro_project, ["false_negatives"], QUICK)
    reports = kedro_project / "data/08_reporting/demo/experiments"
    results_file = sorted((reports / "false_negatives.json").iterdir())[-1] / "false_negatives.json"  # versioned
    results = json.loads(results_file.read_text())
    assert len(results["rows"]) == WORLDS * VARIANTS
    assert {(row["exposure"], row["world_seed"]) for row in results["rows"]} == {(0.5, 0), (0.5, 1), (0.5, 2)}
    assert all(len(row["epochs"]) == 1 for row in results["rows"] if row["kind"] != "warmup")
    assert any(name.startswith("choosable") for name in results["definitions"])
    # every comparison carries the seed-level test over the 3 worlds and its adjusted values
    assert results["comparisons"] and results["significance"]["primary"]
    for test in results["comparisons"]:
        for key in ("p_seed", "ci95_seed", "p_holm", "q_bh"):
            assert test[key] is not None, (test["name"], key)
    assert sum(test["family"] == "primary" for test in results["comparisons"]) == 3 * 2  # 3 K shares x 2 exclusions
    assert (reports / "false_negatives.png").stat().st_size > 0
    lines = (reports / "false_negatives.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| Exposure | Pool exclusion | Variant"))
    table = list(itertools.takewhile(lambda line: line.startswith("|"), lines[start + 2:]))
    assert len(table) == VARIANTS
    assert not (kedro_project / "data/03_primary/demo").exists() or not any(
        (kedro_project / "data/03_primary/demo").iterdir())  # it read and wrote no dataset
