"""Trainer checkpoints on disk: atomic ``torch.save``, loaded with ``weights_only=True``.

A checkpoint file holds ``{"trainer": EnsembleTrainer.state_dict(), "extra": ...}``, where
``extra`` is whatever the caller keeps beside the trainer (e.g. measurement rows), made of
tensors, numbers, strings, ``None``, lists, tuples and dicts. Files are only ever read
with ``torch.load(weights_only=True)``, which refuses to unpickle arbitrary objects, so a
tampered or foreign checkpoint cannot run code.

In a folder, checkpoints are named ``step-00000400.pt``; :func:`restore_latest` resumes
from the newest one that loads.

Beside each checkpoint, ``step-00000400.pt.sha256`` records the sha256 of its bytes (in
``sha256sum`` format, written after the checkpoint). A checkpoint that does not match its
digest (a flipped bit, a partial copy) is refused, so a resume redoes the steps from the
previous good one instead of training on from damaged parameters. A checkpoint without a
digest (written by an older gatescope, or the process died between the two atomic writes)
is complete and loads.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_write_bytes
from .ensemble import EnsembleTrainer

logger = logging.getLogger(__name__)

_NAME = re.compile(r"step-(\d+)\.pt")


def checkpoint_path(directory: str | os.PathLike, step: int) -> Path:
    """``directory / "step-{step:08d}.pt"``."""
    return Path(directory) / f"step-{step:08d}.pt"


def digest_path(path: str | os.PathLike) -> Path:
    """Where the digest of the checkpoint ``path`` is recorded: ``path`` + ``.sha256``."""
    path = Path(path)
    return path.with_name(f"{path.name}.sha256")


def save_checkpoint(path: str | os.PathLike, trainer: EnsembleTrainer,
                    extra: Any = None) -> Path:
    """Save ``trainer`` 's state and ``extra`` to ``path`` atomically, then its digest."""
    buffer = io.BytesIO()
    torch.save({"trainer": trainer.state_dict(), "extra": extra}, buffer)
    data = buffer.getvalue()
    atomic_write_bytes(path, data)
    atomic_write_bytes(digest_path(path),
                       f"{hashlib.sha256(data).hexdigest()}  {Path(path).name}\n".encode())
    return Path(path)


def _verified_bytes(path: str | os.PathLike) -> bytes:
    """The bytes of the checkpoint ``path``, checked against its digest if it has one.

    Raises:
        OSError: the checkpoint cannot be read.
        ValueError: they do not match the recorded digest (or it is unreadable).
    """
    data = Path(path).read_bytes()
    try:
        recorded = digest_path(path).read_text().split()[0]
    except FileNotFoundError:
        logger.debug("checkpoint %s has no digest; loading it unchecked", path)
        return data
    except (OSError, UnicodeDecodeError, IndexError) as err:
        raise ValueError(f"its digest {digest_path(path).name} is unreadable ({err})") from err
    if hashlib.sha256(data).hexdigest() != recorded:
        raise ValueError(f"its sha256 does not match {digest_path(path).name} (the file is "
                         "damaged)")
    return data


def load_checkpoint(path: str | os.PathLike, trainer: EnsembleTrainer) -> Any:
    """Restore ``trainer`` from ``path`` (``weights_only=True``); returns the ``extra``.

    Raises:
        ValueError: the file is unreadable, does not match its recorded digest, or belongs
            to another setup (the trainer is left unchanged only if the file could not be
            read or did not match).
    """
    try:
        data = _verified_bytes(path)
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        trainer.load_state_dict(state["trainer"])
    except (OSError, RuntimeError, KeyError, TypeError, EOFError, ValueError,
            pickle.UnpicklingError) as err:
        raise ValueError(f"cannot restore checkpoint {path}: {err}") from err
    return state.get("extra")


def list_checkpoints(directory: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(step, path)`` of the checkpoints in ``directory``, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir()
             if (m := _NAME.fullmatch(p.name))]
    return sorted(found)


def restore_latest(directory: str | os.PathLike, trainer: EnsembleTrainer) -> tuple[int, Any]:
    """Restore ``trainer`` from the newest checkpoint in ``directory`` that loads (and
    matches its digest); each one skipped is logged as a warning.

    Returns:
        ``(step, extra)`` of the checkpoint used, or ``(-1, None)`` if none loads (the
        trainer is then untouched, provided the failed files could not be read at all).
    """
    for step, path in reversed(list_checkpoints(directory)):
        try:
            return step, load_checkpoint(path, trainer)
        except ValueError as err:
            logger.warning("skipping checkpoint: %s; its steps are redone from an earlier "
                           "one", err)
    return -1, None
