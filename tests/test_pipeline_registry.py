"""Every pipeline is registered, `__default__` chains them, and kedro-viz can render the lineage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from kedro.framework.project import pipelines
from kedro.framework.startup import bootstrap_project

from rodpo.pipeline_registry import DEFAULT_ORDER


def test_default_pipeline_is_the_whole_workflow(kedro_project):
    bootstrap_project(kedro_project)
    registered = set(pipelines)
    assert set(DEFAULT_ORDER) <= registered
    default_nodes = {n.name for n in pipelines["__default__"].nodes}
    for name in DEFAULT_ORDER:
        assert {n.name for n in pipelines[name].nodes} <= default_nodes, name
    # the rodpo pipeline trains the warm-up itself when it is missing
    assert "train_warmup_model" in {n.name for n in pipelines["rodpo"].nodes}


def test_kedro_viz_build_writes_the_lineage_of_every_pipeline(kedro_project: Path):
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1"}
    kedro = Path(sys.executable).with_name("kedro")
    result = subprocess.run([str(kedro), "viz", "build"], cwd=kedro_project, env=env,
                            capture_output=True, text=True, timeout=300)
    main = kedro_project / "build" / "api" / "main"
    assert main.exists(), result.stdout[-2000:] + result.stderr[-2000:]  # viz build exits 0 on failure
    lineage = json.loads(main.read_text())
    bootstrap_project(kedro_project)
    assert {p["id"] for p in lineage["pipelines"]} >= set(pipelines) - {"__default__"} | {"__default__"}
    node_names = {n["name"] for n in lineage["nodes"]}
    assert {"download_raw_data", "train_warmup_model", "train_rodpo_model"} <= node_names
