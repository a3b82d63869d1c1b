"""Nodes of ``false_negatives``: adapters over ``rodpo.experiments.false_negatives``."""

from __future__ import annotations

import logging
from typing import Any

from matplotlib.figure import Figure

from rodpo.experiments.false_negatives import FalseNegativeStudyParams, run_false_negative_study
from rodpo.experiments.false_negatives_report import false_negatives_figure, false_negatives_markdown

logger = logging.getLogger(__name__)


def run_study(false_negatives: FalseNegativeStudyParams) -> dict[str, Any]:
    """Generate a world per exposure, train, sample and count false negatives (results json)."""
    results = run_false_negative_study(false_negatives)
    logger.info("false_negatives: %d rows over %d exposures in %.0f s.", len(results["rows"]),
                len(results["worlds"]), results["seconds"])
    return results


def report_study(results: dict[str, Any]) -> tuple[str, Figure]:
    """Markdown table and the two-panel figure (FN rate vs K, FN rate vs observation rate)."""
    return false_negatives_markdown(results), false_negatives_figure(results)
