import io
import logging
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import polars as pl
import pytest
from PIL import Image

from rodpo.features.images import cache_key, fetch_item_images

TIMEOUT_S = 0.5
SLOW_S = 1.5  # longer than TIMEOUT_S
MAX_BYTES = 20_000


def png_bytes(size, color=None, seed=0):
    """A solid PNG, or random noise (incompressible, so large) when color is None."""
    if color is None:
        pixels = np.random.default_rng(seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8)
        image = Image.fromarray(pixels)
    else:
        image = Image.new("RGB", (size, size), color)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


GOOD = png_bytes(8, (200, 0, 0))
BIG = png_bytes(128)  # ~49 kB of noise > MAX_BYTES
ROUTES = {"/good.png": GOOD, "/corrupt.jpg": b"<html>not an image</html>", "/big.png": BIG}


@pytest.fixture()
def server():
    requests = Counter()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            with lock:
                requests[self.path] += 1
            if self.path == "/slow.png":
                time.sleep(SLOW_S)
            body = ROUTES.get(self.path, GOOD if self.path == "/slow.png" else None)
            try:
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except OSError:
                pass  # the client gave up (timeout test)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", requests
    httpd.shutdown()
    httpd.server_close()


def test_fetch_masks_failures_caches_and_does_not_refetch(server, tmp_path, caplog):
    base, requests = server
    local_png = tmp_path / "local.png"
    local_png.write_bytes(GOOD)
    urls = [f"{base}/good.png", f"{base}/missing.png", f"{base}/corrupt.jpg", f"{base}/slow.png", None,
            local_png.as_uri(), str(tmp_path / "nowhere.jpg"), f"{base}/big.png", f"{base}/good.png"]
    items = pl.DataFrame({"item_id": pl.Series(range(1, len(urls) + 1), dtype=pl.Int32),
                          "image_url": pl.Series(urls, dtype=pl.String)})
    cache = tmp_path / "cache"
    options = dict(timeout_s=TIMEOUT_S, max_retries=1, max_bytes=MAX_BYTES, retry_backoff_s=0.0)

    started = time.monotonic()
    with caplog.at_level(logging.INFO, logger="rodpo.features.images"):
        paths, report = fetch_item_images(items, cache, **options)
    assert time.monotonic() - started < 5

    assert sorted(item for item, path in paths.items() if path is not None) == [1, 6, 9]
    assert paths[1] == paths[9] and paths[1].parent == cache and paths[1].suffix == ".png"
    assert paths[1].read_bytes() == GOOD
    assert paths[6] == local_png  # local files are checked in place, not copied
    assert report["failures"] == {"http_error": 1, "missing_file": 1, "no_url": 1, "not_an_image": 1,
                                  "timeout": 1, "too_large": 1}
    assert report["items_with_image"] == 3 and report["items_downloaded"] == 2 and report["items_local"] == 1
    assert requests["/good.png"] == 1  # two items, one URL, one request
    assert requests["/slow.png"] == 2 and requests["/missing.png"] == 1  # timeouts retried, 404 not
    assert len([r for r in caplog.records if r.name == "rodpo.features.images"]) == 1  # one summary
    assert sorted(p.name for p in cache.iterdir()) == [paths[1].name]  # no half or failed files

    paths_again, report_again = fetch_item_images(items, cache, **options)
    assert requests["/good.png"] == 1  # cached: no new request
    assert paths_again == paths and report_again["items_cached"] == 2
    assert report_again["failures"] == report["failures"]  # failures are retried, and fail again
    assert report_again["cache_files_corrupt"] == 0 and report_again["items_refetched"] == 0


def test_unsupported_schemes_are_masked_not_fatal(tmp_path):
    local_png = tmp_path / "local.png"
    local_png.write_bytes(GOOD)
    urls = ["ftp://example.com/a.png", "s3://bucket/b.jpg", str(local_png)]
    items = pl.DataFrame({"item_id": pl.Series([1, 2, 3], dtype=pl.Int32), "image_url": urls})
    paths, report = fetch_item_images(items, tmp_path / "cache", timeout_s=TIMEOUT_S, max_retries=0,
                                      max_bytes=MAX_BYTES, retry_backoff_s=0.0)
    assert paths[1] is None and paths[2] is None and paths[3] == local_png
    assert report["failures"] == {"unsupported_scheme": 2}


def _items(urls):
    return pl.DataFrame({"item_id": pl.Series(range(1, len(urls) + 1), dtype=pl.Int32),
                         "image_url": pl.Series(urls, dtype=pl.String)})


FAST = dict(timeout_s=TIMEOUT_S, max_retries=1, max_bytes=MAX_BYTES, retry_backoff_s=0.0)


def test_corrupt_cached_file_is_fetched_again_once(server, tmp_path, caplog):
    base, requests = server
    items = _items([f"{base}/good.png", f"{base}/good.png"])
    cache = tmp_path / "cache"
    paths, _ = fetch_item_images(items, cache, **FAST)
    paths[1].write_bytes(GOOD[: len(GOOD) // 2])  # truncated on disk (a crash, a bad copy)

    with caplog.at_level(logging.WARNING, logger="rodpo.features.images"):
        repaired, report = fetch_item_images(items, cache, **FAST)
    assert requests["/good.png"] == 2  # one fresh request for the one corrupt file
    assert repaired[1] == repaired[2] and repaired[1].read_bytes() == GOOD
    assert report["cache_files_corrupt"] == 1 and report["items_refetched"] == 2
    assert report["items_cached"] == 0 and report["items_with_image"] == 2 and report["failures"] == {}
    assert "2 re-fetched after 1 corrupt cache files" in caplog.text

    _, report = fetch_item_images(items, cache, **FAST)
    assert requests["/good.png"] == 2 and report["items_cached"] == 2 and report["cache_files_corrupt"] == 0


def test_corrupt_cached_file_whose_fresh_copy_is_bad_too_is_masked(server, tmp_path):
    base, requests = server
    url = f"{base}/corrupt.jpg"  # the server's copy is not an image either
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / f"{cache_key(url)}.jpg").write_bytes(b"\xff\xd8\xff truncated jpeg")
    paths, report = fetch_item_images(_items([url]), cache, **FAST)
    assert requests["/corrupt.jpg"] == 1  # fetched again exactly once
    assert paths[1] is None and report["failures"] == {"not_an_image": 1}
    assert report["cache_files_corrupt"] == 1 and report["items_cached"] == 0
    assert report["items_with_image"] == 0 and list(cache.iterdir()) == []  # nothing bad left behind
