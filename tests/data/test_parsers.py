"""Parsers on hand-written lines in each real raw format; expected values worked out by hand."""

from __future__ import annotations

import gzip
import json
import logging
import re
from pathlib import Path

import polars as pl
import pytest

from rodpo.data import parsers, reading
from rodpo.data.items import clean_text, parse_items
from rodpo.data.parsers import (
    INTERACTION_SCHEMA,
    ITEM_SCHEMA,
    MalformedInputError,
    parse_interactions,
    recbole_files,
)


def write_gz(path: Path, lines: list[str]) -> Path:
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode(), mtime=0))
    return path


def rows(df: pl.DataFrame) -> list[tuple]:
    return [tuple(r) for r in df.iter_rows()]


# ----------------------------------------------------------------- interactions

REVIEWS_2014 = [
    '{"reviewerID": "A2SUAM1J3GNN3B", "asin": "0000013714", "reviewerName": "J. McDonald", '
    '"helpful": [2, 3], "reviewText": "I bought this for my husband.", "overall": 5.0, '
    '"summary": "Heavenly Highway Hymns", "unixReviewTime": 1252800000, '
    '"reviewTime": "09 13, 2009"}',
    '{"reviewerID": "A2SUAM1J3GNN3B", "asin": "0000013715", "helpful": [0, 0], '
    '"reviewText": "", "overall": 4.0, "summary": "ok", "unixReviewTime": 1252800000, '
    '"reviewTime": "09 13, 2009"}',
]

REVIEWS_2018 = [
    '{"overall": 5.0, "verified": true, "reviewTime": "11 2, 2017", "reviewerID": "U2", '
    '"asin": "B0002", "style": {"Size:": " Large"}, "reviewText": "Great", '
    '"unixReviewTime": 1509580800, "image": ["https://x/1.jpg"]}',
    '{"overall": 3.0, "verified": false, "reviewerID": "U1", "asin": "B0001", '
    '"unixReviewTime": 1409580800}',
    '{"overall": 4.0, "reviewerID": "U1", "asin": "B0003", "unixReviewTime": 1309580800}',
]


def test_amazon2018_reviews_keep_file_order(tmp_path):
    df = parse_interactions(write_gz(tmp_path / "Toys_5.json.gz", REVIEWS_2018), "amazon2018")
    assert df.schema == pl.Schema(INTERACTION_SCHEMA)
    assert rows(df) == [("U2", "B0002", 1509580800), ("U1", "B0001", 1409580800),
                        ("U1", "B0003", 1309580800)]


def test_demo_source_reads_the_2018_format(tmp_path):
    df = parse_interactions(write_gz(tmp_path / "Demo_5.json.gz", REVIEWS_2018), "demo")
    assert df.height == 3


def test_amazon2014_reviews(tmp_path):
    df = parse_interactions(write_gz(tmp_path / "reviews_Beauty_5.json.gz", REVIEWS_2014),
                            "amazon2014")
    assert rows(df) == [("A2SUAM1J3GNN3B", "0000013714", 1252800000),
                        ("A2SUAM1J3GNN3B", "0000013715", 1252800000)]


def test_amazon2023_uses_parent_asin_and_milliseconds(tmp_path):
    lines = [
        '{"rating": 5.0, "title": "Such a lovely scent", "text": "x", "images": [], '
        '"asin": "B00YQ6X8EO", "parent_asin": "B00YQ6X8EO", "user_id": '
        '"AGKHLEW2SOWHNMFQIJGBECAF7INQ", "timestamp": 1588687728923, "helpful_vote": 0, '
        '"verified_purchase": true}',
        '{"rating": 4.0, "title": "t", "text": "y", "images": [], "asin": "B081TJ8YS3", '
        '"parent_asin": "B081TJ8YS2", "user_id": "AGKHLEW2SOWHNMFQIJGBECAF7INQ", '
        '"timestamp": 1588615855070, "helpful_vote": 1, "verified_purchase": true}',
    ]
    df = parse_interactions(write_gz(tmp_path / "All_Beauty.jsonl.gz", lines), "amazon2023")
    assert rows(df) == [("AGKHLEW2SOWHNMFQIJGBECAF7INQ", "B00YQ6X8EO", 1588687728),
                        ("AGKHLEW2SOWHNMFQIJGBECAF7INQ", "B081TJ8YS2", 1588615855)]


def test_malformed_line_tolerated_under_threshold(tmp_path, caplog):
    lines = [REVIEWS_2018[0], "{not json", REVIEWS_2018[1],
             '{"reviewerID": "U9", "asin": "B0009"}',  # no time
             '{"reviewerID": "U3", "asin": "B0003", "unixReviewTime": 1409580801.0}',
             "", REVIEWS_2018[2]]
    path = write_gz(tmp_path / "Toys_5.json.gz", lines)
    with caplog.at_level(logging.WARNING, logger="rodpo.data.parsers"):
        df = parse_interactions(path, "amazon2018", max_malformed_fraction=0.5)
    assert rows(df) == [("U2", "B0002", 1509580800), ("U1", "B0001", 1409580800),
                        ("U3", "B0003", 1409580801), ("U1", "B0003", 1309580800)]
    assert "2 of 6 lines malformed" in caplog.text


def test_malformed_line_over_threshold_names_file_and_line(tmp_path):
    path = write_gz(tmp_path / "Toys_5.json.gz", [REVIEWS_2018[0], REVIEWS_2018[1], "{oops"])
    with pytest.raises(MalformedInputError) as info:
        parse_interactions(path, "amazon2018")
    message = str(info.value)
    assert str(path) in message
    assert "1 of 3 lines" in message
    assert "line 3" in message and "{oops" in message
    assert "max_malformed_fraction" in message


def test_line_numbers_and_order_across_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(reading, "BLOCK_BYTES", 150)  # several lines per block, many blocks
    good = [f'{{"reviewerID": "U{i}", "asin": "I{i % 7}", "unixReviewTime": {1000 - i}}}'
            for i in range(40)]
    lines = good[:29] + ['{"reviewerID": "U", "asin": 5, "unixReviewTime": "x"}'] + good[29:]
    path = write_gz(tmp_path / "Toys_5.json.gz", lines)
    with pytest.raises(MalformedInputError, match="first at line 30 "):
        parse_interactions(path, "amazon2018")
    df = parse_interactions(path, "amazon2018", max_malformed_fraction=0.1)
    assert df["user_id"].to_list() == [f"U{i}" for i in range(40)]
    assert df["timestamp"].to_list() == [1000 - i for i in range(40)]


def test_truncated_gzip_is_reported(tmp_path):
    data = gzip.compress(("\n".join(REVIEWS_2018 * 200) + "\n").encode())
    path = tmp_path / "Toys_5.json.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        parse_interactions(path, "amazon2018")


def test_unknown_source_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="amazon2018"):
        parse_interactions(tmp_path / "x.json.gz", "amazon2019")


# ----------------------------------------------------------------- recbole


def test_recbole_typed_header_in_any_column_order(tmp_path):
    (tmp_path / "toy.inter").write_text(
        "timestamp:float\titem_id:token\trating:float\tuser_id:token\n"
        "1318896000.0\tB004756YJA\t5.0\tA1YJ\n"
        "1318896000\tB004ZT0SSG\t4.0\tA1YJ\n"
        "1328140800.5\tB0020YLEYK\t3.0\tA2ZZ\n"
    )
    (tmp_path / "toy.item").write_text(
        "item_id:token\tbrand:token\ttitle:token_seq\tcategories:token_seq\n"
        "B004756YJA\tOPI\tnail lacquer  simmer\tBeauty Nails\n"
        "B004ZT0SSG\t\tred &amp; shatter\n"
    )
    inter, item = recbole_files(tmp_path, "toy")
    df = parse_interactions(inter, "recbole")
    assert rows(df) == [("A1YJ", "B004756YJA", 1318896000), ("A1YJ", "B004ZT0SSG", 1318896000),
                        ("A2ZZ", "B0020YLEYK", 1328140800)]
    items = parse_items(item, "recbole")
    assert rows(items) == [("B004756YJA", "nail lacquer simmer", "", "OPI", "Beauty Nails", None),
                           ("B004ZT0SSG", "red & shatter", "", "", "", None)]


def test_recbole_attributes_stand_in_for_categories_and_item_file_is_optional(tmp_path):
    (tmp_path / "s3.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\n"
                                       "u\ti\t7\nu\tj\tbad\n")
    (tmp_path / "s3b.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\nu\ti\t7\n")
    (tmp_path / "s3b.item").write_text("item_id:token\ttitle:token_seq\tattributes:token_seq\n"
                                       "i\tred polish\ta173 a1\n")
    assert recbole_files(tmp_path, "s3")[1] is None
    with pytest.raises(MalformedInputError, match="line 3"):
        parse_interactions(tmp_path / "s3.inter", "recbole")
    items = parse_items(recbole_files(tmp_path, "s3b")[1], "recbole")
    assert rows(items) == [("i", "red polish", "", "", "a173 a1", None)]
    with pytest.raises(FileNotFoundError, match="nope.inter"):
        recbole_files(tmp_path, "nope")


def test_recbole_real_benchmark_header_is_understood():
    folder = Path(__file__).resolve().parents[3] / "shared" / "benchmarks" / "amazon-beauty"
    if not folder.is_dir():
        pytest.skip("shared amazon-beauty benchmark not present")
    inter, item = recbole_files(folder, "amazon-beauty")
    head = parse_items(item, "recbole").row(1)
    assert head == ("B004ZT0SSG", "red shatter crackle nail polish e55", "", "",
                    "a173 a1 a162 a171", None)
    assert parse_interactions(inter, "recbole").row(0) == ("A1YJEY40YUW4SE", "B004756YJA",
                                                           1318896000)


# ----------------------------------------------------------------- items

META_2014 = [
    "{'asin': '0000031852', 'title': 'Girls Ballet Tutu Zebra Hot Pink', 'price': 3.17, "
    "'imUrl': 'http://ecx.images-amazon.com/images/I/51fAmVkTbyL._SY300_.jpg', "
    "'related': {'also_bought': ['B00JHONN1S']}, 'salesRank': {'Toys & Games': 211836}, "
    "'brand': 'Coxlists', 'categories': [['Sports & Outdoors', 'Other Sports', 'Dance']], "
    "'description': 'Great for  dress-up.'}",
    "{'asin': '0000031909', 'title': \"Girl's Tutu\", 'categories': [['Clothing, Shoes & "
    "Jewelry', 'Girls'], ['Sports & Outdoors', 'Dance']], 'description': 'A &amp; B', "
    "'related': {'bought_together': ['X']}, 'salesRank': None}",
    "__import__('os').system('echo pwned')",
]


def test_amazon2014_meta_python_literals(tmp_path):
    path = write_gz(tmp_path / "meta_Toys.json.gz", META_2014)
    items = parse_items(path, "amazon2014", max_malformed_fraction=0.5)
    assert items.schema == pl.Schema(ITEM_SCHEMA)
    assert rows(items) == [
        ("0000031852", "Girls Ballet Tutu Zebra Hot Pink", "Great for dress-up.", "Coxlists",
         "Sports & Outdoors > Other Sports > Dance",
         "http://ecx.images-amazon.com/images/I/51fAmVkTbyL._SY300_.jpg"),
        ("0000031909", "Girl's Tutu", "A & B", "",
         "Clothing, Shoes & Jewelry > Girls | Sports & Outdoors > Dance", None),
    ]


def test_amazon2018_meta_cleans_html_and_prefers_high_res(tmp_path):
    lines = [
        '{"category": ["Clothing, Shoes &amp; Jewelry", "Women", ""], "description": '
        '["<b>Soft</b> cotton.", "Machine\\n   washable"], "title": "Tom &amp; Jerry&#39;s '
        '<span class=\\"a-bold\\">Tee</span>", "brand": "Acme", "also_buy": ["B0009"], '
        '"imageURL": ["http://a/small.jpg"], "imageURLHighRes": ["http://a/large.jpg"], '
        '"asin": "B0001"}',
        '{"category": [], "description": [], "title": "Plain", "imageURL": ["http://a/s2.jpg"], '
        '"imageURLHighRes": [], "asin": "B0002"}',
        '{"title": "No picture", "brand": "  Zed\\n Co ", "asin": "B0003"}',
        '{"title": "Repeated line, ignored", "asin": "B0001"}',
    ]
    items = parse_items(write_gz(tmp_path / "meta_Toys.json.gz", lines), "amazon2018")
    assert rows(items) == [
        ("B0001", "Tom & Jerry's Tee", "Soft cotton. Machine washable", "Acme",
         "Clothing, Shoes & Jewelry > Women", "http://a/large.jpg"),
        ("B0002", "Plain", "", "", "", "http://a/s2.jpg"),
        ("B0003", "No picture", "", "Zed Co", "", None),
    ]


def test_amazon2023_meta(tmp_path):
    lines = [
        '{"main_category": "All Beauty", "title": "Howard LC0008 Leather Conditioner", '
        '"average_rating": 4.8, "features": ["f"], "description": ["Conditions &amp; protects"], '
        '"price": null, "images": [{"thumb": "t1", "large": "L1", "variant": "PT01", '
        '"hi_res": "H1"}, {"thumb": "t0", "large": "L0", "variant": "MAIN", "hi_res": null}], '
        '"videos": [], "store": "Howard Products", "categories": [], "details": '
        '{"Brand": "Howard"}, "parent_asin": "B01CUPMQZE", "bought_together": null}',
        '{"main_category": "All Beauty", "title": "t", "description": [], "images": [], '
        '"store": null, "categories": ["Beauty", "Hair Care"], "details": {"Brand": "Acme"}, '
        '"parent_asin": "B0XYZ"}',
    ]
    items = parse_items(write_gz(tmp_path / "meta_All_Beauty.jsonl.gz", lines), "amazon2023")
    assert rows(items) == [
        ("B01CUPMQZE", "Howard LC0008 Leather Conditioner", "Conditions & protects",
         "Howard Products", "All Beauty", "L0"),
        ("B0XYZ", "t", "", "Acme", "Beauty > Hair Care", None),
    ]


def test_meta_line_without_id_counts_as_malformed(tmp_path):
    path = write_gz(tmp_path / "meta_Toys.json.gz", ['{"title": "no asin"}', '{"asin": "A1"}'])
    with pytest.raises(MalformedInputError, match=re.escape(f"{path}: 1 of 2 lines")):
        parse_items(path, "amazon2018")


@pytest.mark.parametrize(
    ("raw", "clean"),
    [("a &amp; b", "a & b"), ("&lt;b&gt;bold&lt;/b&gt; x", "bold x"), ("1 < 2 &gt; 0", "1 < 2 > 0"),
     ("<div>\n x\t y </div>", "x y"), (["a", "", " b "], "a b"), (None, "")],
)
def test_clean_text(raw, clean):
    assert clean_text(raw) == clean


def test_missing_file_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="download"):
        parse_interactions(tmp_path / "Toys_5.json.gz", "amazon2018")


# ----------------------------------------------------------------- hostile values

# Times no int64 column can hold, as JSON would carry them (floats, big ints, numeric strings).
OUT_OF_RANGE_TIMES = ["1e23", "-1e23", "1e300", "-1e300", "100000000000000000000000",
                      "9223372036854775808", '"1e23"', '"inf"', '"-inf"', '"nan"']
REVIEW_LINE = {  # one good review line per source, with {t} for the time
    "amazon2014": '{{"reviewerID": "U{n}", "asin": "B1", "unixReviewTime": {t}}}',
    "amazon2018": '{{"reviewerID": "U{n}", "asin": "B1", "unixReviewTime": {t}}}',
    "demo": '{{"reviewerID": "U{n}", "asin": "B1", "unixReviewTime": {t}}}',
    "amazon2023": '{{"user_id": "U{n}", "parent_asin": "B1", "timestamp": {t}}}',
}


@pytest.mark.parametrize("source", sorted(REVIEW_LINE))
@pytest.mark.parametrize("raw_time", OUT_OF_RANGE_TIMES)
def test_timestamp_beyond_int64_is_a_malformed_line(tmp_path, source, raw_time):
    line = REVIEW_LINE[source]
    lines = [line.format(n=1, t=1409580800000), line.format(n=2, t=raw_time),
             line.format(n=3, t=1409580801000)]
    path = write_gz(tmp_path / "reviews.json.gz", lines)
    with pytest.raises(MalformedInputError) as info:
        parse_interactions(path, source)
    message = str(info.value)
    assert str(path) in message and "first at line 2" in message and "max_malformed_fraction" in message
    df = parse_interactions(path, source, max_malformed_fraction=0.5)
    assert df["user_id"].to_list() == ["U1", "U3"]


@pytest.mark.parametrize("raw_time", ["1e23", "-1e23", "1e300", "inf", "-inf", "nan",
                                      "100000000000000000000000"])
def test_recbole_timestamp_beyond_int64_is_a_malformed_line(tmp_path, raw_time):
    path = tmp_path / "toy.inter"
    path.write_text("user_id:token\titem_id:token\ttimestamp:float\n"
                    f"u1\ti\t7\nu2\ti\t{raw_time}\nu3\ti\t8\n")
    with pytest.raises(MalformedInputError, match=re.escape(f"{path}: 1 of 3 lines")) as info:
        parse_interactions(path, "recbole")
    assert "first at line 3" in str(info.value)
    assert rows(parse_interactions(path, "recbole", max_malformed_fraction=0.5)) == [
        ("u1", "i", 7), ("u3", "i", 8)]


@pytest.mark.parametrize(
    ("raw", "clean"),
    [("Tom &amp;amp; Jerry", "Tom & Jerry"),
     ("say &amp;amp;quot;hi&amp;amp;quot;", 'say "hi"'),  # escaped three times
     ("&amp;lt;b&amp;gt;Bold&amp;lt;/b&amp;gt; tee", "Bold tee"),  # escaped tags are dropped
     ("1 &amp;lt; 2", "1 < 2"),
     ("Lip\x00stick\x07 red", "Lipstick red"),  # NUL, BEL dropped
     ("a\x1b[0mb\x7fc\x85d\x9fe", "a[0mbc de"),  # ESC, DEL, C1 dropped; NEL is whitespace
     ("tab\there\r\nnew\x0bline\x0cff", "tab here new line ff")],  # whitespace -> one space
)
def test_clean_text_decodes_until_stable_and_drops_control_characters(raw, clean):
    assert clean_text(raw) == clean


DIRTY = {"title": "Tom &amp;amp; Jerry&amp;#39;s \x00Tee\x07", "brand": "A&amp;amp;B\x01",
         "category": "Toys &amp;amp; Games\x00", "description": "&amp;lt;b&amp;gt;Soft\x1b&amp;lt;/b&amp;gt;"}
CLEAN = ("Tom & Jerry's Tee", "Soft", "A&B", "Toys & Games")


def _dirty_meta_line(source: str) -> str:
    if source == "amazon2014":  # a Python dict literal, as in the 2014 dumps
        return repr({"asin": "B1", "title": DIRTY["title"], "brand": DIRTY["brand"],
                     "categories": [[DIRTY["category"]]], "description": DIRTY["description"]})
    record = {"title": DIRTY["title"], "description": [DIRTY["description"]]}
    if source == "amazon2023":
        record.update(parent_asin="B1", store=DIRTY["brand"], categories=[DIRTY["category"]])
    else:
        record.update(asin="B1", brand=DIRTY["brand"], category=[DIRTY["category"]])
    return json.dumps(record)  # control characters travel as \u0000 escapes, as JSON requires


@pytest.mark.parametrize("source", ["amazon2014", "amazon2018", "amazon2023", "demo"])
def test_meta_text_fields_are_fully_unescaped_and_free_of_control_characters(tmp_path, source):
    path = write_gz(tmp_path / "meta.json.gz", [_dirty_meta_line(source)])
    assert rows(parse_items(path, source)) == [("B1", *CLEAN, None)]


def test_recbole_item_text_is_fully_unescaped_and_free_of_control_characters(tmp_path):
    path = tmp_path / "toy.item"
    path.write_text("item_id:token\ttitle:token_seq\tdescription:token_seq\tbrand:token\t"
                    "categories:token_seq\n"
                    f"B1\t{DIRTY['title']}\t{DIRTY['description']}\t{DIRTY['brand']}\t"
                    f"{DIRTY['category']}\n")
    assert rows(parse_items(path, "recbole")) == [("B1", *CLEAN, None)]
