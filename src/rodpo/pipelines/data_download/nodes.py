"""Nodes of ``data_download``. Downloading is I/O by nature, so these nodes write files."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from rodpo.data import amazon2023_benchmark as benchmark
from rodpo.data import provenance
from rodpo.data.demo import generate_demo_dataset
from rodpo.data.download import download_file, local_source
from rodpo.data.sources import dataset_file_urls

logger = logging.getLogger(__name__)


@dataclass
class DownloadParams:
    raw_dir: str
    timeout_s: float = 60.0
    max_retries: int = 5
    backoff_s: float = 2.0
    progress: bool = True


def download_raw_data(
    dataset: str, dataset_spec: dict, sources: dict, download: DownloadParams
) -> dict:
    """Fetch the preset's reviews and metadata files into ``raw_dir``; return the manifest:
    their paths (``files``) and each copy's record (``copies``: its source, the source's state,
    the copy's size and sha256; see ``rodpo.data.provenance``).

    The ``demo`` source first generates its files (Amazon 2018 format) under
    ``raw_dir/generated`` and then goes through the same download/verify path as any file:// URL.
    A copy is fetched again only when its source changed.
    """
    raw_dir = Path(download.raw_dir)
    spec = dict(dataset_spec)
    if spec["source"] == "demo":
        generated = raw_dir / "generated"
        generate_demo_dataset(generated, **spec.get("demo", {}))
        spec["base_url"] = generated.resolve().as_uri()

    optional = set(sources[spec["source"]].get("optional", []))
    urls = dataset_file_urls(spec, sources)
    if spec["source"] == benchmark.SOURCE:  # checks the folder name; plain .csv stands in locally
        urls = benchmark.benchmark_file_urls(spec, urls)
    files: dict[str, str | None] = {}
    copies: dict[str, dict | None] = {}
    for role, url in urls.items():
        local = local_source(url)
        if role in optional and local is not None and not local.exists():
            logger.info("%s: optional %s file %s not found, continuing without it", dataset, role, url)
            files[role] = None
            continue
        dest = raw_dir / Path(url.rstrip("/")).name
        if spec["source"] == benchmark.SOURCE and role in benchmark.SPLIT_FILES:
            dest = raw_dir / spec["benchmark"] / dest.name  # each split folder keeps its own files
        download_file(
            url,
            dest,
            timeout_s=download.timeout_s,
            max_retries=download.max_retries,
            backoff_s=download.backoff_s,
            verify_gzip=dest.suffix == ".gz",
            progress=download.progress,
        )
        files[role], copies[role] = str(dest), provenance.read_record(dest)
    manifest = {"dataset": dataset, "source": spec["source"], "category": spec.get("category"), "files": files,
                "copies": copies}
    if spec["source"] == benchmark.SOURCE:
        manifest["benchmark"] = spec.get("benchmark")
    return manifest
