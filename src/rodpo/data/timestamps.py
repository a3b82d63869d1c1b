"""Interaction times in seconds, whatever unit the raw file used.

Amazon 2014/2018 dumps count seconds, Amazon 2023 milliseconds; own data (RecBole files, exports
from a database) may use either, and nothing in the file says which. Read as seconds,
milliseconds put every interaction some 40,000 years ahead, which the temporal module's time
buckets and gaps then take at face value. ``timestamp_unit`` says the unit (``s`` or ``ms``), or
``auto`` lets the values decide: no date in seconds before the year 5000 exceeds 1e11, and every
date in milliseconds after March 1973 does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import polars as pl

logger = logging.getLogger(__name__)

UNITS_PER_SECOND = {"s": 1, "ms": 1000}
TIMESTAMP_UNITS = ("auto", *UNITS_PER_SECOND)
MILLISECONDS_ABOVE = 1e11  # seconds: year 5138; milliseconds: 1973-03-03


def timestamps_in_seconds(interactions: pl.DataFrame, unit: str, path: Path,
                          format_unit: str | None = None) -> pl.DataFrame:
    """``interactions`` with its ``timestamp`` column (in the file's unit) converted to seconds.

    ``format_unit`` is the unit the file format documents (Amazon 2023: ``ms``), used by ``auto``;
    without one, ``auto`` takes milliseconds when the median timestamp exceeds 1e11 and says so
    once, naming ``path``. ``s`` and ``ms`` force the unit.
    """
    unit = resolved_unit(unit, format_unit, path, lambda: interactions["timestamp"].median())
    if UNITS_PER_SECOND[unit] == 1:
        return interactions
    return interactions.with_columns(pl.col("timestamp") // UNITS_PER_SECOND[unit])


def resolved_unit(unit: str, format_unit: str | None, path: Path, median: Callable[[], float | None]) -> str:
    """The unit (``s`` or ``ms``) of a file's timestamps: ``unit`` when forced, else the format's,
    else the median decides (``median()`` is called only then: on a stream it is a pass over the file)."""
    if unit not in TIMESTAMP_UNITS:
        raise ValueError(f"data_processing.timestamp_unit={unit!r} is not one of "
                         f"{list(TIMESTAMP_UNITS)}; set it to auto, s or ms.")
    if unit != "auto":
        return unit
    return format_unit or _detected_unit(median(), path)


def _detected_unit(median: float | None, path: Path) -> str:
    """``ms`` when the median timestamp is beyond the year 5000 in seconds (with a warning), else ``s``."""
    if median is None or median <= MILLISECONDS_ABOVE:
        return "s"
    logger.warning(
        "%s: timestamps look like milliseconds (median %d > %.0e, beyond the year 5000 in "
        "seconds); converted them to seconds. Set data_processing.timestamp_unit (or the "
        "preset's timestamp_unit) to s or ms to decide yourself.", path, median,
        MILLISECONDS_ABOVE)
    return "ms"
