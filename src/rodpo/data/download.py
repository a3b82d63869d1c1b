"""Fetch raw dataset files: streamed, resumable, retried, and verified before they are trusted.

Amazon dumps are several GB behind slow university servers, so a download must survive a cut
connection (HTTP Range resume from the ``.part`` file), transient 5xx answers (bounded exponential
backoff) and must never leave a truncated or HTML-error file where the parser will read it
(atomic rename after a gzip integrity check). Local paths and ``file://`` URLs go through the
same verification, so the demo and RecBole sources share one code path. Each copy is recorded
with its source (``rodpo.data.provenance``) and fetched again when that source changes.
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

from rodpo.data import provenance

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

    ``dest`` is kept when its record says it is an untouched copy of the same, unchanged source
    (a local file of the same size and time or content; a server file with the same ETag,
    Last-Modified and size, where the server gives them: one HEAD request). Otherwise it is
    fetched again. Gzip files (``.gz`` names) are checked end to end before the atomic rename.
    """
    dest = Path(dest)
    check_gzip = verify_gzip and (dest.name.endswith(".gz") or urlparse(url).path.endswith(".gz"))
    source = local_source(url)
    reason = _reason_to_fetch(url, dest, source, timeout_s)
    if reason is None:
        logger.info("%s: the copy of %s is current, not fetched again", dest, url)
        return dest
    logger.info("%s: fetching %s (%s)", dest, url, reason)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    if source is not None:
        source_state = _copy_local(source, url, dest, part)
    else:
        source_state = _download_http(
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
            provenance.forget(part)
            provenance.forget(dest)
            dest.unlink(missing_ok=True)  # a copy of the source's previous version is no longer current
            raise DownloadError(
                f"{url}: the downloaded file is truncated or corrupt ({problem}); moved it to "
                f"{corrupt} and kept nothing at {dest}. Delete it and run again; if it fails "
                "again the server copy is damaged: use another mirror (base_url)."
            )
    provenance.forget(dest)
    os.replace(part, dest)
    provenance.forget(part)
    provenance.write_record(dest, url, source_state)
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


def _reason_to_fetch(url: str, dest: Path, source: Path | None, timeout_s: float) -> str | None:
    """Why ``dest`` must be fetched (again), or None when it is a current copy of ``url``."""
    if not dest.is_file() or dest.stat().st_size == 0:
        return "no copy yet"
    record = provenance.read_record(dest)
    if record is None:
        return "no record of where the copy came from"
    if record.get("source") != url:
        return f"it was copied from {record.get('source')!r} (base_url or category changed)"
    if not provenance.copy_is_untouched(dest, record):
        return "the copy was modified after it was fetched"
    if source is not None:
        if not source.is_file():
            return f"{source} is gone"  # the copy step names it
        change = provenance.local_source_change(source, dest, record)
        return f"{source}: {change}" if change else None
    state = _server_state(url, timeout_s)
    if state is None:
        return None
    change, compared = provenance.http_source_change(state, record)
    if not compared:
        logger.info("%s: the server gives no ETag, Last-Modified or size; cannot tell whether it "
                    "changed, so the copy %s is kept (delete it to fetch again)", url, dest)
    return change


class _KeepMethodRedirect(urllib.request.HTTPRedirectHandler):
    """urllib turns a redirected HEAD into a GET (a whole download); keep it a HEAD."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        redirected = super().redirect_request(req, fp, code, msg, headers, newurl)
        if redirected is not None:
            redirected.method = req.get_method()
        return redirected


def _server_state(url: str, timeout_s: float) -> dict | None:
    """ETag, Last-Modified and size of the server's file (one HEAD request); None, with a
    warning, when the server cannot be asked (offline, HEAD refused): the copy is then kept."""
    request = urllib.request.Request(url, method="HEAD", headers={"User-Agent": USER_AGENT,
                                                                  "Accept-Encoding": "identity"})
    try:
        with urllib.request.build_opener(_KeepMethodRedirect).open(request, timeout=timeout_s) as response:
            length = response.headers.get("Content-Length")
            return {**_validators(response.headers), "size": int(length) if length and length.isdigit() else None}
    except (urllib.error.URLError, http.client.HTTPException, OSError) as err:  # HTTPError is a URLError
        logger.warning("%s: could not ask the server whether its file changed (%s); using the copy "
                       "fetched before. Delete it to fetch again.", url, err)
        return None


def _validators(headers) -> dict[str, str]:
    """The response's ETag and Last-Modified (those it has)."""
    found = {"etag": headers.get("ETag"), "last_modified": headers.get("Last-Modified")}
    return {key: value for key, value in found.items() if value}


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


def _copy_local(source: Path, url: str, dest: Path, part: Path) -> dict:
    """Copy ``source`` to ``part``; return the source's size and time from before the copy."""
    if not source.is_file():
        raise DownloadError(f"{url}: local file {source} does not exist; check the path or "
                            "the preset's base_url.")
    with open(source, "rb") as fh:
        head = fh.read(_SNIFF_BYTES)
    if _looks_like_html(head) and not dest.name.lower().endswith(HTML_SUFFIXES):
        raise _html_error(url)
    state = provenance.file_state(source)
    shutil.copyfile(source, part)
    return state


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
) -> dict:
    """Stream ``url`` into ``part``, resuming from its current size after every failure; return
    the server's ETag, Last-Modified and the file's size."""
    failures = 0
    while True:
        validator = _resume_validator(part, url)
        offset = part.stat().st_size if part.exists() else 0
        headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
            if validator:
                headers["If-Range"] = validator  # the server's file changed: it sends it whole
        try:
            request = urllib.request.Request(url, headers=headers)
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                validators = _receive(response, url, dest, part, offset, chunk_bytes, progress)
            return {**validators, "size": part.stat().st_size}
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


def _resume_validator(part: Path, url: str) -> str | None:
    """The If-Range value that resumes ``part`` only from the same server file (its ETag, else
    Last-Modified). A part of another URL is dropped; one without a record resumes without."""
    record = provenance.read_record(part)
    if record is None:
        return None
    if record.get("source") != url:
        part.unlink(missing_ok=True)
        provenance.forget(part)
        return None
    state = record.get("source_state", {})
    return state.get("etag") or state.get("last_modified")


def _partial_state(part: Path) -> str:
    """What a give-up leaves behind, stated from the disk, not assumed: a resumable ``.part``
    file (and its size) only when one exists."""
    if part.is_file():
        return (f"kept the partial file {part} ({part.stat().st_size} bytes); the next run "
                "resumes from it")
    return f"nothing was saved (no {part.name} exists); the next run starts from the beginning"


def _receive(response, url: str, dest: Path, part: Path, offset: int, chunk_bytes: int,
             progress: bool) -> dict[str, str]:
    """Append (206) or write (200) the body to ``part``; return the response's validators."""
    status = response.status
    if offset and status == 206:
        content_range = response.headers.get("Content-Range", "")
        if not content_range.startswith(f"bytes {offset}-"):
            part.unlink()
            raise _IncompleteTransfer(f"resume answered with Content-Range {content_range!r}")
        mode = "ab"
    elif status == 200:
        offset, mode = 0, "wb"  # no Range support, no Range sent or a changed file: start over
        provenance.record_path(part).write_text(
            json.dumps({"source": url, "source_state": _validators(response.headers)}))
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
    return _validators(response.headers)
