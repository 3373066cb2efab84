"""``learnability``: the learnability window's training side (FOLLOWUPS §1; arXiv
2512.05790; docs/experiments.md#learnability).

Cells constant / shared / per-neuron gate, GRU and LSTM, all started at the update gate
``s = 0.05``, trained on ``multilag_seq`` (:mod:`.followup`), with two axes for the paper's
claims: ``noise_alphas``, the tail index of the task noise (claim L2, heavier tails shrink
the window ``H_N``), and ``gate_spreads``, a spread of per-neuron gate-bias logits around
``logit s`` (claim L3, broader time-scale spectra enlarge it). Checkpoints over training
measure the effective rates' envelope per rate lag and the time scale per neuron, the
matched statistic ψ with its tail fit, ``N_required`` per rate lag, the window ``H_N`` on
the detection grid and the scaling law (``learnability_window``), and the exact-transport
envelope beside the first-order one (``exact_envelope``).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from .followup import PAPER_PROTOCOL, PLAN, FollowupExperiment, FollowupSettings
from .registry import register_experiment
from .settings import numbers

#: ``gatescope run learnability`` at the protocol's sizes (docs/experiments.md#learnability).
PAPER: dict[str, Any] = {**PAPER_PROTOCOL, "noise_alphas": [2.0, 1.5],
                         "gate_spreads": [0.0, 1.0]}


class LearnabilitySettings(FollowupSettings):
    """Settings of :class:`LearnabilityExperiment` (defaults: the laptop run)."""

    noise_alphas: Annotated[tuple[float, ...], numbers(above=1, maximum=2)] = Field(
        (2.0, 1.5), description="tail indices of the task noise, each in (1, 2] (2: Gaussian)")
    gate_spreads: Annotated[tuple[float, ...], numbers(minimum=0)] = Field(
        (0.0, 1.0), description="spreads of the per-neuron gate-bias logits around logit(s) "
        "(multi_gate, gru, lstm; 0: all equal)")


@register_experiment("learnability")
class LearnabilityExperiment(FollowupExperiment):
    """The follow-up's protocol over gate types, noise tails and gate-bias spreads."""

    description = ("learnability window (arXiv 2512.05790): constant/shared/per-neuron gate, "
                   "GRU, LSTM on multilag_seq; noise tails x gate-bias spreads over training")
    settings_model = LearnabilitySettings
    plan = {**PLAN, "learnability_window": None, "exact_envelope": None,
            "matched_statistic": None}
