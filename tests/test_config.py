"""Dataset presets and overrides in any Kedro environment, resolved after the environments merge.

The README's own-data route, exactly as documented: a preset in conf/local/parameters.yml, run by
`kedro run --params=dataset=<name>`; and an override of one field of a base preset in conf/local.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from rodpo.config import MergedParametersConfigLoader, UnknownDatasetError

REPO_ROOT = Path(__file__).resolve().parents[1]
KEDRO = Path(sys.executable).with_name("kedro")


def write_recbole_inter(folder: Path, name: str, n_users: int = 40, n_items: int = 25, seed: int = 0) -> None:
    """A small RecBole .inter file in which every user and item survives the 5-core filter."""
    rng = np.random.default_rng(seed)
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    for user in range(n_users):
        for position, item in enumerate(rng.choice(n_items, size=8, replace=False)):
            lines.append(f"u{user}\ti{item}\t{1_500_000_000 + 86_400 * (10 * user + position)}")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.inter").write_text("\n".join(lines) + "\n")


def loader(project: Path, env: str | None = None, runtime_params: dict | None = None):
    return MergedParametersConfigLoader(
        conf_source=str(project / "conf"), env=env, runtime_params=runtime_params or {},
        base_env="base", default_run_env="local", merge_strategy={"parameters": "soft"},
    )


def test_a_preset_in_conf_local_is_seen_by_dataset_spec(kedro_project):
    (kedro_project / "conf/local/parameters.yml").write_text(
        "datasets:\n  mydata: {source: recbole, category: mydata, base_url: /data/mydata_folder}\n")
    params = loader(kedro_project, runtime_params={"dataset": "mydata"})["parameters"]
    assert params["dataset_spec"] == {"source": "recbole", "category": "mydata", "base_url": "/data/mydata_folder"}


def test_one_field_of_a_base_preset_is_overridden_from_conf_local(kedro_project):
    (kedro_project / "conf/local/parameters.yml").write_text(
        "datasets:\n  amazon-beauty:\n    base_url: /mirror/beauty\n")
    params = loader(kedro_project, runtime_params={"dataset": "amazon-beauty"})["parameters"]
    assert params["dataset_spec"]["base_url"] == "/mirror/beauty"
    assert params["dataset_spec"]["source"] == "recbole"  # the rest of the base preset is kept
    assert params["dataset_spec"]["features"]["text"]["template"] == "{title}"


def test_another_environment_and_runtime_params_win_in_that_order(kedro_project):
    (kedro_project / "conf/mirror").mkdir()
    (kedro_project / "conf/mirror/parameters.yml").write_text("datasets:\n  beauty: {base_url: /env/mirror}\n")
    assert loader(kedro_project, env="mirror", runtime_params={"dataset": "beauty"})["parameters"][
        "dataset_spec"]["base_url"] == "/env/mirror"
    runtime = {"dataset": "beauty", "dataset_spec": {"base_url": "/cli"}}
    assert loader(kedro_project, env="mirror", runtime_params=runtime)["parameters"]["dataset_spec"][
        "base_url"] == "/cli"


@pytest.mark.parametrize("own_preset", [False, True])
def test_an_unknown_dataset_lists_the_presets(kedro_project, own_preset):
    if own_preset:  # the presets of conf/local are listed too
        (kedro_project / "conf/local/parameters.yml").write_text("datasets:\n  mydata: {source: recbole}\n")
    with pytest.raises(UnknownDatasetError, match=r"dataset='nonexistent' is not a dataset preset") as info:
        loader(kedro_project, runtime_params={"dataset": "nonexistent"})["parameters"]
    presets = str(info.value).split("the presets are: ")[1].split(".")[0].split(", ")
    base = yaml.safe_load((kedro_project / "conf/base/parameters_data_download.yml").read_text())["datasets"]
    assert presets == sorted([*base, *(["mydata"] if own_preset else [])])
    assert {"demo", "amazon-beauty", "amazon-beauty-meta", "beauty2023", "toys2023"} <= set(presets)


def test_kedro_run_on_an_unknown_dataset_names_the_presets(kedro_project):
    result = _kedro_run(kedro_project, "--pipelines=data_download", "--params=dataset=nonexistent")
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "dataset='nonexistent' is not a dataset preset; the presets are: amazon-beauty, amazon-beauty-meta, beauty" in output
    assert "InterpolationKeyError" not in output


def _newest(versioned: Path) -> Path:
    """A versioned dataset's newest file, <path>/<version>/<name>."""
    return sorted(versioned.iterdir())[-1] / versioned.name


def _kedro_run(project: Path, *arguments: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([str(KEDRO), "run", *arguments], cwd=project, env=environment,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_kedro_run_processes_a_conf_local_preset_and_a_base_preset_override(kedro_project, tmp_path):
    """Both README routes through the real CLI: a new preset, and one changed field of a base preset."""
    write_recbole_inter(tmp_path / "mine", "mydata", seed=1)
    write_recbole_inter(tmp_path / "beauty_mirror", "amazon-beauty", n_users=30, seed=2)
    (kedro_project / "conf/local/parameters.yml").write_text(
        f"datasets:\n"
        f"  mydata: {{source: recbole, category: mydata, base_url: {tmp_path / 'mine'}}}\n"
        f"  amazon-beauty:\n    base_url: {tmp_path / 'beauty_mirror'}\n")
    for dataset, n_users in (("mydata", 40), ("amazon-beauty", 30)):
        result = _kedro_run(kedro_project, "--pipelines=data_download,data_processing", f"--params=dataset={dataset}")
        assert result.returncode == 0, result.stderr[-3000:]
        stats = json.loads(_newest(kedro_project / f"data/08_reporting/{dataset}/dataset_stats.json").read_text())
        assert stats["users"] == n_users
        interactions = _newest(kedro_project / f"data/03_primary/{dataset}/interactions.parquet")
        assert pl.read_parquet(interactions).height == n_users * 8
