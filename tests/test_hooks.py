"""Where tracked runs go (rodpo.hooks): the project's SQLite store unless MLFLOW_TRACKING_URI says otherwise."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

from kedro.config import OmegaConfigLoader
from kedro_mlflow.framework.hooks.mlflow_hook import MlflowHook

from rodpo.hooks import TrackingHook, _as_dict, artifact_location, tracking_uri


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

    assert _as_dict(Outer()) == {"lr": 0.001, "dpo": {"beta": 1.0}}
    assert _as_dict({"a": 1}) == {"a": 1} and _as_dict(Outer) is Outer and _as_dict(Path("x")) == Path("x")


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
