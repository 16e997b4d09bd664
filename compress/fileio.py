"""Atomic file writes: every file this package (and the demo factory) writes goes beside its target first and is
renamed onto it, so a crash or a kill never leaves a file that looks complete. The temporary name is
`.NAME.tmp-PID` in the target's folder (the pattern `outputs.clean_stale_siblings` removes when the
process that made it is gone); files get the umask's permissions."""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager


@contextmanager
def atomic_path(path, suffix: str = ""):
    """Yield a temporary path beside `path` (plus `suffix`, for writers that append an extension); on normal exit
    rename it onto `path`, on an exception remove it."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{os.getpid()}{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.isdir(tmp) and not os.path.islink(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        elif os.path.lexists(tmp):
            os.remove(tmp)


def write_bytes(path, data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)


def write_json(path, obj, indent=1) -> None:
    write_text(path, json.dumps(obj, indent=indent, default=str))
