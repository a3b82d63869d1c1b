"""rodpo tunes glibc malloc at import: large freed blocks stay in the process (no unmap + page
faults per scoring step); the user's own MALLOC_* settings and RODPO_MALLOC_TUNING=0 win."""

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="mallopt tuning is for glibc on Linux")

PROBE = """
import numpy as np, rodpo
def rss_mib():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) // 1024 for line in status if line.startswith("VmRSS:"))
block = np.ones(2**25)        # 256 MiB in one malloc
held = rss_mib()
del block
print(rodpo.MALLOC_TUNED, held - rss_mib())   # MiB given back to the OS by the free
"""


def _probe(**env_changes) -> tuple[str, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "RODPO_MALLOC_TUNING"}
    done = subprocess.run([sys.executable, "-c", PROBE], env={**env, **env_changes}, capture_output=True, text=True,
                          check=True)
    tuned, released = done.stdout.split()
    return tuned, int(released)


def test_importing_rodpo_keeps_large_freed_blocks_in_the_heap():
    tuned, released = _probe()
    assert tuned == "True" and released < 32  # kept for the next step's buffers


def test_the_opt_out_and_the_users_own_settings_leave_glibc_defaults():
    for env in ({"RODPO_MALLOC_TUNING": "0"}, {"MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": "131072"}):
        tuned, released = _probe(**env)
        assert tuned == "False" and released > 200, env  # the 256 MiB block was unmapped on free
