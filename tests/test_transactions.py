"""A failed or killed run leaves nothing a later run would read as current; stale inputs are refused.

On the hook itself: unversioned outputs are staged and moved into place only by a run that
finishes. Through KedroSession on a small demo: a processing run that fails at the split removes
the versions it had already saved; the journal of a killed run is rolled back by the next run, and
by a session that only loads (a notebook, `kedro ipython`); and a model trained on another item
catalog is refused by `recommend` with the run to redo.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from types import SimpleNamespace

import polars as pl
import pytest
from kedro.io import DataCatalog
from kedro.pipeline import Pipeline, node
from kedro_datasets.json import JSONDataset
from kedro_datasets.text import TextDataset

from rodpo.lineage import LineageError
from rodpo.processes import process_identity, process_is_gone
from rodpo.transactions import JOURNAL_DIR, STAGING_PREFIX, TransactionalRunHook

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


def _started_run(project: Path) -> tuple[TransactionalRunHook, DataCatalog, dict]:
    """A run of a report and a manifest (unversioned) that has saved both and not yet finished."""
    reports = project / "data" / "08_reporting"
    reports.mkdir(parents=True)
    (reports / "report.md").write_text("previous run")
    catalog = DataCatalog({"report": TextDataset(filepath=str(reports / "report.md")),
                           "manifest": JSONDataset(filepath=str(reports / "manifest.json"))})
    pipeline = Pipeline([node(lambda: ("this run", {"rows": 3}), None, ["report", "manifest"], name="write")])
    hook, run_params = TransactionalRunHook(), {"project_path": str(project), "run_id": "2026-01-01T00.00.00.000Z"}
    hook.before_pipeline_run(run_params, pipeline, catalog)
    catalog.save("report", "this run")
    catalog.save("manifest", {"rows": 3})
    assert catalog.load("report") == "this run"  # later nodes of the run read the staged file
    assert (reports / "report.md").read_text() == "previous run"  # nothing else does
    assert not (reports / "manifest.json").exists()
    return hook, catalog, {"run_params": run_params, "pipeline": pipeline, "catalog": catalog}


def _staging_folders(project: Path) -> list[Path]:
    return list((project / "data").rglob(f"{STAGING_PREFIX}*"))


def test_unversioned_outputs_reach_their_files_when_the_run_finishes(tmp_path):
    hook, catalog, call = _started_run(tmp_path)
    hook.after_pipeline_run(**call)
    reports = tmp_path / "data" / "08_reporting"
    assert (reports / "report.md").read_text() == "this run"
    assert json.loads((reports / "manifest.json").read_text()) == {"rows": 3}
    assert catalog.load("report") == "this run"
    assert not _staging_folders(tmp_path) and not list((tmp_path / JOURNAL_DIR).iterdir())


def test_unversioned_outputs_of_a_failed_run_never_reach_their_files(tmp_path):
    hook, _, call = _started_run(tmp_path)
    hook.on_pipeline_error(error=RuntimeError("a node failed"), **call)
    assert (tmp_path / "data/08_reporting/report.md").read_text() == "previous run"
    assert not (tmp_path / "data/08_reporting/manifest.json").exists()
    assert not _staging_folders(tmp_path) and not list((tmp_path / JOURNAL_DIR).iterdir())


def test_staged_outputs_of_a_killed_run_are_removed_when_the_next_session_starts(tmp_path):
    _started_run(tmp_path)  # and then killed: no after_pipeline_run, no on_pipeline_error
    journal = next((tmp_path / JOURNAL_DIR).glob("*.json"))
    record = json.loads(journal.read_text())
    assert [Path(folder) for folder in record["staging_folders"]] == _staging_folders(tmp_path)
    journal.write_text(json.dumps({**record, "owner": {**process_identity(), "pid": str(_dead_pid()), "start": ""}}))
    TransactionalRunHook().after_context_created(SimpleNamespace(project_path=tmp_path))
    assert not _staging_folders(tmp_path) and not journal.exists()
    assert (tmp_path / "data/08_reporting/report.md").read_text() == "previous run"


def test_a_dead_local_process_is_gone_and_a_live_one_is_not():
    assert not process_is_gone(process_identity())
    assert process_is_gone({**process_identity(), "pid": str(_dead_pid()), "start": ""})
    assert not process_is_gone({"host": "another-host", "pid": str(_dead_pid())})  # never judged


@pytest.mark.slow
def test_a_failed_processing_run_leaves_the_previous_versions_current(kedro_project, kedro_runner):
    kedro_runner(kedro_project, ["data_download", "data_processing"], _params())
    before = {relative: _versions(kedro_project, relative) for relative in PROCESSING_OUTPUTS}
    assert all(len(versions) == 1 for versions in before.values())
    with pytest.raises(Exception, match="leave-one-out|at least 3"):  # 2-core users cannot be split in 3
        kedro_runner(kedro_project, ["data_processing"], _params(data_processing={"k_core": 2}))
    after = {relative: _versions(kedro_project, relative) for relative in PROCESSING_OUTPUTS}
    assert after == before  # the failed run's interactions, items, maps and sequences were removed
    assert not list((kedro_project / JOURNAL_DIR).glob("*.json"))


@pytest.mark.slow
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


@pytest.mark.slow
def test_a_notebook_session_never_sees_the_versions_of_a_killed_run(kedro_project, kedro_runner, monkeypatch):
    """What `kedro ipython` and a notebook do: create a session and load from its catalog, no run."""
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    kedro_runner(kedro_project, ["data_download", "data_processing"], _params())
    items = kedro_project / "data/03_primary/demo/items.parquet"
    current = pl.read_parquet(next(items.glob("*/items.parquet")))
    orphan = items / "2099-01-01T00.00.00.000Z"  # newer than any real version: loads pick it
    orphan.mkdir()
    current.head(1).write_parquet(orphan / "items.parquet")  # half of the killed run's catalog
    journal_dir = kedro_project / JOURNAL_DIR
    owner = {**process_identity(), "pid": str(_dead_pid()), "start": ""}
    (journal_dir / "killed.json").write_text(json.dumps({"owner": owner, "version_folders": [str(orphan)]}))
    monkeypatch.chdir(kedro_project)
    bootstrap_project(kedro_project)
    with KedroSession.create(project_path=kedro_project, runtime_params=_params()) as session:
        loaded = session.load_context().catalog.load("items")
    assert loaded.equals(current)
    assert not orphan.exists() and not (journal_dir / "killed.json").exists()


@pytest.mark.slow
def test_recommend_refuses_a_model_of_another_item_catalog(kedro_project, kedro_runner):
    kedro_runner(kedro_project, ["data_download", "data_processing", "feature_extraction", "warmup"], _params())
    # A successful rerun of processing on other settings: a new catalog, the features and model are stale.
    kedro_runner(kedro_project, ["data_processing"], _params(data_processing={"k_core": 8}))
    with pytest.raises(LineageError, match="different item catalog.*kedro run --pipelines=rodpo"):
        kedro_runner(kedro_project, ["recommend"], _params(recommend={"model": "warmup"}))
    with pytest.raises(LineageError, match="item features.*feature_extraction"):
        kedro_runner(kedro_project, ["warmup"], _params())
