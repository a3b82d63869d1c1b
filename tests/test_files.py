"""rodpo.files.atomic_write: the whole file or the old one, never half, and no temporary left behind."""

from __future__ import annotations

import pytest

from rodpo.files import atomic_write


def test_the_file_appears_whole_under_its_name_from_a_hidden_temporary(tmp_path):
    seen = []

    def write(temporary):
        seen.append(temporary)
        assert not (tmp_path / "out.json").exists()  # not yet under its final name
        temporary.write_text("{}")

    assert atomic_write(tmp_path / "out.json", write, suffix=".part") == tmp_path / "out.json"
    assert (tmp_path / "out.json").read_text() == "{}"
    assert seen[0].parent == tmp_path and seen[0].name.startswith(".out.json.") and seen[0].suffix == ".part"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_its_temporary(tmp_path):
    (tmp_path / "out.json").write_text("old")

    def fail(temporary):
        temporary.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(tmp_path / "out.json", fail)
    assert (tmp_path / "out.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_two_writers_never_share_a_temporary(tmp_path):
    names = []
    for _ in range(2):
        atomic_write(tmp_path / "out", lambda temporary: names.append(temporary.name) or temporary.write_text("x"))
    assert names[0] != names[1]
