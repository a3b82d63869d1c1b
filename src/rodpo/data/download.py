"""Fetch raw dataset files: streamed, resumable, retried, and verified before they are trusted.

Amazon dumps are several GB behind slow university servers, so a download must survive a cut
connection (HTTP Range resume from the ``.part`` file), transient 5xx answers (bounded exponential
backoff) and must never leave a truncated or HTML-error file where the parser will read it
(atomic rename after a gzip integrity check). Local paths and ``file://`` URLs go through the
same verification, so the demo and RecBole sources share one code path.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import shutil
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from urllib.parse import unquote, urlparse

from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

USER_AGENT = "rodpo-downloader/0.1 (+https://github.com/kedro-org/kedro)"
RETRYABLE_HTTP_CODES = frozenset({408, 425, 429, 500, 502, 503, 504})
HTML_SUFFIXES = (".html", ".htm")
_HTML_START = re.compile(rb"^\s*<(!doctype\s+html|html[\s>])", re.IGNORECASE)
_SNIFF_BYTES = 512
_VERIFY_BLOCK_BYTES = 1 << 22


class DownloadError(RuntimeError):
    """A file could not be fetched, or what arrived is not the file that was asked for."""


class _IncompleteTransfer(ConnectionError):
    """The connection ended before Content-Length bytes arrived (retried with a Range request)."""


def download_file(
    url: str,
    dest: Path,
    *,
    timeout_s: float = 30.0,
    max_retries: int = 5,
    backoff_s: float = 1.0,
    chunk_bytes: int = 1 << 20,
    verify_gzip: bool = True,
    progress: bool = True,
) -> Path:
    """Fetch ``url`` (http(s), ``file://`` or a local path) to ``dest`` and return ``dest``.

    A ``dest`` already verified (or, for non-gzip files, already present) is kept without any
    request. Gzip files (``.gz`` names) are checked end to end before the atomic rename.
    """
    dest = Path(dest)
    check_gzip = verify_gzip and (dest.name.endswith(".gz") or urlparse(url).path.endswith(".gz"))
    if _is_complete(dest, check_gzip):
        logger.info("%s: already present, skipping download", dest)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    source = local_source(url)
    if source is not None:
        _copy_local(source, url, dest, part)
    else:
        _download_http(
            url,
            dest,
            part,
            timeout_s=timeout_s,
            max_retries=max_retries,
            backoff_s=backoff_s,
            chunk_bytes=chunk_bytes,
            progress=progress,
        )
    if check_gzip:
        problem = gzip_problem(part)
        if problem is not None:
            corrupt = dest.with_name(dest.name + ".corrupt")
            os.replace(part, corrupt)
            raise DownloadError(
                f"{url}: the downloaded file is truncated or corrupt ({problem}); moved it to "
                f"{corrupt} and kept nothing at {dest}. Delete it and run again; if it fails "
                "again the server copy is damaged: use another mirror (base_url)."
            )
    os.replace(part, dest)
    if check_gzip:
        _mark_verified(dest)
    logger.info("%s: saved %s (%d bytes)", url, dest, dest.stat().st_size)
    return dest


def fetch_dataset_files(urls: dict[str, str], dest_dir: Path, **kwargs) -> dict[str, str]:
    """Download each named file (``{"reviews": url, ...}``) into ``dest_dir``; keyword arguments
    go to ``download_file``. Returns ``{name: local path}``."""
    dest_dir = Path(dest_dir)
    targets: dict[str, Path] = {}
    for name, url in urls.items():
        file_name = Path(unquote(urlparse(url).path)).name if _has_scheme(url) else Path(url).name
        if not file_name:
            raise DownloadError(f"{name}: cannot tell a file name from URL {url!r}; "
                                "end the URL with the file name.")
        clash = [other for other, path in targets.items() if path.name == file_name]
        if clash:
            raise DownloadError(
                f"{name} and {clash[0]} both download to {file_name!r} in {dest_dir}; "
                "give them distinct file names."
            )
        targets[name] = dest_dir / file_name
    return {name: str(download_file(urls[name], path, **kwargs)) for name, path in targets.items()}


def gzip_problem(path: Path) -> str | None:
    """Decompress the whole (possibly multi-member) gzip file; return what is wrong, or None.

    Truncation shows only at the end (missing end-of-stream marker / CRC), hence the full pass;
    output is produced in bounded pieces and dropped, so memory stays flat.
    """
    decomp = None
    seen_data = False
    try:
        with open(path, "rb") as fh:
            while block := fh.read(_VERIFY_BLOCK_BYTES):
                seen_data = True
                while block:
                    if decomp is None:
                        decomp = zlib.decompressobj(wbits=31)
                    decomp.decompress(block, _VERIFY_BLOCK_BYTES)
                    if decomp.eof:  # one member ended; what follows is the next member
                        block, decomp = decomp.unused_data, None
                    else:
                        block = decomp.unconsumed_tail
    except zlib.error as err:
        return f"not a valid gzip stream: {err}"
    if not seen_data:
        return "empty file"
    if decomp is not None:
        return "compressed stream ends before its end-of-stream marker"
    return None


def _is_complete(dest: Path, check_gzip: bool) -> bool:
    """True when ``dest`` can be used as is; a damaged ``dest`` is moved aside (and logged)."""
    if not dest.is_file() or dest.stat().st_size == 0:
        return False
    if not check_gzip or _verified_marker_matches(dest):
        return True
    problem = gzip_problem(dest)
    if problem is None:
        _mark_verified(dest)
        return True
    corrupt = dest.with_name(dest.name + ".corrupt")
    os.replace(dest, corrupt)
    logger.warning("%s: existing file is damaged (%s); moved it to %s, downloading again",
                   dest, problem, corrupt)
    return False


def _marker(dest: Path) -> Path:
    return dest.with_name(dest.name + ".verified")


def _file_signature(dest: Path) -> dict[str, int]:
    stat = dest.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _mark_verified(dest: Path) -> None:
    """Remember a passed gzip check (size + mtime), so later runs skip the full decompression."""
    _marker(dest).write_text(json.dumps(_file_signature(dest)))


def _verified_marker_matches(dest: Path) -> bool:
    try:
        return json.loads(_marker(dest).read_text()) == _file_signature(dest)
    except (OSError, ValueError):
        return False


def _has_scheme(url: str) -> bool:
    return bool(re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", url))


def local_source(url: str) -> Path | None:
    """The local file behind a ``file://`` URL or plain path; None for network URLs."""
    if not _has_scheme(url):
        return Path(url).expanduser()
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return Path(urllib.request.url2pathname(parsed.path))
    if parsed.scheme in ("http", "https"):
        return None
    raise DownloadError(f"{url}: unsupported URL scheme {parsed.scheme!r}; use http(s), file:// "
                        "or a local path.")


def _looks_like_html(head: bytes) -> bool:
    return bool(_HTML_START.match(head[:_SNIFF_BYTES]))


def _html_error(url: str) -> DownloadError:
    return DownloadError(
        f"{url}: the server sent an HTML page instead of the data file (an error, login or "
        "'moved' page). Open the URL in a browser and fix the dataset URL (base_url / category)."
    )


def _copy_local(source: Path, url: str, dest: Path, part: Path) -> None:
    if not source.is_file():
        raise DownloadError(f"{url}: local file {source} does not exist; check the path or "
                            "the preset's base_url.")
    with open(source, "rb") as fh:
        head = fh.read(_SNIFF_BYTES)
    if _looks_like_html(head) and not dest.name.lower().endswith(HTML_SUFFIXES):
        raise _html_error(url)
    shutil.copyfile(source, part)


def _download_http(
    url: str,
    dest: Path,
    part: Path,
    *,
    timeout_s: float,
    max_retries: int,
    backoff_s: float,
    chunk_bytes: int,
    progress: bool,
) -> None:
    """Stream ``url`` into ``part``, resuming from its current size after every failure."""
    failures = 0
    while True:
        offset = part.stat().st_size if part.exists() else 0
        headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        try:
            request = urllib.request.Request(url, headers=headers)
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                _receive(response, url, dest, part, offset, chunk_bytes, progress)
            return
        except urllib.error.HTTPError as err:
            if err.code == 416 and offset:
                reason = f"HTTP 416 for a resume from byte {offset}; restarting from scratch"
                part.unlink()
            elif err.code in RETRYABLE_HTTP_CODES or 500 <= err.code < 600:
                reason = f"HTTP {err.code} {err.reason}"
            else:
                part.unlink(missing_ok=True)
                raise DownloadError(
                    f"{url}: HTTP {err.code} {err.reason}. Check the URL (dataset source, "
                    "category spelling, base_url); this error is not retried."
                ) from err
        except (urllib.error.URLError, http.client.HTTPException, TimeoutError, OSError) as err:
            reason = f"{type(err).__name__}: {err}"
        failures += 1
        if failures > max_retries:
            raise DownloadError(
                f"{url}: gave up after {failures} failed attempts (last: {reason}); "
                f"{_partial_state(part)}. Check the network and the URL, or raise "
                "download.max_retries (conf/base/parameters_data_download.yml)."
            )
        delay = backoff_s * 2 ** (failures - 1)
        logger.warning("%s: %s; retry %d/%d in %.2fs", url, reason, failures, max_retries, delay)
        time.sleep(delay)


def _partial_state(part: Path) -> str:
    """What a give-up leaves behind, stated from the disk, not assumed: a resumable ``.part``
    file (and its size) only when one exists."""
    if part.is_file():
        return (f"kept the partial file {part} ({part.stat().st_size} bytes); the next run "
                "resumes from it")
    return f"nothing was saved (no {part.name} exists); the next run starts from the beginning"


def _receive(response, url: str, dest: Path, part: Path, offset: int, chunk_bytes: int,
             progress: bool) -> None:
    status = response.status
    if offset and status == 206:
        content_range = response.headers.get("Content-Range", "")
        if not content_range.startswith(f"bytes {offset}-"):
            part.unlink()
            raise _IncompleteTransfer(f"resume answered with Content-Range {content_range!r}")
        mode = "ab"
    elif status == 200:
        offset, mode = 0, "wb"  # no Range support (or no Range sent): start over
    else:
        raise DownloadError(f"{url}: unexpected HTTP status {status}; expected 200 or 206.")
    expects_html = dest.name.lower().endswith(HTML_SUFFIXES)
    content_type = response.headers.get("Content-Type", "").lower()
    if content_type.startswith("text/html") and not expects_html:
        part.unlink(missing_ok=True)
        raise _html_error(url)
    length = response.headers.get("Content-Length")
    total = offset + int(length) if length and length.isdigit() else None
    with open(part, mode) as out, tqdm(
        total=total, initial=offset, unit="B", unit_scale=True, desc=dest.name,
        disable=None if progress else True, leave=False,
    ) as bar:
        first = offset == 0
        while True:
            chunk = response.read(chunk_bytes)
            if not chunk:
                break
            if first and not expects_html and _looks_like_html(chunk):
                out.close()
                part.unlink()
                raise _html_error(url)
            first = False
            out.write(chunk)
            bar.update(len(chunk))
    received = part.stat().st_size
    if total is not None and received < total:
        raise _IncompleteTransfer(f"connection closed at byte {received} of {total}")
