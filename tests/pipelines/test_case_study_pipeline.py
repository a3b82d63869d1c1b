"""`case_study` on the demo outputs: a Figure 5 style report with titles and the ground truth marked."""

from __future__ import annotations

import polars as pl
import pytest

from rodpo.evaluation.case_study import HIT_MARK

pytestmark = pytest.mark.slow


def test_report_shows_titles_and_marks_the_ground_truth(demo_results):
    project = demo_results.project
    text = (project / "data/08_reporting/demo/case_study.md").read_text()
    items = pl.read_parquet(next((project / "data/03_primary/demo/items.parquet").glob("*/*.parquet")))

    sections = text.split("\n## ")[1:]
    assert 1 <= len(sections) <= 4  # params: up to 3 RoDPO wins and 1 counter-example
    for section in sections:
        assert "Recent history" in section and "| Rank | Warm-up (SFT) | RoDPO |" in section
        assert section.count("\n| ") == 1 + 5  # header row + the top-5
        if "misses" in section.splitlines()[0]:  # a disagreement: exactly one list holds the target
            assert section.count(HIT_MARK) == 1
    titles = set(items["title"].to_list()) | set(items["original_item_id"].to_list())  # untitled items show their id
    shown = {line.split(". ", 1)[1] for line in text.splitlines() if line[:1].isdigit() and ". " in line}
    assert shown and shown <= titles
