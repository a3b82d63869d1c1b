"""Runs as transactions: a failed or killed `kedro run` leaves no version that a later run would
read as current.

Versioned datasets save to ``<filepath>/<save version>/<name>`` and loading takes the newest
version, so a run that dies after saving some of its outputs would pair them with the older
outputs it never reached (new ``items`` with old ``sequence_splits``). Before a pipeline runs, a
journal ``data/.runs/<save version>.json`` lists the version folders its outputs will create; it is
removed when the run succeeds. On an error the folders are removed at once (rollback); after a kill
(no chance to clean up) the next run finds the journal of a process that is gone and rolls it back.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path, PurePosixPath
from typing import Any

from kedro.framework.hooks import hook_impl
from kedro.io.core import AbstractVersionedDataset

from rodpo.files import atomic_write
from rodpo.processes import process_identity, process_is_gone

logger = logging.getLogger(__name__)

JOURNAL_DIR = Path("data") / ".runs"


# ------------------------------------------------------------------ journal
def version_folders(catalog: Any, dataset_names: set[str]) -> list[str]:
    """The local folders the versioned datasets among `dataset_names` save this run's version into."""
    folders = []
    for name in sorted(dataset_names):
        try:
            dataset = catalog.get(name)
        except Exception:  # noqa: BLE001 - a name the catalog cannot build is simply not versioned here
            continue
        dataset = getattr(dataset, "_dataset", dataset)  # kedro-mlflow's artifact wrapper
        if isinstance(dataset, AbstractVersionedDataset) and getattr(dataset, "_version", None) is not None:
            if getattr(dataset, "_protocol", "file") not in ("file", None):
                continue  # remote stores: not rolled back (documented)
            folders.append(str(PurePosixPath(dataset._get_save_path()).parent))
    return folders


def rollback(journal: Path) -> list[str]:
    """Remove the version folders a journal lists (those that exist), then the journal itself."""
    record = json.loads(journal.read_text())
    removed = []
    for folder in record.get("version_folders", []):
        path = Path(folder)
        if path.is_dir():
            shutil.rmtree(path)
            removed.append(folder)
    journal.unlink(missing_ok=True)
    return removed


class TransactionalRunHook:
    """Journals each pipeline run's versioned outputs; rolls back failed and killed runs."""

    def __init__(self) -> None:
        self._journal: Path | None = None

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        journal_dir = Path(run_params.get("project_path") or ".") / JOURNAL_DIR
        self._roll_back_dead_runs(journal_dir)
        folders = version_folders(catalog, set(pipeline.all_outputs()))
        journal_dir.mkdir(parents=True, exist_ok=True)
        self._journal = journal_dir / f"{run_params.get('session_id', 'run')}-{os.getpid()}.json"
        journal = json.dumps({"owner": process_identity(), "version_folders": folders}, indent=1)
        atomic_write(self._journal, lambda temporary: temporary.write_text(journal))

    @hook_impl
    def after_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        if self._journal is not None:
            self._journal.unlink(missing_ok=True)
            self._journal = None

    @hook_impl
    def on_pipeline_error(self, error: Exception, run_params: dict[str, Any], pipeline, catalog) -> None:
        if self._journal is None or not self._journal.exists():
            return
        removed = rollback(self._journal)
        self._journal = None
        if removed:
            logger.warning("The run failed: removed the %d dataset versions it had saved, so the previous "
                           "versions stay current: %s", len(removed), ", ".join(removed))

    @staticmethod
    def _roll_back_dead_runs(journal_dir: Path) -> None:
        for journal in sorted(journal_dir.glob("*.json")) if journal_dir.is_dir() else []:
            try:
                owner = json.loads(journal.read_text()).get("owner", {})
            except (OSError, json.JSONDecodeError):
                logger.warning("Unreadable run journal %s: left in place; delete it by hand.", journal)
                continue
            if process_is_gone(owner):
                removed = rollback(journal)
                logger.warning("A killed run (pid %s) left %d dataset versions behind: removed them, so "
                               "the previous versions stay current: %s", owner.get("pid"), len(removed),
                               ", ".join(removed) or "none")
