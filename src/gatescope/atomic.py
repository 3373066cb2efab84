"""Atomic file writes: a reader sees the old file or the new one, never a partial one.

Each write goes to a temporary file in the target's folder, is flushed and fsynced, and
then replaces the target with ``os.replace`` (atomic on POSIX and Windows). A process
killed mid-write leaves at most a stray ``.*.tmp`` file, which later writes ignore.

Files get the permissions of a plainly created file, ``0o666`` less the process umask
(``tempfile.mkstemp`` would make every output ``0o600``, unreadable to anyone else).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

#: ``os.open`` flags of a temporary file: new (never an existing file or link), binary.
_TEMP_FLAGS = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
               | getattr(os, "O_CLOEXEC", 0))


def _create_temp(path: Path) -> tuple[int, Path]:
    """A new empty ``.NAME.RANDOM.tmp`` beside ``path``, mode ``0o666`` less the umask.

    Returns:
        Its open file descriptor and its path.
    """
    while True:
        tmp = path.with_name(f".{path.name}.{os.urandom(6).hex()}.tmp")
        try:
            return os.open(tmp, _TEMP_FLAGS, 0o666), tmp
        except FileExistsError:  # pragma: no cover - a 48-bit name collision
            continue


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Write ``path`` atomically; ``write(f)`` fills the binary file object ``f``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
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
