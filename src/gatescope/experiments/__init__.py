"""Experiments: a grid of groups × seeds, run by :func:`run_experiment` (``gatescope run``).

* :mod:`.base` — the protocol: :class:`Settings`, :class:`Group`, :class:`Experiment`.
* :mod:`.registry` — :func:`register_experiment`, :func:`get_experiment`,
  :func:`list_experiments`.
* :mod:`.settings` — TOML / ``--set`` parsing, validation, :class:`SettingsError`.
* :mod:`.storage` — the run folder: atomic writes, integrity markers, ``results.csv``.
* :mod:`.runner` — :func:`run_experiment`: parallel groups, resume, progress.

Importing this package registers the built-in experiments.
"""

# isort: off
from ..results import RESULT_COLUMNS
from .base import Experiment, Group, Progress, Settings
from .registry import experiment_class, get_experiment, list_experiments, register_experiment

# Importing the experiment modules registers them.
from . import train, profiles, anisotropy, expansion, families  # noqa: F401
from . import learnability, timescales  # noqa: F401

# isort: on
from ..results import read_rows
from .runner import RunError, RunResult, run_experiment
from .settings import SettingsError, build_settings, load_toml, parse_assignments
from .storage import OutputFolderError, RunLocked

__all__ = [
    "RESULT_COLUMNS",
    "Experiment",
    "Group",
    "OutputFolderError",
    "Progress",
    "RunError",
    "RunLocked",
    "RunResult",
    "Settings",
    "SettingsError",
    "build_settings",
    "experiment_class",
    "get_experiment",
    "list_experiments",
    "load_toml",
    "parse_assignments",
    "read_rows",
    "register_experiment",
    "run_experiment",
]
