"""The own-data route with a file the user corrects between runs: every run reads the file as it is now.

A RecBole preset in conf/local points at the user's folder. The first file has a broken header:
the error names the user's file, not only the copy in data/01_raw. The corrected file (still with
a Windows BOM) is read on the next run; a file cut to fewer users, and a preset moved to another
folder (a changed base_url), are read on the runs after, each time through `data_download` and
`data_processing` as `kedro run` does.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rodpo.data.reading import UTF8_BOM

pytestmark = pytest.mark.slow

HEADER = "user_id:token\titem_id:token\ttimestamp:float"
ITEMS_PER_USER = 8  # all of them survive the 5-core filter


def _write_inter(path: Path, n_users: int, *, header: str = HEADER, bom: bool = False) -> None:
    rng = np.random.default_rng(n_users)
    lines = [header] + [f"u{user}\ti{item}\t{1_500_000_000 + 86_400 * (10 * user + position)}"
                        for user in range(n_users)
                        for position, item in enumerate(rng.choice(25, size=ITEMS_PER_USER, replace=False))]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((UTF8_BOM if bom else b"") + ("\n".join(lines) + "\n").encode())


def _users(project: Path) -> int:
    stats = project / "data/08_reporting/mydata/dataset_stats.json"
    return json.loads((sorted(stats.iterdir())[-1] / stats.name).read_text())["users"]


def _use_folder(project: Path, folder: Path) -> None:
    (project / "conf/local/parameters.yml").write_text(
        f"datasets:\n  mydata: {{source: recbole, category: mydata, base_url: {folder}}}\n")


def test_a_corrected_own_data_file_is_read_again(kedro_project, kedro_runner, tmp_path):
    mine = tmp_path / "mine" / "mydata.inter"
    _use_folder(kedro_project, mine.parent)
    run = ["data_download", "data_processing"]
    params = {"dataset": "mydata"}

    _write_inter(mine, 40, header="user:token\titem_id:token\ttimestamp:float")
    with pytest.raises(ValueError, match="no 'user_id' column") as info:
        kedro_runner(kedro_project, run, params)
    assert f"data/01_raw/mydata/mydata.inter is the copy of {mine}" in str(info.value)

    _write_inter(mine, 40, bom=True)  # corrected, saved by an editor that writes a BOM
    kedro_runner(kedro_project, run, params)
    assert _users(kedro_project) == 40

    _write_inter(mine, 30)  # cut to fewer rows, BOM removed
    kedro_runner(kedro_project, run, params)
    assert _users(kedro_project) == 30
    manifest = json.loads((kedro_project / "data/01_raw/mydata/raw_files.json").read_text())
    assert manifest["copies"]["reviews"]["source"] == str(mine)
    assert manifest["copies"]["reviews"]["copy"]["size"] == mine.stat().st_size

    moved = tmp_path / "moved" / "mydata.inter"
    _write_inter(moved, 35)
    _use_folder(kedro_project, moved.parent)  # a changed base_url, same file name
    kedro_runner(kedro_project, run, params)
    assert _users(kedro_project) == 35
