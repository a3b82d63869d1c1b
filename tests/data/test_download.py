"""download_file against a real local HTTP server whose misbehaviour the test controls, and the
records that make a copy be fetched again when its source changes."""

from __future__ import annotations

import gzip
import hashlib
import random
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from rodpo.data import provenance
from rodpo.data.download import DownloadError, download_file, fetch_dataset_files

PAYLOAD = gzip.compress(random.Random(0).randbytes(60_000), mtime=0)
CUT_AFTER = 20_000
FAST = {"timeout_s": 2.0, "max_retries": 3, "backoff_s": 0.01, "chunk_bytes": 4096,
        "progress": False}


@dataclass
class ServerState:
    base_url: str = ""
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    failures_left: dict[str, int] = field(default_factory=dict)
    heads: list[str] = field(default_factory=list)
    new_versions: dict[str, bytes] = field(default_factory=dict)  # name -> body served as ETag "v2"
    refuse_head: set[str] = field(default_factory=set)

    def body_and_etag(self, name: str) -> tuple[bytes, str]:
        if name in self.new_versions:
            return self.new_versions[name], '"v2"'
        return (PAYLOAD[: len(PAYLOAD) // 2] if name == "truncated.gz" else PAYLOAD), '"v1"'


class _Handler(BaseHTTPRequestHandler):
    """Routes by file name: data.gz (Range-capable), cut.gz (drops the connection once after
    CUT_AFTER bytes), flaky.gz (503 once), missing.gz (404), page.gz (HTML, text/html),
    sneaky.gz (HTML body under a binary Content-Type), truncated.gz (half a gzip, served whole),
    down.gz (503 always), stalls.gz (CUT_AFTER bytes on the first request, then 503 always).
    Files have an ETag ("v1", or "v2" for the names in ``new_versions``), and a Range request
    whose If-Range is not the current ETag gets the whole file; HEAD answers the headers only."""

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        state: ServerState = self.server.state  # type: ignore[attr-defined]
        name = self.path.lstrip("/")
        range_header = self.headers.get("Range")
        state.requests.append((name, range_header))
        if name == "missing.gz":
            self.send_error(404, "Not Found")
            return
        if name == "down.gz" or (name == "stalls.gz" and len(state.requests) > 1):
            self.send_error(503, "Service Unavailable")
            return
        if name == "flaky.gz" and state.failures_left.get(name, 1):
            state.failures_left[name] = 0
            self.send_error(503, "Service Unavailable")
            return
        if name in ("page.gz", "sneaky.gz"):
            body = b"<!DOCTYPE html><html><body>Access denied</body></html>"
            self._send(200, body, "text/html" if name == "page.gz" else "application/gzip")
            return
        body, etag = state.body_and_etag(name)
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", range_header or "")
        if match and self.headers.get("If-Range", etag) != etag:
            match = None  # the file changed since the part was fetched: send it whole
        if match:
            start = int(match.group(1))
        self.send_response(206 if match else 200)
        self.send_header("Content-Type", "application/gzip")
        self.send_header("ETag", etag)
        self.send_header("Content-Length", str(len(body) - start))
        if match:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.end_headers()
        if name == "stalls.gz" or (name == "cut.gz" and state.failures_left.get(name, 1)):
            state.failures_left[name] = 0
            self.wfile.write(body[start : start + CUT_AFTER])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body[start:])

    def do_HEAD(self) -> None:
        state: ServerState = self.server.state  # type: ignore[attr-defined]
        name = self.path.lstrip("/")
        state.heads.append(name)
        if name in state.refuse_head:
            self.send_error(405, "Method Not Allowed")
            return
        body, etag = state.body_and_etag(name)
        self.send_response(200)
        self.send_header("Content-Type", "application/gzip")
        self.send_header("ETag", etag)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()

    def _send(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.state = ServerState(base_url=f"http://127.0.0.1:{httpd.server_address[1]}")
    thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield httpd.state
    httpd.shutdown()
    httpd.server_close()


def test_full_download_has_the_exact_bytes(server, tmp_path):
    dest = download_file(f"{server.base_url}/data.gz", tmp_path / "data.gz", **FAST)
    assert dest.read_bytes() == PAYLOAD
    assert not (tmp_path / "data.gz.part").exists()


def test_cut_connection_resumes_with_a_range_request(server, tmp_path):
    dest = download_file(f"{server.base_url}/cut.gz", tmp_path / "cut.gz", **FAST)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests == [("cut.gz", None), ("cut.gz", f"bytes={CUT_AFTER}-")]


def test_leftover_part_file_is_resumed(server, tmp_path):
    (tmp_path / "data.gz.part").write_bytes(PAYLOAD[:1000])
    dest = download_file(f"{server.base_url}/data.gz", tmp_path / "data.gz", **FAST)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests == [("data.gz", "bytes=1000-")]


def test_503_is_retried(server, tmp_path):
    dest = download_file(f"{server.base_url}/flaky.gz", tmp_path / "flaky.gz", **FAST)
    assert dest.read_bytes() == PAYLOAD
    assert len(server.requests) == 2


def test_404_fails_at_once_naming_the_url(server, tmp_path):
    url = f"{server.base_url}/missing.gz"
    with pytest.raises(DownloadError, match=re.escape(url)) as info:
        download_file(url, tmp_path / "missing.gz", **FAST)
    assert "404" in str(info.value)
    assert len(server.requests) == 1
    assert not (tmp_path / "missing.gz").exists()


def test_truncated_gzip_is_rejected_and_not_kept(server, tmp_path):
    url = f"{server.base_url}/truncated.gz"
    with pytest.raises(DownloadError, match="truncated or corrupt") as info:
        download_file(url, tmp_path / "truncated.gz", **FAST)
    assert url in str(info.value)
    assert not (tmp_path / "truncated.gz").exists()
    assert (tmp_path / "truncated.gz.corrupt").exists()


@pytest.mark.parametrize("name", ["page.gz", "sneaky.gz"])
def test_html_page_is_rejected(server, tmp_path, name):
    url = f"{server.base_url}/{name}"
    with pytest.raises(DownloadError, match="HTML page") as info:
        download_file(url, tmp_path / name, **FAST)
    assert url in str(info.value)
    assert not (tmp_path / name).exists()
    assert not (tmp_path / f"{name}.part").exists()


def test_complete_file_is_not_downloaded_again(server, tmp_path):
    url = f"{server.base_url}/data.gz"
    download_file(url, tmp_path / "data.gz", **FAST)
    server.requests.clear()
    download_file(url, tmp_path / "data.gz", **FAST)
    download_file(url, tmp_path / "data.gz", **FAST)
    assert server.requests == []
    assert server.heads == ["data.gz", "data.gz"]  # one HEAD per run asks whether it changed


def test_damaged_existing_file_is_replaced(server, tmp_path):
    (tmp_path / "data.gz").write_bytes(PAYLOAD[:100])
    dest = download_file(f"{server.base_url}/data.gz", tmp_path / "data.gz", **FAST)
    assert dest.read_bytes() == PAYLOAD
    assert len(server.requests) == 1


def test_file_url_and_plain_path_are_copied(tmp_path):
    source = tmp_path / "src dir" / "local.json.gz"
    source.parent.mkdir()
    source.write_bytes(PAYLOAD)
    via_url = download_file(source.as_uri(), tmp_path / "a" / "local.json.gz", **FAST)
    via_path = download_file(str(source), tmp_path / "b" / "local.json.gz", **FAST)
    assert via_url.read_bytes() == via_path.read_bytes() == PAYLOAD


def test_local_truncated_gzip_is_rejected(tmp_path):
    source = tmp_path / "bad.gz"
    source.write_bytes(PAYLOAD[:500])
    with pytest.raises(DownloadError, match="truncated or corrupt"):
        download_file(source.as_uri(), tmp_path / "out" / "bad.gz", **FAST)
    assert not (tmp_path / "out" / "bad.gz").exists()


def test_fetch_dataset_files_returns_local_paths(server, tmp_path):
    urls = {"reviews": f"{server.base_url}/data.gz", "meta": f"{server.base_url}/flaky.gz"}
    paths = fetch_dataset_files(urls, tmp_path, **FAST)
    assert paths == {"reviews": str(tmp_path / "data.gz"), "meta": str(tmp_path / "flaky.gz")}
    assert Path(paths["meta"]).read_bytes() == PAYLOAD


def test_give_up_without_bytes_does_not_claim_a_part_file(server, tmp_path):
    url = f"{server.base_url}/down.gz"
    with pytest.raises(DownloadError, match="gave up after 4 failed attempts") as info:
        download_file(url, tmp_path / "down.gz", **FAST)
    message = str(info.value)
    assert not (tmp_path / "down.gz.part").exists()
    assert "kept" not in message and "nothing was saved" in message
    assert "download.max_retries" in message


def test_give_up_after_partial_bytes_names_the_part_file_and_its_size(server, tmp_path):
    url = f"{server.base_url}/stalls.gz"
    with pytest.raises(DownloadError, match="gave up") as info:
        download_file(url, tmp_path / "stalls.gz", **FAST)
    part = tmp_path / "stalls.gz.part"
    assert part.stat().st_size == CUT_AFTER
    assert f"kept the partial file {part} ({CUT_AFTER} bytes)" in str(info.value)


# ------------------------------------------------------------ a changed source is fetched again

NEW_PAYLOAD = gzip.compress(random.Random(1).randbytes(50_000), mtime=0)


def test_the_record_names_the_source_the_server_state_and_the_copy(server, tmp_path):
    url = f"{server.base_url}/data.gz"
    dest = download_file(url, tmp_path / "data.gz", **FAST)
    record = provenance.read_record(dest)
    assert record["source"] == url
    assert record["source_state"] == {"etag": '"v1"', "size": len(PAYLOAD)}
    assert record["copy"]["size"] == len(PAYLOAD)
    assert record["copy"]["sha256"] == hashlib.sha256(PAYLOAD).hexdigest()


def test_a_new_etag_on_the_server_is_downloaded_again(server, tmp_path):
    url = f"{server.base_url}/data.gz"
    download_file(url, tmp_path / "data.gz", **FAST)
    server.new_versions["data.gz"] = NEW_PAYLOAD
    server.requests.clear()
    dest = download_file(url, tmp_path / "data.gz", **FAST)
    assert dest.read_bytes() == NEW_PAYLOAD
    assert server.requests == [("data.gz", None)]
    assert provenance.read_record(dest)["source_state"]["etag"] == '"v2"'


def test_a_changed_base_url_is_fetched_again(server, tmp_path):
    download_file(f"{server.base_url}/data.gz", tmp_path / "data.gz", **FAST)
    server.new_versions["mirror/data.gz"] = NEW_PAYLOAD
    server.requests.clear()
    dest = download_file(f"{server.base_url}/mirror/data.gz", tmp_path / "data.gz", **FAST)
    assert dest.read_bytes() == NEW_PAYLOAD
    assert server.requests == [("mirror/data.gz", None)]
    assert server.heads == []  # another URL: no need to ask the old one


def test_a_server_that_refuses_head_keeps_the_copy_with_a_warning(server, tmp_path, caplog):
    url = f"{server.base_url}/data.gz"
    download_file(url, tmp_path / "data.gz", **FAST)
    server.refuse_head.add("data.gz")
    server.requests.clear()
    download_file(url, tmp_path / "data.gz", **FAST)
    assert server.requests == []
    assert "could not ask the server whether its file changed" in caplog.text


def test_an_edited_copy_is_fetched_again(server, tmp_path):
    url = f"{server.base_url}/data.gz"
    dest = download_file(url, tmp_path / "data.gz", **FAST)
    dest.write_bytes(NEW_PAYLOAD)  # someone "fixed" the copy instead of the source
    server.requests.clear()
    assert download_file(url, dest, **FAST).read_bytes() == PAYLOAD
    assert server.requests == [("data.gz", None)]


def test_a_part_of_an_older_server_file_is_not_resumed(server, tmp_path):
    """The part was fetched while the server had "v1"; it now has "v2": If-Range gets it whole."""
    url = f"{server.base_url}/data.gz"
    part = tmp_path / "data.gz.part"
    part.write_bytes(PAYLOAD[:1000])
    provenance.record_path(part).write_text(f'{{"source": "{url}", "source_state": {{"etag": "\\"v1\\""}}}}')
    server.new_versions["data.gz"] = NEW_PAYLOAD
    dest = download_file(url, tmp_path / "data.gz", **FAST)
    assert dest.read_bytes() == NEW_PAYLOAD
    assert server.requests == [("data.gz", "bytes=1000-")]  # asked to resume, got the whole new file
    assert not provenance.record_path(part).exists()


def test_a_part_of_another_url_is_dropped(server, tmp_path):
    part = tmp_path / "data.gz.part"
    part.write_bytes(b"x" * 1000)
    provenance.record_path(part).write_text('{"source": "http://elsewhere/data.gz", "source_state": {}}')
    dest = download_file(f"{server.base_url}/data.gz", tmp_path / "data.gz", **FAST)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests == [("data.gz", None)]
