"""Shared fixtures: an isolated copy of the Kedro project so tests never write into the repo."""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import polars as pl
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_BEAUTY = REPO_ROOT.parent / "shared" / "benchmarks" / "amazon-beauty"

os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def make_project_copy(parent: Path) -> Path:
    """A throwaway project root under `parent`: the repo's pyproject and conf, empty src/ and data/.

    The package itself is imported from the installed (editable) ``rodpo``; Kedro only needs
    ``src/`` to exist.
    """
    project = parent / "project"
    project.mkdir()
    (project / "src").mkdir()
    shutil.copy(REPO_ROOT / "pyproject.toml", project / "pyproject.toml")
    shutil.copytree(REPO_ROOT / "conf", project / "conf", ignore=shutil.ignore_patterns("local"))
    (project / "conf" / "local").mkdir()
    for layer in (REPO_ROOT / "data").iterdir():
        if layer.is_dir():
            (project / "data" / layer.name).mkdir(parents=True)
    return project


def run_in_project(project: Path, pipelines: list[str], runtime_params: dict) -> None:
    """Run `pipelines` through KedroSession inside `project`.

    Parameters hold project-relative paths (checkpoints, caches) and the experiments pipeline finds
    its conf from the working directory, so the run happens with `project` as the cwd.
    Runtime parameters are nested dicts: KedroSession, unlike `kedro run --params`, does not split
    dotted keys.
    """
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(project)
        bootstrap_project(project)
        with KedroSession.create(project_path=project, runtime_params=runtime_params) as session:
            session.run(pipeline_names=pipelines)


@contextmanager
def capture_trainer_log() -> Iterator[list[str]]:
    """Messages of the trainer's logger while the block runs.

    The handler sits on `rodpo.training` itself: Kedro's logging setup replaces the root handlers.
    """

    class _Records(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    messages: list[str] = []
    handler, trainer_logger = _Records(logging.INFO), logging.getLogger("rodpo.training")
    trainer_logger.addHandler(handler)
    try:
        yield messages
    finally:
        trainer_logger.removeHandler(handler)


def pytest_collection_modifyitems(config, items) -> None:
    """Tests marked `cuda` are skipped where torch sees no GPU (benchmarks/gpu_check.sh runs them on one)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (marker cuda): run benchmarks/gpu_check.sh on a GPU machine")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def kedro_runner():
    """`run_in_project` for tests (conftest is not importable as a module)."""
    return run_in_project


@pytest.fixture(scope="session")
def trainer_log():
    """`capture_trainer_log` for tests."""
    return capture_trainer_log


@pytest.fixture
def kedro_project(tmp_path: Path) -> Path:
    return make_project_copy(tmp_path)


@pytest.fixture(scope="session")
def project_copy_factory():
    """`make_project_copy` for module- or session-scoped fixtures."""
    return make_project_copy


@pytest.fixture(scope="session", autouse=True)
def mlflow_tracking_store(tmp_path_factory) -> Path:
    """Every MLflow run the tests start goes to a temporary SQLite store, never into the repo.

    rodpo.hooks lets MLFLOW_TRACKING_URI override the project's own mlflow.db.
    """
    store = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store.as_posix()}")
        yield store


# Small enough for a test (about a minute on 2 idle cores), big enough for every output to mean something.
# Nested dicts: KedroSession.create(runtime_params=...) does not split dotted keys (the CLI does).
DEMO_RESULTS_PARAMS = {
    "datasets": {"demo": {"demo": {"n_users": 500, "n_items": 200}}},
    "warmup": {"epochs": 2, "progress_bar": False},
    "rodpo": {"epochs": 1, "progress_bar": False},
}


@pytest.fixture(scope="session")
def demo_results(tmp_path_factory):
    """A project copy holding the outputs of `__default__` and `case_study` on a small demo dataset.

    Shared by the tests that read results (notebook, tracking, recommend). The run is tracked in its
    own MLflow store, `demo_results.tracking_uri`. Runs happen inside the project directory, since
    parameters hold project-relative paths (checkpoints, caches).
    """
    from types import SimpleNamespace

    parent = tmp_path_factory.mktemp("demo_results")
    project = make_project_copy(parent)
    tracking_uri = f"sqlite:///{(parent / 'mlflow.db').as_posix()}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
        run_in_project(project, ["__default__", "case_study"], DEMO_RESULTS_PARAMS)
    return SimpleNamespace(project=project, tracking_uri=tracking_uri, params=DEMO_RESULTS_PARAMS)


# ---- tiny synthetic sequence_splits with a planted pattern (model and training tests)
SPLIT_SCHEMA = {
    "user_id": pl.Int32, "train_item_ids": pl.List(pl.Int32), "train_timestamps": pl.List(pl.Int64),
    "valid_item_id": pl.Int32, "valid_timestamp": pl.Int64, "test_item_id": pl.Int32, "test_timestamp": pl.Int64,
}


def planted_splits(n_users: int = 120, n_items: int = 20, seed: int = 0) -> pl.DataFrame:
    """Every user walks the item ring: the next item is (item mod n_items) + 1, 90% of the time."""
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(1, n_users + 1):
        length = int(rng.integers(5, 13))
        items = [int(rng.integers(1, n_items + 1))]
        for _ in range(length - 1):
            follows = rng.random() < 0.9
            items.append(items[-1] % n_items + 1 if follows else int(rng.integers(1, n_items + 1)))
        times = (1_500_000_000 + np.cumsum(rng.integers(0, 5 * 86_400, size=length))).tolist()
        rows.append((user, items[:-2], times[:-2], items[-2], times[-2], items[-1], times[-1]))
    return pl.DataFrame(rows, schema=SPLIT_SCHEMA, orient="row")


@pytest.fixture
def split_schema():
    return SPLIT_SCHEMA


@pytest.fixture(scope="module")
def planted_data():
    from rodpo.sequences import build_sequence_data

    return build_sequence_data(planted_splits(), max_seq_len=8)


@pytest.fixture
def make_model(planted_data):
    """Factory of tiny models for `planted_data`; keyword arguments override ModelConfig fields."""
    from rodpo.model import ModelConfig, RoDPOModel

    def make(**overrides) -> RoDPOModel:
        data = planted_data
        values = dict(n_items=data.n_items, max_seq_len=data.max_seq_len, hidden_size=16, inner_size=32, n_heads=2,
                      modalities=("id",), moe_mode="sparse", temporal=True, time_min=data.time_min,
                      time_max=data.time_max, hidden_dropout=0.2, attn_dropout=0.2)
        values.update(overrides)
        return RoDPOModel(ModelConfig(**values))

    return make


@pytest.fixture(scope="session")
def load_module():
    """Load a file that is not importable as a package module (a benchmark script, a sibling test)."""

    def load(path: Path, name: str):
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load

