"""A UTF-8 byte order mark (Windows editors write one) never reaches a header name or a JSON line."""

from __future__ import annotations

import gzip

import pytest

from rodpo.data.items import parse_items
from rodpo.data.parsers import parse_interactions
from rodpo.data.reading import UTF8_BOM, first_line, numbered_lines

INTER = "user_id:token\titem_id:token\ttimestamp:float\nu1\ti1\t1500000000\nu2\ti2\t1500000100\n"
ITEM = "item_id:token\ttitle:token_seq\ni1\tRed lipstick\ni2\tBlue brush\n"
REVIEWS = ('{"reviewerID": "U1", "asin": "B1", "unixReviewTime": 1509580800}\n'
           '{"reviewerID": "U2", "asin": "B2", "unixReviewTime": 1409580800}\n')


def _write(path, text: str, compressed: bool):
    data = UTF8_BOM + text.encode()
    path.write_bytes(gzip.compress(data, mtime=0) if compressed else data)
    return path


@pytest.mark.parametrize("compressed", [False, True])
def test_a_bom_before_a_recbole_header_is_dropped(tmp_path, compressed):
    inter = _write(tmp_path / "mydata.inter", INTER, compressed)
    item = _write(tmp_path / "mydata.item", ITEM, compressed)
    assert first_line(inter) == "user_id:token\titem_id:token\ttimestamp:float"
    interactions = parse_interactions(inter, "recbole", max_malformed_fraction=0.0)
    assert interactions.rows() == [("u1", "i1", 1500000000), ("u2", "i2", 1500000100)]
    items = parse_items(item, "recbole", max_malformed_fraction=0.0)
    assert items.select("item_id", "title").rows() == [("i1", "Red lipstick"), ("i2", "Blue brush")]


@pytest.mark.parametrize("compressed", [False, True])
def test_a_bom_before_the_first_json_line_is_dropped(tmp_path, compressed):
    reviews = _write(tmp_path / "Toys_5.json", REVIEWS, compressed)
    assert [line for _, line in numbered_lines(reviews)][0].startswith(b'{"reviewerID"')
    df = parse_interactions(reviews, "amazon2018", max_malformed_fraction=0.0)  # no line lost to the BOM
    assert df.rows() == [("U1", "B1", 1509580800), ("U2", "B2", 1409580800)]
