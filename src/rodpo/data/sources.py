"""Where a dataset preset's raw files live: URL templates from config, filled per preset."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

SOURCES = ("demo", "amazon2014", "amazon2018", "amazon2023", "recbole")


def dataset_file_urls(spec: dict, sources: dict) -> dict[str, str]:
    """Map each raw file role (``reviews``, ``meta``) of a preset to its URL or local path.

    The preset's ``base_url`` (a mirror, a local folder) wins over the source's official one.
    """
    source = spec.get("source")
    if source not in SOURCES or source not in sources:
        raise ValueError(
            f"dataset source {source!r} is not one of {list(SOURCES)}; "
            "fix `source` in the dataset preset (conf/base/parameters_data_download.yml)."
        )
    base_url = spec.get("base_url") or sources[source].get("base_url")
    if not base_url:
        raise ValueError(
            f"dataset source {source!r} has no base_url; set `dataset_spec.base_url` "
            "(a URL, file:// URL or local folder)."
        )
    category = spec.get("category") or ""
    return {
        role: join_url(base_url, template.format(category=category))
        for role, template in sources[source]["files"].items()
    }


def join_url(base: str, name: str) -> str:
    """Join a base URL or local folder with a relative file name."""
    if urlparse(str(base)).scheme in ("http", "https", "file"):
        return str(base).rstrip("/") + "/" + name
    return str(Path(base) / name)
