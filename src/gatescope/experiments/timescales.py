"""``timescales``: the time-scale spectrum and anti-collapse follow-up's training side
(FOLLOWUPS §2; arXiv 2606.29519; docs/experiments.md#timescales).

The three gate types (constant, shared, per-neuron), started at ``s = 0.05`` on
``multilag_seq`` (:mod:`.followup`), each trained with and without α-stable forcing of the
slow-mode updates (:mod:`gatescope.training.forcing`; claim A3: heavy-tailed forcing alone
does not rescue a constant gate). Checkpoints over training track the envelope per rate lag
and the time scale per neuron, from which the phase (collapsed, anti-collapsed, broad,
concentrated) is read at each checkpoint by ``timescale_spectrum`` (fitted ``τ_q``, the
CCDF exponent β with its bootstrap interval, the envelope's AIC law, the phase).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from .followup import (
    GATE_TYPES,
    PAPER_PROTOCOL,
    PLAN,
    FollowupExperiment,
    FollowupSettings,
    OptionalAlpha,
)
from .registry import register_experiment

#: ``gatescope run timescales`` at the protocol's sizes (docs/experiments.md#timescales):
#: the three gate types.
PAPER: dict[str, Any] = {**PAPER_PROTOCOL, "cells": list(GATE_TYPES), "forcing_alpha": 1.5}


class TimescalesSettings(FollowupSettings):
    """Settings of :class:`TimescalesExperiment` (defaults: the laptop run)."""

    forcing_alpha: OptionalAlpha = Field(
        1.5, description="tail index of the slow-mode forcing, in (0, 2]; none: no forced arm")


@register_experiment("timescales")
class TimescalesExperiment(FollowupExperiment):
    """The three gate types with and without heavy-tailed forcing of the slow modes."""

    description = ("time-scale spectrum (arXiv 2606.29519): constant/shared/per-neuron gate "
                   "with and without alpha-stable forcing of the slow-mode updates")
    settings_model = TimescalesSettings
    plan = {**PLAN, "timescale_spectrum": None}
