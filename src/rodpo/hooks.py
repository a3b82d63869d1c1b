"""Project hooks: experiment tracking with kedro-mlflow (configured in conf/base/mlflow.yml).

``TrackingHook`` is kedro-mlflow's own hook (registered in settings.py instead of the plugin's
auto-registered instance) with the project's rules added:

- where runs go (resolvers used by mlflow.yml): ``MLFLOW_TRACKING_URI`` when it is set, else an
  embedded SQLite store ``sqlite:///<project root>/mlflow.db`` with artifacts in
  ``<project root>/mlruns``; the project root is the session's, never the current directory.
- parameters typed as dataclasses (``params:warmup`` is a ``TrainConfig``) are logged field by
  field (``warmup.lr``, ``rodpo.dpo.beta``), like dict parameters, instead of as one long string;
- a session never reopens the previous session's run, and leaves its own closed (several sessions in
  one process: tests, notebooks);
- every run it starts is tagged with the host, pid and process start time that own it, and before a
  pipeline runs, RUNNING runs of this host whose process is gone (``kill -9``, power loss) are marked
  KILLED. Runs of other hosts, and runs without these tags, are left alone: nothing here can tell.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import mlflow
import omegaconf
from kedro.config import MissingConfigException
from kedro.framework.hooks import hook_impl
from kedro.io import MemoryDataset
from kedro_mlflow.config.resolvers import resolve_random_name
from kedro_mlflow.framework.hooks.mlflow_hook import MlflowHook
from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from rodpo import processes
from rodpo.devices import configure_torch_threads, usable_cores

logger = logging.getLogger(__name__)

TRACKING_URI_RESOLVER = "rodpo.tracking_uri"
ARTIFACT_LOCATION_RESOLVER = "rodpo.artifact_location"
DEFAULT_STORE = "mlflow.db"
ARTIFACTS_DIR = "mlruns"
SQLITE_PREFIX = "sqlite:///"
MLFLOW_CONFIG_PATTERNS = ["mlflow*", "mlflow*/**", "**/mlflow*"]  # where kedro-mlflow looks for mlflow.yml
RANDOM_NAME_RESOLVER = "km.random_name"  # kedro-mlflow's, registered here with OmegaConf's current API
# Who owns a run: a RUNNING run of this host whose process is gone was killed.
HOST_TAG = "rodpo.host"
PID_TAG = "rodpo.pid"
PID_NAMESPACE_TAG = "rodpo.pid_namespace"  # containers sharing a host name do not see each other's pids
PROCESS_START_TAG = "rodpo.process_start"  # tells a reused pid from the original process
KILLED_TAG = "rodpo.killed"
SEARCH_PAGE_SIZE = 1000


def tracking_uri(project_path: Path, store: str = DEFAULT_STORE) -> str:
    """``MLFLOW_TRACKING_URI`` if set (a server, or a test's temporary store), else the project's SQLite file."""
    return os.environ.get("MLFLOW_TRACKING_URI") or SQLITE_PREFIX + (Path(project_path) / store).as_posix()


def artifact_location(uri: str) -> str | None:
    """Artifacts of a local SQLite store live next to it (``<store dir>/mlruns``); a server decides its own."""
    if not uri.startswith(SQLITE_PREFIX):
        return None
    database = unquote(uri[len(SQLITE_PREFIX):].split("?")[0])  # sqlite:////abs/path.db -> /abs/path.db
    if not database or database == ":memory:":
        return None
    return (Path.cwd() / database).parent.joinpath(ARTIFACTS_DIR).as_uri()  # relative = to the cwd, as SQLite


class TrackingHook(MlflowHook):
    """kedro-mlflow's ``MlflowHook`` plus the project's store location and dataclass parameters."""

    @hook_impl
    def after_context_created(self, context) -> None:
        # The hook outlives a session (one instance per process). kedro-mlflow keeps the last run's id
        # and reopens it before every node, even in a later session whose pipeline is not tracked,
        # leaving that run active for whatever comes next (tests, notebooks): forget it per session.
        self.run_id = None
        project_path = Path(context.project_path)

        def project_tracking_uri(store: str = DEFAULT_STORE) -> str:
            return tracking_uri(project_path, store)

        _register_resolver(TRACKING_URI_RESOLVER, project_tracking_uri)
        # mlflow.yml is resolved per environment, so a resolver argument could not see a server set in
        # conf/local: read the merged tracking URI first, then answer for that one.
        configured_uri = None

        def configured_artifact_location() -> str | None:
            return artifact_location(configured_uri) if configured_uri else None

        _register_resolver(ARTIFACT_LOCATION_RESOLVER, configured_artifact_location)
        configured_uri = _configured_tracking_uri(context)
        # kedro-mlflow registers this one with the deprecated API unless it already exists.
        _register_resolver(RANDOM_NAME_RESOLVER, resolve_random_name, use_cache=True)
        super().after_context_created(context)

    @hook_impl
    def before_pipeline_run(self, run_params, pipeline, catalog) -> None:
        try:
            mark_dead_runs_killed(MlflowClient(mlflow.get_tracking_uri()))
        except Exception as error:  # housekeeping: an unreachable or read-only store must not stop the run
            logger.warning("Could not check the MLflow store %s for killed runs: %s", mlflow.get_tracking_uri(), error)
        super().before_pipeline_run(run_params, pipeline, catalog)
        if self._is_mlflow_enabled and self.run_id is not None and not self._already_active_mlflow:
            mlflow.set_tags(process_identity())  # the run kedro-mlflow just started is the active one

    @hook_impl
    def before_node_run(self, node, catalog, inputs: dict[str, Any], is_async: bool) -> None:
        plain = {name: params_as_dict(value) if name.startswith("params:") else value for name, value in inputs.items()}
        super().before_node_run(node, catalog, plain, is_async)

    @hook_impl
    def after_pipeline_run(self, run_params, pipeline, catalog) -> None:
        super().after_pipeline_run(run_params, pipeline, catalog)
        self._close_reopened_run()

    @hook_impl
    def on_pipeline_error(self, error, run_params, pipeline, catalog) -> None:
        super().on_pipeline_error(error, run_params, pipeline, catalog)
        self._close_reopened_run()

    def _close_reopened_run(self) -> None:
        """kedro-mlflow reopens the run before every node; with MLflow 3 each reopening stacks up and
        its end of pipeline closes only one, so the run stays active for the next session in the
        process. Close the rest, unless the caller opened that run before the session."""
        if self._already_active_mlflow or self.run_id is None:
            return
        while (active := mlflow.active_run()) is not None and active.info.run_id == self.run_id:
            mlflow.end_run()


def _configured_tracking_uri(context) -> str | None:
    """``server.mlflow_tracking_uri`` of mlflow.yml, conf/base and conf/<env> merged (None if unset)."""
    context.config_loader.config_patterns.setdefault("mlflow", MLFLOW_CONFIG_PATTERNS)
    try:
        return (context.config_loader["mlflow"].get("server") or {}).get("mlflow_tracking_uri")
    except MissingConfigException:
        return None


def params_as_dict(value: Any) -> Any:
    """A dataclass parameter as the nested dict it was written as in YAML; anything else unchanged."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value


def _register_resolver(name: str, resolver, use_cache: bool = False) -> None:
    """OmegaConf 2.4 deprecated ``register_new_resolver`` for ``register_resolver`` (which, before 2.2,
    was the old string-only API): use whichever is current."""
    current = tuple(int(part) for part in omegaconf.__version__.split(".")[:2]) >= (2, 4)
    register = OmegaConf.register_resolver if current else OmegaConf.register_new_resolver
    register(name, resolver, replace=True, use_cache=use_cache)


def process_identity(pid: int | None = None) -> dict[str, str]:
    """The tags that say which process owns a run (rodpo.processes' identity under tag names)."""
    identity = processes.process_identity(pid)
    return {HOST_TAG: identity["host"], PID_NAMESPACE_TAG: identity["pid_namespace"], PID_TAG: identity["pid"],
            PROCESS_START_TAG: identity["start"]}


def mark_dead_runs_killed(client: MlflowClient) -> list[str]:
    """Mark KILLED (with an end time) every RUNNING run whose owning process on this host is gone.

    Returns the ids of the runs it closed. A run is dead when its ``rodpo.host`` tag is this host and
    its pid is not alive, or is alive with a different start time (the pid was reused).
    """
    host = socket.gethostname()
    experiment_ids = [experiment.experiment_id for experiment in client.search_experiments()]
    if not experiment_ids:
        return []
    query = f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{host.replace(chr(39), '')}'"
    killed, page_token = [], None
    while True:
        page = client.search_runs(experiment_ids, query, max_results=SEARCH_PAGE_SIZE, page_token=page_token)
        for run in page:
            if _owner_is_gone(run.data.tags, host):
                reason = f"process {run.data.tags[PID_TAG]} on {host} had ended without closing the run"
                client.set_tag(run.info.run_id, KILLED_TAG, reason)
                client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.KILLED),
                                      end_time=int(time.time() * 1000))
                logger.warning("MLflow run %s was left RUNNING (%s): marked KILLED.", run.info.run_id, reason)
                killed.append(run.info.run_id)
        page_token = page.token
        if not page_token:
            return killed


def _owner_is_gone(tags: dict[str, str], host: str) -> bool:
    return processes.process_is_gone({"host": tags.get(HOST_TAG, ""), "pid_namespace": tags.get(PID_NAMESPACE_TAG, ""),
                                      "pid": tags.get(PID_TAG, ""), "start": tags.get(PROCESS_START_TAG, "")})


class NonWriterRankHook:
    """Under torchrun every rank runs the same `kedro run`; ranks other than 0 must write nothing.

    Registered instead of the tracking and run-journal hooks on those ranks (settings.py): their
    pipeline outputs go to memory, so the training node still runs its collective part and returns,
    while rank 0 alone saves catalog outputs, checkpoints and its one MLflow run.
    """

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        for name in pipeline.all_outputs():
            catalog[name] = MemoryDataset()


class ThreadsHook:
    """torch starts one intra-op thread per physical core of the machine, not of the cores this
    process may use (taskset, a container's cpuset or CPU quota): set the thread count from the
    latter when a session starts, unless OMP_NUM_THREADS says otherwise (rodpo.devices)."""

    @hook_impl
    def after_context_created(self, context) -> None:
        local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # torchrun's processes on this machine
        threads = configure_torch_threads("auto", processes=local_ranks)
        logger.info("torch intra-op threads: %d (usable cores: %d; set OMP_NUM_THREADS to choose)",
                    threads, usable_cores())
