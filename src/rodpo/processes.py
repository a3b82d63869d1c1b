"""Which process owns a record (a run journal, an MLflow run), and whether that process is gone.

A record written by a process that was killed (kill -9, OOM) cannot clean up after itself; the
next run decides from the owner's identity: host, pid namespace, pid, and the process start time
(boot id + start ticks, so a reused pid is told apart). Owners on other hosts or in other pid
namespaces are never judged.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path


def process_identity(pid: int | None = None) -> dict[str, str]:
    """host, pid namespace, pid and start time of a process (this one by default)."""
    pid = os.getpid() if pid is None else pid
    return {"host": socket.gethostname(), "pid_namespace": _pid_namespace(), "pid": str(pid),
            "start": _process_start(pid)}


def process_is_gone(identity: dict[str, str]) -> bool:
    """True only for an owner on this host and pid namespace whose pid is not alive, or is alive
    with another start time (the pid was reused)."""
    if identity.get("host") != socket.gethostname() or identity.get("pid_namespace", "") != _pid_namespace():
        return False
    try:
        pid = int(identity.get("pid", ""))
    except ValueError:
        return False
    if not _pid_alive(pid):
        return True
    recorded, current = identity.get("start", ""), _process_start(pid)
    return bool(recorded and current and recorded != current)


def _pid_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill would terminate the process there: assume alive
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def _process_start(pid: int) -> str:
    """``<boot id>:<start time in clock ticks since boot>`` of a process (Linux ``/proc``); "" where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""
    return f"{boot}:{stat.rsplit(')', 1)[1].split()[19]}"  # starttime is field 22, the 20th after "pid (comm)"


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""
