"""A local source that changes is copied again; one that is only touched is not; errors name it."""

from __future__ import annotations

import os

import pytest

from rodpo.data import provenance
from rodpo.data.download import download_file
from rodpo.data.parsers import parse_interactions

HEADER = "user_id:token\titem_id:token\ttimestamp:float\n"


def _copy(source, dest):
    return download_file(str(source), dest, progress=False)


def test_an_edited_local_source_is_copied_again(tmp_path):
    source, dest = tmp_path / "mine" / "mydata.inter", tmp_path / "raw" / "mydata.inter"
    source.parent.mkdir()
    source.write_text(HEADER + "u1\ti1\t1\nu2\ti2\t2\n")
    _copy(source, dest)
    source.write_text(HEADER + "u1\ti1\t1\n")  # cut to fewer rows
    assert _copy(source, dest).read_text() == HEADER + "u1\ti1\t1\n"
    record = provenance.read_record(dest)
    assert record["source"] == str(source)
    assert record["source_state"] == provenance.file_state(source)
    assert record["copy"]["sha256"] == provenance.sha256(source)


def test_a_same_size_edit_is_found_by_its_content(tmp_path):
    source, dest = tmp_path / "mydata.inter", tmp_path / "raw" / "mydata.inter"
    source.write_text(HEADER + "u1\ti1\t1\n")
    _copy(source, dest)
    source.write_text(HEADER + "u9\ti9\t9\n")
    os.utime(source, ns=(1, 1))  # another time, same size: only the hash can tell
    assert "u9" in _copy(source, dest).read_text()


def test_a_touched_source_with_the_same_bytes_is_not_copied_again(tmp_path):
    source, dest = tmp_path / "mydata.inter", tmp_path / "raw" / "mydata.inter"
    source.write_text(HEADER + "u1\ti1\t1\n")
    _copy(source, dest)
    copied = dest.stat().st_mtime_ns
    os.utime(source, ns=(2_000_000_000, 2_000_000_000))
    _copy(source, dest)
    assert dest.stat().st_mtime_ns == copied
    assert provenance.read_record(dest)["source_state"]["mtime_ns"] == 2_000_000_000  # no hash next time


def test_a_parse_error_names_the_source_and_the_copy(tmp_path):
    source, dest = tmp_path / "mine" / "mydata.inter", tmp_path / "raw" / "mydata.inter"
    source.parent.mkdir()
    source.write_text("user:token\titem_id:token\ttimestamp:float\nu1\ti1\t1\n")
    _copy(source, dest)
    with pytest.raises(ValueError, match="no 'user_id' column") as info:
        with provenance.naming_source(dest, str(source)):
            parse_interactions(dest, "recbole")
    assert str(dest) in str(info.value) and f"the copy of {source}" in str(info.value)
