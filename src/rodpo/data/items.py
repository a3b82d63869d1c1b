"""Item metadata (Amazon 2014/2018/2023 meta files, RecBole ``.item`` files) into the ``raw_items``
table (item_id, title, description, brand, categories, image_url): parsed line by line, since the
text needs cleaning anyway (HTML tags and entities, control characters, whitespace).
"""

from __future__ import annotations

import html
import logging
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import polars as pl

from rodpo.data.parsers import (
    ITEM_SCHEMA,
    RECBOLE_SEP,
    _BadLine,
    _existing,
    _format,
    _identifier,
    _load_record,
    _recbole_column,
    _recbole_header,
    _Tally,
)
from rodpo.data.reading import numbered_lines, text_lines

logger = logging.getLogger(__name__)

CATEGORY_LEVEL_SEP = " > "
CATEGORY_PATH_SEP = " | "
MAX_UNESCAPE_ROUNDS = 5  # 2014 dumps escape some entities twice ("&amp;amp;quot;" needs three rounds)


def parse_items(
    path: str | Path, source: str, *, max_malformed_fraction: float = 0.001
) -> pl.DataFrame:
    """Read a metadata file (or a RecBole ``.item`` file) into the raw_items table: cleaned text,
    "" for missing text, null for a missing image; the first line wins for a repeated item."""
    fmt = _format(source)
    path = _existing(path)
    tally = _Tally(path, source, max_malformed_fraction)
    if fmt == "recbole":
        rows = _recbole_item_rows(path, tally)
    else:
        rows = _amazon_item_rows(path, fmt, tally)
    columns: dict[str, list] = {name: [] for name in ITEM_SCHEMA}
    seen: set[str] = set()
    repeated = 0
    for row in rows:
        if row[0] in seen:
            repeated += 1
            continue
        seen.add(row[0])
        for name, value in zip(ITEM_SCHEMA, row):
            columns[name].append(value)
    tally.finish()
    if not seen:
        raise ValueError(f"{path}: no items found (empty file?); check the download and that "
                         f"source={source!r} matches the file.")
    if repeated:
        logger.info("%s: %d repeated item ids, kept the first line of each", path.name, repeated)
    return pl.DataFrame(columns, schema=ITEM_SCHEMA)



def clean_text(value: object) -> str:
    """Plain text from a raw field: HTML tags dropped, entities decoded, whitespace collapsed.

    Entities escaped several times are decoded until stable; control characters (C0, DEL, C1)
    other than whitespace are dropped, whitespace becomes one space. Lists (2018/2023
    descriptions) are cleaned element-wise and joined with spaces.
    """
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return " ".join(part for part in (clean_text(v) for v in value) if part)
    text = value if isinstance(value, str) else str(value)
    if "<" in text or "&" in text:
        text = _HTML_TAG.sub(" ", text)
        text = _unescape_until_stable(text)
        text = _HTML_TAG.sub(" ", text)  # tags that were entity-escaped (&lt;b&gt;)
    text = _CONTROL_CHARS.sub("", text)  # NUL, BEL, DEL, C1...: never meant as text
    return _WHITESPACE.sub(" ", text).strip()


def _unescape_until_stable(text: str) -> str:
    """Decode HTML entities again while that changes anything (bounded): the 2014 dumps hold
    double-escaped entities ("&amp;lt;"), which one pass would leave as "&lt;" in a title."""
    for _ in range(MAX_UNESCAPE_ROUNDS):
        decoded = html.unescape(text)
        if decoded == text:
            break
        text = decoded
    return text



# --------------------------------------------------------------------------- per format


def _item_amazon2014(record: dict) -> tuple:
    categories = record.get("categories") or []
    if categories and not isinstance(categories[0], (list, tuple)):
        categories = [categories]
    return (
        _identifier(record.get("asin"), "asin"),
        clean_text(record.get("title")),
        clean_text(record.get("description")),
        clean_text(record.get("brand")),
        _category_paths(categories),
        _url(record.get("imUrl")),
    )


def _item_amazon2018(record: dict) -> tuple:
    return (
        _identifier(record.get("asin"), "asin"),
        clean_text(record.get("title")),
        clean_text(record.get("description")),
        clean_text(record.get("brand")),
        _category_paths([record.get("category") or []]),
        _first_url(record.get("imageURLHighRes")) or _first_url(record.get("imageURL")),
    )


def _item_amazon2023(record: dict) -> tuple:
    details = record.get("details") if isinstance(record.get("details"), dict) else {}
    categories = record.get("categories") or []
    if not categories and record.get("main_category"):
        categories = [record["main_category"]]
    return (
        _identifier(record.get("parent_asin"), "parent_asin"),
        clean_text(record.get("title")),
        clean_text(record.get("description")),
        clean_text(record.get("store")) or clean_text(details.get("Brand")),
        _category_paths([categories]),
        _main_image_2023(record.get("images")),
    )


_ITEM_BUILDERS: dict[str, Callable[[dict], tuple]] = {
    "amazon2014": _item_amazon2014,
    "amazon2018": _item_amazon2018,
    "amazon2023": _item_amazon2023,
}


def _amazon_item_rows(path: Path, fmt: str, tally: _Tally) -> Iterator[tuple]:
    to_item = _ITEM_BUILDERS[fmt]
    for line_no, line in numbered_lines(path):
        try:
            row = to_item(_load_record(line, allow_literal=fmt == "amazon2014"))
        except _BadLine as err:
            tally.malformed(line_no, line, str(err))
            continue
        tally.good()
        yield row


def _recbole_item_rows(path: Path, tally: _Tally) -> Iterator[tuple]:
    header = _recbole_header(path)
    item_col = _recbole_column(header, "item_id", path)
    optional = {
        name: _recbole_column(header, name, path, required=False)
        for name in ("title", "description", "brand", "categories")
    }
    if optional["categories"] is None:  # S3-Rec style files: anonymous attribute tokens
        optional["categories"] = _recbole_column(header, "attributes", path, required=False)
    for line_no, line in text_lines(path, skip_header=True):
        fields = line.rstrip("\r\n").split(RECBOLE_SEP)
        if len(fields) > len(header):
            tally.malformed(line_no, line, f"{len(fields)} tab-separated fields, header has "
                                           f"{len(header)}")
            continue
        fields += [""] * (len(header) - len(fields))  # RecBole writes short rows for empty tails
        item = fields[item_col]
        if not item:
            tally.malformed(line_no, line, "empty item_id")
            continue
        tally.good()
        text = {k: clean_text(fields[i]) if i is not None else "" for k, i in optional.items()}
        yield (item, text["title"], text["description"], text["brand"], text["categories"], None)


def _category_paths(paths: list) -> str:
    out = []
    for levels in paths:
        if isinstance(levels, str):
            levels = [levels]
        path = CATEGORY_LEVEL_SEP.join(c for c in (clean_text(x) for x in levels or []) if c)
        if path and path not in out:
            out.append(path)
    return CATEGORY_PATH_SEP.join(out)


def _url(value: object) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def _first_url(values: object) -> str | None:
    if isinstance(values, str):
        return _url(values)
    if isinstance(values, (list, tuple)):
        for value in values:
            if url := _url(value):
                return url
    return None


def _main_image_2023(images: object) -> str | None:
    """The MAIN image (else the first one): its high-resolution URL, else the large one."""
    if not isinstance(images, list):
        return None
    images = [image for image in images if isinstance(image, dict)]
    main = [image for image in images if image.get("variant") == "MAIN"]
    for image in main + images:
        if url := _url(image.get("hi_res")) or _url(image.get("large")):
            return url
    return None



_HTML_TAG = re.compile(r"<(?:/?[A-Za-z][^<>]*|!--.*?--)>", re.DOTALL)
_WHITESPACE = re.compile(r"\s+")
# C0 controls, DEL and C1 controls that are not whitespace (whitespace ones collapse to a space).
_CONTROL_CHARS = re.compile(
    "[" + "".join(re.escape(chr(c)) for c in [*range(0x20), *range(0x7F, 0xA0)]
                  if not chr(c).isspace()) + "]"
)
