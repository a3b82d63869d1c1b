"""Fetch one image per item into an on-disk cache, never failing the run on a bad image.

Failures (no URL, HTTP error, timeout, corrupt or oversized file) are counted by reason, logged
once as a summary and returned as a missing path, which becomes a False in the image mask.
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from PIL import Image

from rodpo.data.download import DownloadError, local_source
from rodpo.features.common import check_item_ids, item_column
from rodpo.files import atomic_write

logger = logging.getLogger(__name__)

USER_AGENT = "rodpo-image-fetch/0.1"
READ_CHUNK_BYTES = 1 << 16
BODY_DEADLINE_TIMEOUTS = 3  # timeout_s bounds each socket read; a body trickling past 3x that is dropped
EXAMPLES_PER_REASON = 3
LEFTOVER_PART_AGE_S = 600  # a temp file older than this is an interrupted write, not one in progress
EXTENSION_BY_FORMAT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tif"}
# HTTP statuses worth another try: the server may answer later. Other 4xx are final.
RETRYABLE_HTTP = frozenset({408, 425, 429, 500, 502, 503, 504})


class ImageFetchError(Exception):
    """One image could not be had; `reason` is the counter key in the fetch report."""

    def __init__(self, reason: str, detail: str = "", retryable: bool = False):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.retryable = retryable


def cache_key(url: str) -> str:
    """File stem of a downloaded image: a hash of its URL.

    Keyed by URL rather than item id because item ids are reassigned whenever preprocessing
    changes (k-core, dataset), while a URL names the same picture; identical URLs share one file.
    """
    return hashlib.sha256(url.encode()).hexdigest()[:32]


def verify_image_bytes(data: bytes) -> str:
    """Return the Pillow format name if `data` is a complete, decodable image, else raise."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image_format = image.format
            image.verify()  # structure and checksums
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # full decode: catches truncated pixel data that verify() lets through
    except Exception as error:  # Pillow raises many types (OSError, SyntaxError, DecompressionBombError...)
        raise ImageFetchError("not_an_image", f"{type(error).__name__}: {error}") from error
    return image_format or "unknown"


def _local_path(url: str) -> Path | None:
    """Path for file:// URLs and plain paths, None for http(s) (the data downloader's rule)."""
    try:
        return local_source(url)
    except DownloadError as error:
        raise ImageFetchError("unsupported_scheme", url) from error


def _check_local(path: Path, max_bytes: int) -> Path:
    if not path.is_file():
        raise ImageFetchError("missing_file", str(path))
    if path.stat().st_size > max_bytes:
        raise ImageFetchError("too_large", f"{path} is over {max_bytes} bytes")
    verify_image_bytes(path.read_bytes())
    return path


def _download(url: str, timeout_s: float, max_bytes: int) -> bytes:
    """Bytes of one HTTP(S) response body; raises ImageFetchError with a reason."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    deadline = time.monotonic() + timeout_s * BODY_DEADLINE_TIMEOUTS
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            declared = response.headers.get("Content-Length")
            if declared is not None and declared.isdigit() and int(declared) > max_bytes:
                raise ImageFetchError("too_large", f"Content-Length {declared} > {max_bytes}")
            body = bytearray()
            while chunk := response.read(READ_CHUNK_BYTES):
                body += chunk
                if len(body) > max_bytes:
                    raise ImageFetchError("too_large", f"body over {max_bytes} bytes")
                if time.monotonic() > deadline:
                    raise ImageFetchError("timeout", "body took too long", retryable=True)
            return bytes(body)
    except urllib.error.HTTPError as error:
        raise ImageFetchError("http_error", f"HTTP {error.code}", retryable=error.code in RETRYABLE_HTTP) from error
    except urllib.error.URLError as error:
        if isinstance(error.reason, TimeoutError):
            raise ImageFetchError("timeout", str(error.reason), retryable=True) from error
        raise ImageFetchError("connection_error", str(error.reason), retryable=True) from error
    except TimeoutError as error:
        raise ImageFetchError("timeout", str(error), retryable=True) from error
    except (OSError, ValueError) as error:  # reset connections, malformed URLs, bad status lines
        raise ImageFetchError("connection_error", f"{type(error).__name__}: {error}", retryable=True) from error


def _write_atomic(directory: Path, name: str, data: bytes) -> Path:
    """Temp file then rename: an interrupted run never leaves a half image under the final name."""
    return atomic_write(directory / name, lambda temporary: temporary.write_bytes(data), suffix=".part")


def _remove_leftover_parts(cache_dir: Path) -> None:
    """Delete temp files of an interrupted run. Only old ones: a temp file lives for one write
    (milliseconds), and a young one may be another rank's write in progress into the same cache."""
    for leftover in cache_dir.glob(".*.part"):
        try:
            if time.time() - leftover.stat().st_mtime > LEFTOVER_PART_AGE_S:
                leftover.unlink(missing_ok=True)
        except FileNotFoundError:  # renamed or removed by its writer meanwhile
            pass


def _cached_file_intact(cached: Path) -> bool:
    """True when a cached image still decodes. A corrupt one (a write cut short by a crash or another
    tool, disk damage, a file copied in by hand) is deleted, so this run fetches it again instead of
    masking the item forever."""
    try:
        verify_image_bytes(cached.read_bytes())
        return True
    except (ImageFetchError, OSError) as error:
        logger.debug("Cached image %s is unusable (%s); deleting it to fetch it again.", cached, error)
        cached.unlink(missing_ok=True)
        return False


def _fetch_one(url: str, cached: Path | None, cache_dir: Path, timeout_s: float, max_retries: int,
               max_bytes: int, retry_backoff_s: float) -> tuple[Path, str]:
    """(path, how) for one URL: how is "cached", "downloaded" or "local"; raises ImageFetchError.
    `cached` must already be checked (see _cached_file_intact)."""
    local = _local_path(url)
    if local is not None:
        return _check_local(local, max_bytes), "local"
    if cached is not None:
        return cached, "cached"
    for attempt in range(max_retries + 1):
        try:
            data = _download(url, timeout_s, max_bytes)
            break
        except ImageFetchError as error:
            if not error.retryable or attempt == max_retries:
                raise
            time.sleep(retry_backoff_s * (attempt + 1))
    image_format = verify_image_bytes(data)
    extension = EXTENSION_BY_FORMAT.get(image_format, image_format.lower())
    return _write_atomic(cache_dir, f"{cache_key(url)}.{extension}", data), "downloaded"


def fetch_item_images(
    items: Any,
    cache_dir: str | Path,
    *,
    max_workers: int = 8,
    timeout_s: float = 10.0,
    max_retries: int = 2,
    max_bytes: int = 10_000_000,
    retry_backoff_s: float = 0.5,
) -> tuple[dict[int, Path | None], dict]:
    """Path of a verified image file for every item id (None = no usable image), and a report.

    http(s) images are downloaded concurrently into `cache_dir/<sha256(url)>.<ext>` and checked with
    Pillow (verify + full decode) before they get their final name; a rerun makes no request for
    files already there that still decode. A cached file that no longer decodes is deleted and
    fetched once more in that run (`items_refetched`, `cache_files_corrupt`); only if the fresh copy
    is bad too is the item masked. file:// URLs and plain paths are checked in place, not copied. Failures
    are not remembered: a rerun tries them again (servers recover; a dead URL costs one fast 404).
    Timeouts, connection errors and 5xx/429 are retried `max_retries` times; other 4xx are not.
    """
    started = time.perf_counter()
    check_item_ids(items)
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    _remove_leftover_parts(cache_dir)
    cached_by_key = {path.stem: path for path in cache_dir.iterdir() if not path.name.startswith(".")}

    urls = [(url or "").strip() for url in item_column(items, "image_url")]
    items_by_url: dict[str, list[int]] = defaultdict(list)
    for item_id, url in enumerate(urls, start=1):
        if url:
            items_by_url[url].append(item_id)

    def fetch(url: str) -> tuple[Path | None, str, bool]:
        """(path, how or failure reason, whether a corrupt cached file was dropped)."""
        cached = cached_by_key.get(cache_key(url))
        corrupt = cached is not None and not _cached_file_intact(cached)
        try:
            path, how = _fetch_one(url, None if corrupt else cached, cache_dir, timeout_s, max_retries,
                                   max_bytes, retry_backoff_s)
        except ImageFetchError as error:
            return None, error.reason, corrupt
        return path, "refetched" if corrupt and how == "downloaded" else how, corrupt

    with ThreadPoolExecutor(max_workers=max(1, max_workers)) as pool:
        outcomes = dict(zip(items_by_url, pool.map(fetch, items_by_url)))

    paths: dict[int, Path | None] = {item_id: None for item_id in range(1, len(urls) + 1)}
    outcome_counts: Counter[str] = Counter()
    examples: dict[str, list[str]] = defaultdict(list)
    for url, (path, how, _) in outcomes.items():
        for item_id in items_by_url[url]:
            paths[item_id] = path
            outcome_counts[how] += 1
        if path is None and len(examples[how]) < EXAMPLES_PER_REASON:
            examples[how].append(url)
    outcome_counts["no_url"] = len(urls) - sum(len(ids) for ids in items_by_url.values())
    successes = ("cached", "downloaded", "refetched", "local")
    failures = {reason: n for reason, n in sorted(outcome_counts.items()) if reason not in successes and n}
    report = {
        "items": len(urls),
        "items_with_url": len(urls) - outcome_counts["no_url"],
        "items_with_image": sum(outcome_counts[how] for how in successes),
        **{f"items_{how}": outcome_counts[how] for how in successes},
        "cache_files_corrupt": sum(corrupt for _, _, corrupt in outcomes.values()),
        "failures": failures,
        "failure_examples": {reason: urls_ for reason, urls_ in sorted(examples.items())},
        "seconds": round(time.perf_counter() - started, 3),
    }
    worrying = report["cache_files_corrupt"] or any(reason != "no_url" for reason in failures)
    log = logger.warning if worrying else logger.info
    log("Item images: %d/%d usable (%d cached, %d downloaded, %d re-fetched after %d corrupt cache files, "
        "%d local); missing by reason: %s; examples: %s",
        report["items_with_image"], report["items"], report["items_cached"], report["items_downloaded"],
        report["items_refetched"], report["cache_files_corrupt"], report["items_local"], failures or "none",
        report["failure_examples"] or "none")
    return paths, report
