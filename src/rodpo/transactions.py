"""Runs as transactions: a failed or killed `kedro run` leaves nothing that a later run, a notebook
or `kedro ipython` would read as current.

Versioned datasets save to ``<filepath>/<save version>/<name>`` and loading takes the newest
version, so a run that dies after saving some of its outputs would pair them with the older
outputs it never reached (new ``items`` with old ``sequence_splits``). Unversioned outputs (the
``*.md`` reports, ``recommendations.parquet``, ``raw_files.json``) would be overwritten in place,
half a run's worth. So, before a pipeline runs, a journal ``data/.runs/<run>.json`` lists the
version folders its outputs will create, and every local unversioned file output is pointed at a
staging folder beside its file (``<dir>/.staged-<run>/<name>``; later nodes of the same run read
it there). When the run succeeds the staged files are moved into place (one atomic rename each)
and the journal is removed. On an error the folders are removed at once (rollback).

A killed process cannot clean up. Its journal stays, and whoever next opens the project rolls it
back: every session does so when its context is created, before its catalog loads anything, so a
notebook, `kedro ipython` or a new `kedro run` never sees a killed run's versions. This is the
rollback the failed runs get, only later; nothing is skipped at load time, so the plain dataset
classes (Kedro's and kedro-datasets') need no change, and a journal is judged by its owner's
identity (``rodpo.processes``): only runs whose process is gone on this host are touched.
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
STAGING_PREFIX = ".staged-"
LOCAL_PROTOCOLS = ("file", None)


# ------------------------------------------------------------------ journal
def _local_file_dataset(catalog: Any, name: str) -> AbstractVersionedDataset | None:
    """The catalog's dataset `name` when it is a local file dataset (versioned or not), else None."""
    try:
        dataset = catalog.get(name)
    except Exception:  # noqa: BLE001 - a name the catalog cannot build is simply not a file here
        return None
    dataset = getattr(dataset, "_dataset", dataset)  # a wrapper keeping the file dataset inside
    if not isinstance(dataset, AbstractVersionedDataset) or getattr(dataset, "_protocol", "file") not in LOCAL_PROTOCOLS:
        return None  # memory, MLflow metrics, remote stores: not rolled back (documented)
    return dataset


def version_folders(catalog: Any, dataset_names: set[str]) -> list[str]:
    """The local folders the versioned datasets among `dataset_names` save this run's version into."""
    folders = []
    for name in sorted(dataset_names):
        dataset = _local_file_dataset(catalog, name)
        if dataset is not None and getattr(dataset, "_version", None) is not None:
            folders.append(os.path.abspath(PurePosixPath(dataset._get_save_path()).parent))
    return folders


def stage_unversioned_outputs(catalog: Any, dataset_names: set[str], run: str) -> list[tuple[Any, str, str]]:
    """Point each local unversioned file dataset among `dataset_names` at ``<dir>/.staged-<run>/<name>``.

    Returns (dataset, staged path, final path) triples for `promote` or `unstage`.
    """
    staged = []
    for name in sorted(dataset_names):
        dataset = _local_file_dataset(catalog, name)
        if dataset is None or getattr(dataset, "_version", None) is not None:
            continue
        final = PurePosixPath(os.path.abspath(dataset._filepath))
        dataset._filepath = final.parent / f"{STAGING_PREFIX}{run}" / final.name
        staged.append((dataset, str(dataset._filepath), str(final)))
    return staged


def promote(staged: list[tuple[Any, str, str]]) -> None:
    """Move the staged files of a finished run into place (each an atomic rename) and drop the
    staging folders; the datasets point at their own files again."""
    for dataset, staged_path, final in staged:
        source, target = Path(staged_path), Path(final)
        if source.exists():
            if target.is_dir() and not target.is_symlink():  # a folder of figures: replaced whole
                shutil.rmtree(target)
            os.replace(source, target)
    unstage(staged)


def unstage(staged: list[tuple[Any, str, str]]) -> None:
    """Drop the staging folders (with the files of a failed run); the datasets point at their own files."""
    for dataset, staged_path, final in staged:
        shutil.rmtree(Path(staged_path).parent, ignore_errors=True)
        dataset._filepath = PurePosixPath(final)


def rollback(journal: Path) -> list[str]:
    """Remove the folders a journal lists (those that exist), then the journal itself.

    Two sessions may roll back the same dead run at once: whatever the other removed first is skipped.
    """
    record = json.loads(journal.read_text())
    removed = []
    for folder in record.get("version_folders", []) + record.get("staging_folders", []):
        path = Path(folder)
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(folder)
    journal.unlink(missing_ok=True)
    return removed


def roll_back_dead_runs(journal_dir: Path) -> None:
    """Roll back every journal in `journal_dir` whose owning process is gone (killed, lost power)."""
    for journal in sorted(journal_dir.glob("*.json")) if journal_dir.is_dir() else []:
        try:
            owner = json.loads(journal.read_text()).get("owner", {})
        except FileNotFoundError:
            continue  # rolled back or finished meanwhile
        except (OSError, json.JSONDecodeError):
            logger.warning("Unreadable run journal %s: left in place; delete it by hand.", journal)
            continue
        if process_is_gone(owner):
            try:
                removed = rollback(journal)
            except FileNotFoundError:
                continue  # another session rolled it back first
            logger.warning("A killed run (pid %s) left %d dataset versions or staged files behind: removed "
                           "them, so the previous versions stay current: %s", owner.get("pid"), len(removed),
                           ", ".join(removed) or "none")


class TransactionalRunHook:
    """Journals each pipeline run's outputs, stages its unversioned files, rolls back failed and
    killed runs (killed ones as soon as any session of the project starts)."""

    def __init__(self) -> None:
        self._journal: Path | None = None
        self._staged: list[tuple[Any, str, str]] = []

    @hook_impl
    def after_context_created(self, context) -> None:
        roll_back_dead_runs(Path(context.project_path) / JOURNAL_DIR)

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        journal_dir = Path(run_params.get("project_path") or ".") / JOURNAL_DIR
        roll_back_dead_runs(journal_dir)  # a run killed since this session started
        run = f"{run_params.get('run_id') or run_params.get('session_id') or 'run'}-{os.getpid()}"
        outputs = set(pipeline.all_outputs())
        folders = version_folders(catalog, outputs)
        self._staged = stage_unversioned_outputs(catalog, outputs, run)
        staging = sorted({str(Path(staged).parent) for _, staged, _ in self._staged})
        journal_dir.mkdir(parents=True, exist_ok=True)
        self._journal = journal_dir / f"{run}.json"
        journal = json.dumps({"owner": process_identity(), "version_folders": folders, "staging_folders": staging},
                             indent=1)
        atomic_write(self._journal, lambda temporary: temporary.write_text(journal))

    @hook_impl
    def after_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        promote(self._staged)
        self._staged = []
        if self._journal is not None:
            self._journal.unlink(missing_ok=True)
            self._journal = None

    @hook_impl
    def on_pipeline_error(self, error: Exception, run_params: dict[str, Any], pipeline, catalog) -> None:
        unstage(self._staged)
        self._staged = []
        if self._journal is None or not self._journal.exists():
            return
        removed = rollback(self._journal)
        self._journal = None
        if removed:
            logger.warning("The run failed: removed the %d dataset versions or staged files it had saved, so "
                           "the previous versions stay current: %s", len(removed), ", ".join(removed))
