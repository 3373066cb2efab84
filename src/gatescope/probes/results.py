"""Recorded probe values as plain arrays, saved as a JSON + NPZ pair and loaded without a model.

Files: ``<stem>.npz`` holds one array per recorded metric (its name in
:mod:`gatescope.metrics`, shape ``(R, ...)`` over the ``R`` recorded steps and the metric's
axes, float64, NaN where a quantity was skipped); ``<stem>.json`` holds the steps and the
metadata (quantities, their metrics, lags, schedule, settings, versions, notes, axes,
coords) and the SHA-256 of the NPZ file, so a JSON file never silently pairs
with another run's arrays. Each file is written to a temporary file and renamed into place,
the NPZ first, so a reader never sees a half-written file.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_write_bytes

FORMAT = "gatescope-probe"
FORMAT_VERSION = 2  # 2: arrays keyed by metric name
_SUFFIXES = (".json", ".npz")


def probe_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """The ``(json, npz)`` files of ``path``: a stem, or either file of the pair."""
    path = Path(path)
    if path.suffix in _SUFFIXES:
        path = path.with_suffix("")
    return path.with_name(path.name + ".json"), path.with_name(path.name + ".npz")


@dataclass
class ProbeResults:
    """What a probe recorded.

    Attributes:
        steps: ``(R,)`` int64, the recorded training steps, ascending.
        history: ``{metric name: (R, ...) float64}``.
        metadata: JSON-ready description: ``quantities`` (in cost order), ``costs``,
            ``metrics`` (``{quantity: [metric names recorded]}``), ``lags``, ``schedule``,
            ``settings``, ``versions``, ``notes`` (``{quantity: {message: [steps]}}`` for
            skipped calls), ``axes`` (``{metric: [axis names]}``) and ``coords``
            (``{axis name: values}``).
    """

    steps: np.ndarray
    history: dict[str, np.ndarray]
    metadata: dict[str, Any]

    @property
    def quantities(self) -> list[str]:
        """The quantities asked for, cheapest first."""
        return list(self.metadata["quantities"])

    @property
    def notes(self) -> dict[str, dict[str, list[int]]]:
        """``{quantity: {message: [steps]}}``: why a quantity was skipped, and when."""
        return self.metadata["notes"]

    def __getitem__(self, key: str) -> np.ndarray:
        return self.history[key]

    def quantity(self, name: str) -> dict[str, np.ndarray]:
        """The arrays of one quantity's recorded metrics, by metric name."""
        return {k: self.history[k] for k in self.metadata["metrics"].get(name, [])}

    def log_to(self, logger: Any) -> None:
        """Replay every recorded step into ``logger`` (a
        :class:`~gatescope.probes.probe.RecordLogger`, e.g. a TensorBoard or W&B logger of
        :mod:`gatescope.integrations.loggers`), as the probe would have while recording:
        at each step the metrics recorded then (a metric all NaN at a step, its quantity
        skipped, is left out)."""
        coords = self.metadata["coords"]
        for index, step in enumerate(self.steps):
            record = {key: values[index] for key, values in self.history.items()
                      if not np.isnan(values[index]).all()}
            logger.log(int(step), record, coords)

    def save(self, path: str | os.PathLike) -> tuple[Path, Path]:
        """Write ``<stem>.npz`` then ``<stem>.json`` atomically (see the module notes).

        Args:
            path: the stem, or either file name of the pair; parent folders are created.

        Returns:
            ``(json_path, npz_path)``.
        """
        json_path, npz_path = probe_paths(path)
        npz_path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        np.savez(buffer, **self.history)
        arrays = buffer.getvalue()
        header = {"format": FORMAT, "format_version": FORMAT_VERSION,
                  "steps": [int(s) for s in self.steps], "npz": npz_path.name,
                  "npz_sha256": hashlib.sha256(arrays).hexdigest()}
        text = json.dumps({**header, **self.metadata}, indent=2, allow_nan=False)
        atomic_write_bytes(npz_path, arrays)
        atomic_write_bytes(json_path, text.encode())
        return json_path, npz_path

    @classmethod
    def load(cls, path: str | os.PathLike) -> ProbeResults:
        """Read what :meth:`save` wrote (no model needed).

        Args:
            path: the stem, or either file name of the pair.

        Raises:
            FileNotFoundError: a file of the pair is missing.
            ValueError: not a probe file, an unknown format version, or an NPZ file that is
                not the one the JSON file was saved with.
        """
        json_path, npz_path = probe_paths(path)
        meta = json.loads(json_path.read_text())
        if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{json_path} is not a {FORMAT} file of version {FORMAT_VERSION}")
        arrays = npz_path.read_bytes()
        if hashlib.sha256(arrays).hexdigest() != meta["npz_sha256"]:
            raise ValueError(f"{npz_path} does not match {json_path} (checksum differs); "
                             "the pair was not saved together")
        with np.load(io.BytesIO(arrays), allow_pickle=False) as npz:
            history = {key: npz[key] for key in npz.files}
        steps = np.asarray(meta["steps"], dtype=np.int64)
        for key in ("format", "format_version", "steps", "npz", "npz_sha256"):
            meta.pop(key)
        return cls(steps, history, meta)


def load_probe(path: str | os.PathLike) -> ProbeResults:
    """Load a probe's saved results; same as :meth:`ProbeResults.load`."""
    return ProbeResults.load(path)
