"""Item text templates: one sentence per item from its metadata, with empty fields left out cleanly.

A template such as "{title}. Brand: {brand}. Category: {categories}." is read as sentences: it is
split at `segment_separator` (". ") and a final ".", "!" or "?" is the text's ending. A sentence is
kept only when every field it names has a value (a letter or a digit), so a missing brand takes
its "Brand:" label with it; a sentence without fields is kept only beside a kept field sentence.
Kept sentences are joined with the separator, without doubling a full stop a value already ends
with, and the ending is added unless the text already ends in sentence punctuation. An item with
no usable field gives "". So the template adds no "Brand: .", ". ." or trailing "Brand:" (a value
may hold its own, e.g. a title "20.3 Fl Oz. . (Pack of 3)").
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Any

from rodpo.data.items import CATEGORY_PATH_SEP
from rodpo.features.common import item_column

DEFAULT_TEMPLATE = "{title}. Brand: {brand}. Category: {first_category_path}"
SEGMENT_SEPARATOR = ". "
SENTENCE_ENDINGS = (".", "!", "?")
# Placeholders -> the items-table column each one reads.
TEXT_FIELDS = {"title": "title", "brand": "brand", "description": "description",
               "categories": "categories", "first_category_path": "categories"}
TEMPLATE_PARAMETERS = ("feature_extraction.text.template", "dataset_spec.features.text.template")


@dataclass(frozen=True)
class Segment:
    """One sentence of a template and the fields it names."""

    text: str
    fields: tuple[str, ...]


def check_template(template: object, parameter: str | None = None) -> str:
    """Return `template` if it is a string, else raise an error that says how to pass one.

    `kedro run --params=feature_extraction.text.template={title}` hands over a dict: Kedro reads
    --params values as YAML (OmegaConf dot-list), where an unquoted {title} is a mapping.
    `parameter` names the option it came from (both are named when unknown).
    """
    if isinstance(template, str):
        return template
    name = parameter or TEMPLATE_PARAMETERS[0]
    raise ValueError(
        f"{parameter or ' / '.join(TEMPLATE_PARAMETERS)} must be a string, got a "
        f"{type(template).__name__}: {template!r}. Kedro reads --params values as YAML, where an "
        "unquoted {title} is a mapping; quote the value inside the option, e.g. "
        f"kedro run --params='{name}=\"{{title}}. Brand: {{brand}}\"' (single quotes for the "
        "shell, double quotes for YAML). --params is split at commas, so put a template that "
        "contains a comma in conf/local/parameters_feature_extraction.yml instead."
    )


def parse_template(template: str, separator: str = SEGMENT_SEPARATOR) -> tuple[list[Segment], str]:
    """(segments, ending) of `template`; unknown or unnamed placeholders are an error."""
    check_template(template)
    body = template.rstrip()
    ending = ""
    while body.endswith(SENTENCE_ENDINGS):
        ending, body = body[-1] + ending, body[:-1]
    segments = []
    for text in body.split(separator):
        names = tuple(name for _, name, _, _ in string.Formatter().parse(text) if name is not None)
        unknown = [name for name in names if name not in TEXT_FIELDS]
        if unknown or "" in names:
            raise ValueError(
                f"text template {template!r}: placeholder(s) {unknown or ['{}']} are not item fields; "
                f"use named placeholders among {list(TEXT_FIELDS)}."
            )
        segments.append(Segment(text, names))
    return segments, ending


def template_fields(template: str) -> list[str]:
    """The fields a template names, in order of first appearance."""
    segments, _ = parse_template(template)
    return list(dict.fromkeys(name for segment in segments for name in segment.fields))


def without_fields(template: str, missing: set[str], separator: str = SEGMENT_SEPARATOR) -> str:
    """`template` less the sentences that name a field in `missing` (the fix an error suggests)."""
    segments, ending = parse_template(template, separator)
    kept = [segment for segment in segments if not set(segment.fields) & missing]
    return separator.join(segment.text for segment in kept) + ending if any(s.fields for s in kept) else ""


def has_value(value: str) -> bool:
    """A field counts as filled when it holds a letter or a digit ("-" or "." say nothing)."""
    return any(character.isalnum() for character in value)


def _truncate_words(text: str, max_chars: int | None) -> str:
    """Cut `text` to at most `max_chars` characters at a word boundary (None = no limit)."""
    if max_chars is None or len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    if " " in cut:
        cut = cut.rsplit(" ", 1)[0]
    return cut.rstrip(" ,;:")


def _join_segments(segments: list[str], separator: str) -> str:
    """Join with `separator`, without doubling its full stop after a segment that already ends in
    sentence punctuation ("Eau de toilette 2 fl. oz." + "Brand: X" -> "... oz. Brand: X")."""
    text = ""
    for segment in segments:
        if not text:
            text = segment
            continue
        glue = separator
        if text.endswith(SENTENCE_ENDINGS) and separator.lstrip().startswith("."):
            glue = separator.lstrip().lstrip(".")
        text += glue + segment
    return text


def item_field_values(items: Any, max_description_chars: int | None = 300) -> list[dict[str, str]]:
    """Per item row, the value of every template field: whitespace collapsed, trailing ",;:" cut,
    the description cut to `max_description_chars` at a word boundary."""
    columns = {name: item_column(items, name) for name in ("title", "brand", "description", "categories")}
    rows = []
    for row in range(len(columns["title"])):
        values = {name: " ".join(str(column[row] or "").split()).rstrip(" ,;:") for name, column in columns.items()}
        values["description"] = _truncate_words(values["description"], max_description_chars)
        values["first_category_path"] = values["categories"].split(CATEGORY_PATH_SEP)[0].strip()
        rows.append(values)
    return rows


def empty_fields(items: Any, template: str) -> list[str]:
    """The fields `template` names that no item has a value for: a field the source lacks."""
    rows = item_field_values(items, max_description_chars=None)
    return [name for name in template_fields(template) if not any(has_value(row[name]) for row in rows)]


def render(segments: list[Segment], ending: str, values: dict[str, str], separator: str = SEGMENT_SEPARATOR) -> str:
    """One item's text: the sentences whose fields all have values (see the module docstring)."""
    kept = [segment for segment in segments if all(has_value(values[name]) for name in segment.fields)]
    if not any(segment.fields for segment in kept):
        return ""
    parts = [" ".join(segment.text.format(**values).split()) for segment in kept]
    text = _join_segments([part for part in parts if part], separator)
    return text if not ending or text.endswith(SENTENCE_ENDINGS) else text + ending


def build_item_texts(
    items: Any,
    template: str = DEFAULT_TEMPLATE,
    max_description_chars: int | None = 300,
    segment_separator: str = SEGMENT_SEPARATOR,
) -> list[str]:
    """One text per item row, in row order, from a template over the item's metadata.

    Placeholders: {title}, {brand}, {description} (cut at a word boundary to
    `max_description_chars`), {categories} (all paths) and {first_category_path}. With the default
    template an item without brand gives "Lipstick. Category: Beauty > Makeup"; an item with
    nothing gives "" (see `text.encode_texts` for what empty texts encode to).
    """
    segments, ending = parse_template(template, segment_separator)
    return [render(segments, ending, values, segment_separator)
            for values in item_field_values(items, max_description_chars)]
