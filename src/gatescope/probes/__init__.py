"""Probes for a training loop: a :class:`Probe` called once per step records chosen quantities
on a fixed probe batch on a :class:`Schedule`, keeps them as plain arrays, and saves them as
JSON + NPZ that :func:`load_probe` reads back without a model.

Built-in quantities, cheapest first (``"cheap"`` preset: cost ``<= 1``; ``"full"``: all):
``loss``, ``gates``, ``optimizer_steps`` (0), ``effective_rates``, ``timescale_spectrum``
(1), ``propagation_anisotropy``, ``alignment``, ``matched_statistic``, ``exact_envelope``,
``learnability_window`` (2),
``update_anisotropy`` (3), ``profile`` (4).
Add your own with :func:`register_quantity`.
"""

from . import quantities as _builtins  # noqa: F401  (registers the built-in quantities)
from . import quantities_followups as _followups  # noqa: F401  (and the follow-ups')
from .context import ProbeContext
from .probe import Probe
from .registry import (
    CHEAP_COST,
    PRESETS,
    Quantity,
    SkipQuantity,
    get_quantity,
    list_quantities,
    register_quantity,
)
from .results import ProbeResults, load_probe
from .schedule import Schedule

__all__ = [
    "CHEAP_COST",
    "PRESETS",
    "Probe",
    "ProbeContext",
    "ProbeResults",
    "Quantity",
    "Schedule",
    "SkipQuantity",
    "get_quantity",
    "list_quantities",
    "load_probe",
    "register_quantity",
]
