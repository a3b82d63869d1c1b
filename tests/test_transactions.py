"""A failed or killed run leaves nothing a later run would read as current; stale inputs are refused.

Through KedroSession on a small demo: a processing run that fails at the split removes the versions
it had already saved; the journal of a killed run is rolled back by the next run; and a model
trained on another item catalog is refused by `recommend` with the run to redo.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from rodpo.lineage import LineageError
from rodpo.processes import process_identity, process_is_gone
from rodpo.transactions import JOURNAL_DIR

pytestmark = pytest.mark.slow

SMALL_DEMO = {"datasets": {"demo": {"demo": {"n_users": 300, "n_items": 150}}},
              "warmup": {"epochs": 1, "progress_bar": False}}
PROCESSING_OUTPUTS = ("02_intermediate/demo/raw_interactions.parquet", "03_primary/demo/interactions.parquet",
                      "03_primary/demo/items.parquet", "03_primary/demo/item_id_map.parquet",
                      "03_primary/demo/sequences.parquet", "05_model_input/demo/sequence_splits.parquet")


def _versions(project: Path, relative: str) -> list[str]:
    folder = project / "data" / relative
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def _params(**overrides) -> dict:
    return {**SMALL_DEMO, **overrides}


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_dead_local_process_is_gone_and_a_live_one_is_not():
    assert not process_is_gone(process_identity())
    assert process_is_gone({**process_identity(), "pid": str(_dead_pid()), "start": ""})
    assert not process_is_gone({"host": "another-host", "pid": str(_dead_pid())})  # never judged


def test_a_failed_processing_run_leaves_the_previous_versions_current(kedro_project, kedro_runner):
    kedro_runner(kedro_project, ["data_download", "data_processing"], _params())
    before = {relative: _versions(kedro_project, relative) for relative in PROCESSING_OUTPUTS}
    assert all(len(versions) == 1 for versions in before.values())
    with pytest.raises(Exception, match="leave-one-out|at least 3"):  # 2-core users cannot be split in 3
        kedro_runner(kedro_project, ["data_processing"], _params(data_processing={"k_core": 2}))
    after = {relative: _versions(kedro_project, relative) for relative in PROCESSING_OUTPUTS}
    assert after == before  # the failed run's interactions, items, maps and sequences were removed
    assert not list((kedro_project / JOURNAL_DIR).glob("*.json"))


def test_the_journal_of_a_killed_run_is_rolled_back_by_the_next_run(kedro_project, kedro_runner):
    kedro_runner(kedro_project, ["data_download"], _params())
    orphan = kedro_project / "data/03_primary/demo/items.parquet/2099-01-01T00.00.00.000Z"
    (orphan / "items.parquet").parent.mkdir(parents=True)
    (orphan / "items.parquet").write_bytes(b"half of a run")
    journal_dir = kedro_project / JOURNAL_DIR
    journal_dir.mkdir(parents=True, exist_ok=True)
    owner = {**process_identity(), "pid": str(_dead_pid()), "start": ""}
    (journal_dir / "killed.json").write_text(json.dumps({"owner": owner, "version_folders": [str(orphan)]}))
    live = journal_dir / "live.json"  # a concurrent run of a live process is left alone
    live.write_text(json.dumps({"owner": process_identity(), "version_folders": []}))
    kedro_runner(kedro_project, ["data_download"], _params())
    assert not orphan.exists()
    assert not (journal_dir / "killed.json").exists()
    assert live.exists()


def test_recommend_refuses_a_model_of_another_item_catalog(kedro_project, kedro_runner):
    kedro_runner(kedro_project, ["data_download", "data_processing", "feature_extraction", "warmup"], _params())
    # A successful rerun of processing on other settings: a new catalog, the features and model are stale.
    kedro_runner(kedro_project, ["data_processing"], _params(data_processing={"k_core": 8}))
    with pytest.raises(LineageError, match="different item catalog.*kedro run --pipelines=rodpo"):
        kedro_runner(kedro_project, ["recommend"], _params(recommend={"model": "warmup"}))
    with pytest.raises(LineageError, match="item features.*feature_extraction"):
        kedro_runner(kedro_project, ["warmup"], _params())
