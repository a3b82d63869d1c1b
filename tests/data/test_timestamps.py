"""Millisecond timestamps become seconds: detected (with a warning naming the file) or forced."""

from __future__ import annotations

import logging

import polars as pl
import pytest

from rodpo.data.parsers import parse_interactions
from rodpo.data.timestamps import timestamps_in_seconds

HEADER = "user_id:token\titem_id:token\ttimestamp:float\n"


def _inter(path, times: list[int]):
    path.write_text(HEADER + "".join(f"u{n}\ti{n}\t{t}\n" for n, t in enumerate(times)))
    return path


def test_auto_detects_milliseconds_warns_naming_the_file_and_converts(tmp_path, caplog):
    path = _inter(tmp_path / "mydata.inter", [1_588_687_728_923, 1_588_615_855_070, 1_600_000_000_999])
    with caplog.at_level(logging.WARNING, logger="rodpo.data.timestamps"):
        df = parse_interactions(path, "recbole")
    assert df["timestamp"].to_list() == [1_588_687_728, 1_588_615_855, 1_600_000_000]
    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 1
    assert str(path) in warnings[0] and "milliseconds" in warnings[0] and "timestamp_unit" in warnings[0]


def test_auto_keeps_seconds_and_says_nothing(tmp_path, caplog):
    path = _inter(tmp_path / "mydata.inter", [1_500_000_000, 99_999_999_999])  # median below 1e11
    with caplog.at_level(logging.WARNING, logger="rodpo.data.timestamps"):
        df = parse_interactions(path, "recbole")
    assert df["timestamp"].to_list() == [1_500_000_000, 99_999_999_999]
    assert not caplog.records


def test_a_forced_unit_wins_over_the_values(tmp_path, caplog):
    millis = _inter(tmp_path / "millis.inter", [1_588_687_728_923])
    seconds = _inter(tmp_path / "seconds.inter", [1_500_000_123])
    with caplog.at_level(logging.WARNING, logger="rodpo.data.timestamps"):
        assert parse_interactions(millis, "recbole", timestamp_unit="s")["timestamp"].to_list() == [
            1_588_687_728_923]
        assert parse_interactions(seconds, "recbole", timestamp_unit="ms")["timestamp"].to_list() == [1_500_000]
    assert not caplog.records


def test_amazon2023_is_milliseconds_by_its_format(tmp_path):
    path = tmp_path / "All_Beauty.jsonl"
    path.write_text('{"user_id": "U1", "parent_asin": "B1", "timestamp": 1588687728923}\n')
    assert parse_interactions(path, "amazon2023")["timestamp"].to_list() == [1_588_687_728]
    assert parse_interactions(path, "amazon2023", timestamp_unit="ms")["timestamp"].to_list() == [1_588_687_728]


def test_an_unknown_unit_names_the_parameter(tmp_path):
    frame = pl.DataFrame({"timestamp": [1]})
    with pytest.raises(ValueError, match=r"data_processing.timestamp_unit='us'.*auto, s or ms"):
        timestamps_in_seconds(frame, "us", tmp_path / "x.inter")


@pytest.mark.parametrize(("unit", "times", "expected"), [
    ("auto", [1_588_687_728_923, 1_588_615_855_070, 1_600_000_000_999], [1_588_687_728, 1_588_615_855, 1_600_000_000]),
    ("auto", [1_500_000_000, 99_999_999_999], [1_500_000_000, 99_999_999_999]),
    ("ms", [1_588_687_728_923], [1_588_687_728]),
    ("s", [1_588_687_728_923], [1_588_687_728_923]),
])
def test_the_streaming_scan_converts_like_the_parser(tmp_path, unit, times, expected):
    """data_processing reads through rodpo.data.raw_scan: the same units, decided the same way."""
    from rodpo.data.raw_scan import scan_interactions

    path = _inter(tmp_path / "mydata.inter", times)
    scanned = scan_interactions(path, "recbole", timestamp_unit=unit).collect()
    assert scanned["timestamp"].to_list() == expected
    assert scanned.equals(parse_interactions(path, "recbole", timestamp_unit=unit))
    with pytest.raises(ValueError, match="data_processing.timestamp_unit='minutes'"):
        scan_interactions(path, "recbole", timestamp_unit="minutes")
