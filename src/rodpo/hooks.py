"""Project hooks: experiment tracking with kedro-mlflow (configured in conf/base/mlflow.yml).

``TrackingHook`` is kedro-mlflow's own hook (registered in settings.py instead of the plugin's
auto-registered instance) with the project's rules added:

- where runs go (resolvers used by mlflow.yml): ``MLFLOW_TRACKING_URI`` when it is set, else an
  embedded SQLite store ``sqlite:///<project root>/mlflow.db`` with artifacts in
  ``<project root>/mlruns``; the project root is the session's, never the current directory.
- parameters typed as dataclasses (``params:warmup`` is a ``TrainConfig``) are logged field by
  field (``warmup.lr``, ``rodpo.dpo.beta``), like dict parameters, instead of as one long string;
- a session never reopens the previous session's run, and leaves its own closed (several sessions in
  one process: tests, notebooks).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import mlflow
from kedro.config import MissingConfigException
from kedro.framework.hooks import hook_impl
from kedro_mlflow.framework.hooks.mlflow_hook import MlflowHook
from omegaconf import OmegaConf

TRACKING_URI_RESOLVER = "rodpo.tracking_uri"
ARTIFACT_LOCATION_RESOLVER = "rodpo.artifact_location"
DEFAULT_STORE = "mlflow.db"
ARTIFACTS_DIR = "mlruns"
SQLITE_PREFIX = "sqlite:///"
MLFLOW_CONFIG_PATTERNS = ["mlflow*", "mlflow*/**", "**/mlflow*"]  # where kedro-mlflow looks for mlflow.yml


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
        super().after_context_created(context)

    @hook_impl
    def before_node_run(self, node, catalog, inputs: dict[str, Any], is_async: bool) -> None:
        plain = {name: _as_dict(value) if name.startswith("params:") else value for name, value in inputs.items()}
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


def _as_dict(value: Any) -> Any:
    """A dataclass parameter as the nested dict it was written as in YAML; anything else unchanged."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value


def _register_resolver(name: str, resolver) -> None:
    """OmegaConf >= 2.4 renamed ``register_new_resolver`` (now deprecated) to ``register_resolver``."""
    register = getattr(OmegaConf, "register_resolver", None) or OmegaConf.register_new_resolver
    register(name, resolver, replace=True)
