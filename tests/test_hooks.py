"""rodpo.hooks: where tracked runs go, which process owns a run (and closing runs of killed ones), quiet sessions."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

from kedro.config import OmegaConfigLoader
from kedro_mlflow.framework.hooks.mlflow_hook import MlflowHook

from rodpo.hooks import TrackingHook, params_as_dict, artifact_location, tracking_uri


def test_default_store_is_under_the_project_root(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri(tmp_path) == f"sqlite:///{tmp_path.as_posix()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert tracking_uri(tmp_path) == "http://mlflow.example:5000"


def test_artifacts_sit_next_to_a_local_sqlite_store(tmp_path):
    assert artifact_location(f"sqlite:///{tmp_path.as_posix()}/mlflow.db") == (tmp_path / "mlruns").as_uri()
    assert artifact_location("http://mlflow.example:5000") is None  # the server decides
    assert artifact_location("sqlite:///:memory:") is None


def test_artifacts_of_a_relative_store_follow_sqlite_and_the_cwd(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert artifact_location("sqlite:///runs/mlflow.db") == (tmp_path / "runs" / "mlruns").as_uri()


def test_dataclass_parameters_become_nested_dicts():
    @dataclass
    class Inner:
        beta: float = 1.0

    @dataclass
    class Outer:
        lr: float = 0.001
        dpo: Inner = field(default_factory=Inner)

    assert params_as_dict(Outer()) == {"lr": 0.001, "dpo": {"beta": 1.0}}
    assert params_as_dict({"a": 1}) == {"a": 1} and params_as_dict(Outer) is Outer and params_as_dict(Path("x")) == Path("x")


def _resolved_mlflow_config(project: Path, monkeypatch) -> dict:
    """conf/base/mlflow.yml (+ conf/local) as TrackingHook resolves it, without starting MLflow."""
    monkeypatch.setattr(MlflowHook, "after_context_created", lambda self, context: None)
    loader = OmegaConfigLoader(str(project / "conf"), base_env="base", default_run_env="local")
    TrackingHook().after_context_created(SimpleNamespace(project_path=project, config_loader=loader))
    config = loader["mlflow"]
    return {"uri": config["server"]["mlflow_tracking_uri"],
            "artifacts": config["tracking"]["experiment"]["create_experiment_kwargs"]["artifact_location"]}


def test_mlflow_yml_defaults_to_the_project_sqlite_store(kedro_project, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert _resolved_mlflow_config(kedro_project, monkeypatch) == {
        "uri": f"sqlite:///{kedro_project.as_posix()}/mlflow.db", "artifacts": (kedro_project / "mlruns").as_uri()}


def test_a_server_in_conf_local_keeps_artifacts_off_the_local_disk(kedro_project, monkeypatch):
    (kedro_project / "conf/local/mlflow.yml").write_text("server:\n  mlflow_tracking_uri: http://mlflow.example:5000\n")
    assert _resolved_mlflow_config(kedro_project, monkeypatch) == {"uri": "http://mlflow.example:5000", "artifacts": None}


def _finished_pid() -> int:
    """The pid of a process that has already exited (and been reaped)."""
    import subprocess
    import sys

    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_runs_whose_process_is_gone_are_marked_killed_and_others_stay_running(mlflow_tracking_store):
    import os

    from mlflow import MlflowClient

    from rodpo.hooks import HOST_TAG, PROCESS_START_TAG, mark_dead_runs_killed, process_identity

    client = MlflowClient(f"sqlite:///{mlflow_tracking_store.as_posix()}")
    experiment = client.create_experiment("killed-runs")
    dead_pid = _finished_pid()
    runs = {
        "dead": process_identity(dead_pid),
        "reused_pid": {**process_identity(), PROCESS_START_TAG: "another-boot:1"},  # our pid, another process
        "live": process_identity(),
        "other_host": {**process_identity(dead_pid), HOST_TAG: "elsewhere.example"},
        "untagged": {},
    }
    ids = {name: client.create_run(experiment, tags=tags).info.run_id for name, tags in runs.items()}

    killed = mark_dead_runs_killed(client)

    assert set(killed) & set(ids.values()) == {ids["dead"], ids["reused_pid"]}
    status = {name: client.get_run(run_id).info for name, run_id in ids.items()}
    assert {name: info.status for name, info in status.items()} == {
        "dead": "KILLED", "reused_pid": "KILLED", "live": "RUNNING", "other_host": "RUNNING", "untagged": "RUNNING"}
    assert status["dead"].end_time is not None and status["live"].end_time is None
    assert str(dead_pid) in client.get_run(ids["dead"]).data.tags["rodpo.killed"]
    assert os.getpid() != dead_pid


def _run_params(pipeline_name: str) -> dict:
    return {"pipeline_names": [pipeline_name], "tags": None, "node_names": None, "from_nodes": None,
            "to_nodes": None, "from_inputs": None, "load_versions": None}


def test_a_pipeline_run_tags_its_run_and_closes_the_runs_of_killed_sessions(kedro_project, monkeypatch, tmp_path):
    import mlflow
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project
    from kedro.io import DataCatalog
    from kedro.pipeline import Pipeline
    from mlflow import MlflowClient

    from rodpo.hooks import PID_TAG, process_identity

    uri = f"sqlite:///{(tmp_path / 'mlflow.db').as_posix()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(kedro_project)
    client = MlflowClient(uri)
    # what `kill -9` during `kedro run` leaves behind: a tagged run that nobody will ever close
    left_running = client.create_run(client.create_experiment("rodpo"),
                                     tags=process_identity(_finished_pid())).info.run_id

    bootstrap_project(kedro_project)
    with KedroSession.create(project_path=kedro_project) as session:
        context = session.load_context()
    hook = TrackingHook()
    hook.after_context_created(context)
    hook.before_pipeline_run(_run_params("warmup"), Pipeline([]), DataCatalog())
    try:
        new_run = client.get_run(hook.run_id)
    finally:
        hook.after_pipeline_run(_run_params("warmup"), Pipeline([]), DataCatalog())

    assert client.get_run(left_running).info.status == "KILLED"
    assert new_run.data.tags[PID_TAG] == str(os.getpid()) and new_run.info.status == "RUNNING"
    assert client.get_run(hook.run_id).info.status == "FINISHED" and mlflow.active_run() is None


def test_a_session_shows_no_resolver_deprecation_or_dotted_name_warnings(kedro_project):
    """What `kedro run` prints before the first node: a fresh process, settings imported once."""
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from kedro.framework.project import pipelines\n"
        "from kedro.framework.session import KedroSession\n"
        "from kedro.framework.startup import bootstrap_project\n"
        "bootstrap_project(sys.argv[1])\n"
        "with KedroSession.create(project_path=sys.argv[1]) as session:\n"
        "    context = session.load_context()\n"
        "    context.catalog, context.params, pipelines['__default__']\n"
        "print('session ok')\n"
    )
    result = subprocess.run([sys.executable, "-W", "default", "-c", script, str(kedro_project)],
                            cwd=kedro_project, capture_output=True, text=True, timeout=300)
    assert "session ok" in result.stdout, result.stderr[-3000:]
    assert "register_new_resolver() is deprecated" not in result.stderr
    assert "dataset names contain '.'" not in result.stderr
