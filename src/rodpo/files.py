"""Files written whole or not at all: the one atomic-write helper of checkpoints, features, caches
and run journals."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object], *, suffix: str = ".tmp") -> Path:
    """Call `write(temporary)` on a fresh hidden file next to `path`, then rename it onto `path`.

    A reader sees the old file or the whole new one, never half of it; an interrupted or failed
    write leaves no file under the final name and removes its temporary (named
    `.<name>.<random><suffix>`, so concurrent writers never share one). Returns `path`.
    """
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}{suffix}")
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path
