"""Trainer checkpoints on disk: atomic ``torch.save``, loaded with ``weights_only=True``.

A checkpoint file holds ``{"trainer": EnsembleTrainer.state_dict(), "extra": ...}``, where
``extra`` is whatever the caller keeps beside the trainer (e.g. measurement rows), made of
tensors, numbers, strings, ``None``, lists, tuples and dicts. Files are only ever read
with ``torch.load(weights_only=True)``, which refuses to unpickle arbitrary objects, so a
tampered or foreign checkpoint cannot run code.

In a folder, checkpoints are named ``step-00000400.pt``; :func:`restore_latest` resumes
from the newest one that loads.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_write
from .ensemble import EnsembleTrainer

logger = logging.getLogger(__name__)

_NAME = re.compile(r"step-(\d+)\.pt")


def checkpoint_path(directory: str | os.PathLike, step: int) -> Path:
    """``directory / "step-{step:08d}.pt"``."""
    return Path(directory) / f"step-{step:08d}.pt"


def save_checkpoint(path: str | os.PathLike, trainer: EnsembleTrainer,
                    extra: Any = None) -> Path:
    """Save ``trainer`` 's state and ``extra`` to ``path`` atomically."""
    state = {"trainer": trainer.state_dict(), "extra": extra}
    return atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str | os.PathLike, trainer: EnsembleTrainer) -> Any:
    """Restore ``trainer`` from ``path`` (``weights_only=True``); returns the ``extra``.

    Raises:
        ValueError: the file is unreadable or belongs to another setup (the trainer is
            left unchanged only if the file could not be read).
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
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
    """Restore ``trainer`` from the newest checkpoint in ``directory`` that loads.

    Returns:
        ``(step, extra)`` of the checkpoint used, or ``(-1, None)`` if none loads (the
        trainer is then untouched, provided the failed files could not be read at all).
    """
    for step, path in reversed(list_checkpoints(directory)):
        try:
            return step, load_checkpoint(path, trainer)
        except ValueError as err:
            logger.warning("skipping unreadable checkpoint: %s", err)
    return -1, None
