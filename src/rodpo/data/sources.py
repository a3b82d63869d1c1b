"""Where a dataset preset's raw files live: URL templates from config, filled per preset."""

from __future__ import annotations

import posixpath
from pathlib import Path
from urllib.parse import urlparse, urlunparse

SOURCES = ("demo", "amazon2014", "amazon2018", "amazon2023", "amazon2023_benchmark", "recbole")


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
    fields = {"category": spec.get("category") or "", "benchmark": spec.get("benchmark") or ""}
    return {
        role: join_url(base_url, template.format(**fields))
        for role, template in sources[source]["files"].items()
    }


def join_url(base: str, name: str) -> str:
    """Join a base URL or local folder with a relative file name; ``..`` steps up from the base (the
    2023 benchmark's metadata sits in ``raw/`` beside ``benchmark/``)."""
    parsed = urlparse(str(base))
    if parsed.scheme in ("http", "https", "file"):
        joined = urlparse(str(base).rstrip("/") + "/" + name)
        path = posixpath.normpath(joined.path) if ".." in name.split("/") else joined.path
        return urlunparse(joined._replace(path=path))
    return str(Path(base) / name)
