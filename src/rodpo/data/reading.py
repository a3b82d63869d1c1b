"""Read raw text files line by line: plain or gzip, in blocks of whole lines, without a UTF-8 BOM.

The parsers' slow paths stream files of tens of millions of lines, so lines come in large blocks
(decompressed ahead in a helper thread) with their line numbers, for exact error messages. A file
saved by a Windows editor may start with a UTF-8 byte order mark; it is dropped here, once, so
no parser sees it in a header name or in front of the first JSON object.
"""

from __future__ import annotations

import gzip
import queue
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

BLOCK_BYTES = 1 << 24  # decompressed bytes handed to polars (or per-line parsing) at a time
PREFETCH_BLOCKS = 2  # blocks decompressed ahead by a helper thread (zlib releases the GIL)
UTF8_BOM = b"\xef\xbb\xbf"
GZIP_MAGIC = b"\x1f\x8b"


def open_binary(path: Path):
    """Open plain or gzip files (told apart by the magic bytes, not only the name)."""
    with open(path, "rb") as fh:
        magic = fh.read(len(GZIP_MAGIC))
    return gzip.open(path, "rb") if magic == GZIP_MAGIC else open(path, "rb")


def first_line(path: Path) -> str:
    """The first line as text, without its line end and without a leading BOM."""
    with open_binary(path) as fh:
        line = fh.readline()
    return line.removeprefix(UTF8_BOM).decode("utf-8", "replace").rstrip("\r\n")


def line_blocks(path: Path) -> Iterator[tuple[int, bytes]]:
    """Yield (number of the block's first line, whole lines ending in newline) blocks."""
    line_no = 1
    rest = b""
    with open_binary(path) as fh:
        try:
            started = False
            while block := fh.read(BLOCK_BYTES):
                if not started:
                    block, started = block.removeprefix(UTF8_BOM), True
                block = rest + block
                cut = block.rfind(b"\n") + 1
                if cut == 0:
                    rest = block
                    continue
                rest = block[cut:]
                yield line_no, block[:cut]
                line_no += block.count(b"\n", 0, cut)
        except (EOFError, gzip.BadGzipFile, zlib.error) as err:
            raise ValueError(f"{path}: cannot decompress ({err}); the file is truncated or "
                             "corrupt: delete it and download it again.") from err
    if rest:
        yield line_no, rest + b"\n"


def prefetch(blocks: Iterator, depth: int = PREFETCH_BLOCKS) -> Iterator:
    """Run ``blocks`` in a helper thread, ``depth`` items ahead, so decompression overlaps the
    parsing of the previous block on the second core. Errors surface in the caller."""
    done = object()
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                buffer.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False  # the consumer has gone

    def produce() -> None:
        try:
            for item in blocks:
                if not put(item):
                    return
            put(done)
        except BaseException as err:  # re-raised in the consumer
            put(err)

    worker = threading.Thread(target=produce, name="rodpo-decompress", daemon=True)
    worker.start()
    try:
        while (item := buffer.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join()


def numbered_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, line) for each non-blank line, streamed."""
    for first_line_no, block in line_blocks(path):
        for offset, line in enumerate(block.split(b"\n")[:-1]):
            if line.strip():
                yield first_line_no + offset, line


def text_lines(path: Path, *, skip_header: bool) -> Iterator[tuple[int, str]]:
    """(line number, decoded line) for each non-blank line; line 1 left out with ``skip_header``."""
    for line_no, line in numbered_lines(path):
        if skip_header and line_no == 1:
            continue
        yield line_no, line.decode("utf-8", "replace")
