"""Atomic file writes: a reader sees the old file or the new one, never a partial one.

Each write goes to a temporary file in the target's folder, is flushed and fsynced, and
then replaces the target with ``os.replace`` (atomic on POSIX and Windows). A process
killed mid-write leaves at most a stray ``.*.tmp`` file, which later writes ignore.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Write ``path`` atomically; ``write(f)`` fills the binary file object ``f``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda f: f.write(data))


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by ``None`` (nested dicts, lists, tuples):
    gatescope's one JSON convention, so every file is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented, key-sorted, strict JSON atomically; non-finite numbers
    are written as ``null`` (:func:`json_safe`)."""
    text = json.dumps(json_safe(obj), indent=2, sort_keys=True, allow_nan=False) + "\n"
    return atomic_write_bytes(path, text.encode())
