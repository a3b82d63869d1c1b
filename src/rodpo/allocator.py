"""glibc malloc tuned for chunked scoring, in every rodpo process.

Each scoring pass allocates work buffers of tens to hundreds of MiB. glibc serves blocks that
large with mmap and unmaps them on free, so every step pays page faults to get its memory back:
measured on Beauty (ID-only warm-up, 1 thread, back to back) 52.4 s per epoch by default against
30.3 s with `MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000` (the settings RecBole's runner
uses). `tune_malloc` applies the same two settings with mallopt(3) when rodpo is imported, so a
plain `kedro run` gets that speed; freed memory then stays in the process for reuse (up to
TRIM_THRESHOLD_BYTES at the top of the heap before it is returned). It does nothing where the user
set either variable, where RODPO_MALLOC_TUNING=0, or off glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # <malloc.h>
TRIM_THRESHOLD_BYTES = 2**31 - 1       # mallopt takes a C int: the largest it accepts (2 GiB)
OPT_OUT = "RODPO_MALLOC_TUNING"
USER_SETTINGS = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")


def tune_malloc() -> bool:
    """Serve large blocks from the heap and keep freed memory (see the module doc); True if applied."""
    if os.environ.get(OPT_OUT, "1") == "0" or any(name in os.environ for name in USER_SETTINGS):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
    except (OSError, AttributeError):
        return False
