"""What gatescope knows about the paper it reproduces, in one place.

L. Livi, "Time-Scale Coupling Between States and Parameters in Recurrent Neural Networks"
(arXiv 2508.12121): its experiments, the arms of §VII-B, its claims C1–C8 and the defects of
its code that ``reproduce`` switches on one at a time (docs/fidelity.md). The presets, the
experiments and the report read these names; nothing else repeats them.

A leaf module: it imports only the metric catalogue (:mod:`gatescope.metrics`, itself a
leaf) and no third-party package, so every layer may read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import metrics as M

#: How the report cites the paper.
CITATION = ("L. Livi, \"Time-Scale Coupling Between States and Parameters in Recurrent Neural "
            "Networks\" (arXiv 2508.12121)")

#: The paper's experiments (registered experiment names), in report order.
EXPERIMENTS = ("expansion", "profiles", "anisotropy")

#: The paper's §VII-B arms: ``(cell, optimizer)``.
PAPER_ARMS = (("plain", "adam"), ("scalar_gate", "sgd"), ("multi_gate", "sgd"))
#: The experiment the arms belong to (its factorial design contains them).
PAPER_ARMS_EXPERIMENT = "anisotropy"


@dataclass(frozen=True)
class Claim:
    """One claim of the paper.

    Attributes:
        id: ``C1`` ... ``C8`` (the paper), ``L1`` ... ``A3`` (the follow-ups).
        title: the claim in one line.
        experiment: the experiment whose results test it.
    """

    id: str
    title: str
    experiment: str


#: The paper's claims by id, in report order.
CLAIMS = {c.id: c for c in (
    Claim("C1", "lag-dependent effective learning rates under fixed-step SGD", "profiles"),
    Claim("C2", "learned gates reshape the profile during training", "profiles"),
    Claim("C3", "multi-dimensional gates give neuron-specific effective rates", "profiles"),
    Claim("C4", "gates concentrate gradient flow into low-dimensional subspaces", "anisotropy"),
    Claim("C5", "multi-gate with SGD matches or exceeds the anisotropy that Adam induces",
          "anisotropy"),
    Claim("C6", "gates shape transport, optimizers shape updates", "anisotropy"),
    Claim("C7", "gates align transport with loss-relevant directions", "anisotropy"),
    Claim("C8", "the first-order expansion is accurate; the gate correction is small but "
          "systematic", "expansion"),
)}


#: How the report cites the two follow-ups, by the name ``reproduce --paper`` takes.
FOLLOWUP_CITATIONS = {
    "learnability": "L. Livi, \"Learnability Window in Gated RNNs\" (arXiv 2512.05790)",
    "anticollapse": "L. Livi, anti-collapse and multi-time-scale learning (arXiv 2606.29519)",
}
#: The experiment that tests each follow-up's claims.
FOLLOWUP_EXPERIMENTS = {"learnability": "learnability", "anticollapse": "timescales"}

#: The follow-ups' claims by id, in report order (docs/followups.md).
FOLLOWUP_CLAIMS = {c.id: c for c in (
    Claim("L1", "the samples needed to detect a lag-ℓ dependency scale as N(ℓ) ∝ "
          "f(ℓ)^(-κ_α), κ_α = α/(α-1)", "learnability"),
    Claim("L2", "heavier-tailed gradient statistics (smaller α) shrink the learnability "
          "window H_N", "learnability"),
    Claim("L3", "a broader spectrum of gate time scales enlarges the learnability window H_N",
          "learnability"),
    Claim("A1", "the envelope's decay class is not fixed by the architecture: it emerges in "
          "training", "timescales"),
    Claim("A2", "per-neuron gates can hold a broad time-scale spectrum where constant and "
          "shared gates collapse", "timescales"),
    Claim("A3", "heavy-tailed forcing alone does not rescue a constant gate", "timescales"),
)}


@dataclass(frozen=True)
class FidelitySwitch:
    """Settings that reproduce one defect (or one protocol detail) of the paper's code.

    Attributes:
        name: the fidelity run's name (the setting's, when it is one setting of one
            experiment).
        experiment: the experiment it belongs to.
        settings: ``{setting: value}`` of that experiment that switch the defect on.
        description: the defect in words.
        metrics: the headline metrics it moves, each with the result columns that tell its
            rows apart: ``((metric, (column, ...)), ...)``.
    """

    name: str
    experiment: str
    settings: dict[str, Any]
    description: str
    metrics: tuple[tuple[str, tuple[str, ...]], ...]


_PROFILE_FIT = ((M.FIT_SLOPE, ("cell", "predictor")), (M.FIT_R2, ("cell", "predictor")))
_EXPANSION = ((M.ERROR_SLOPE, ("cell",)), (M.CORRECTION_RATIO_MEDIAN, ("cell",)))
_JACOBIAN = ((M.JACOBIAN_AI, ("task", "cell", "optimizer", "lag")),
             (M.JACOBIAN_CE, ("task", "cell", "optimizer", "lag")))

#: The fidelity runs by name, in report order.
FIDELITY = {s.name: s for s in (
    FidelitySwitch("product_order", "profiles", {"product_order": "reversed"},
                   "transport products multiplied in reversed order", _PROFILE_FIT),
    FidelitySwitch("norms", "profiles", {"norms": "power5"},
                   "transport norms estimated by 5 power iterations instead of exactly",
                   _PROFILE_FIT),
    FidelitySwitch("gate_term_profiles", "profiles", {"gate_term": "updated"},
                   "the gate term of the Jacobians uses the post-update state", _PROFILE_FIT),
    FidelitySwitch("profile_protocol", "profiles",
                   {"gate_factors": "lag+1", "pairs": "paper", "profile_median": "lower"},
                   "the gate product has lag+1 factors, pairs from k = 0 are left out, lag "
                   "medians are the lower middle value", _PROFILE_FIT),
    FidelitySwitch("gate_term", "expansion", {"gate_term": "updated"},
                   "the gate term uses the post-update state", _EXPANSION),
    FidelitySwitch("appendix_code", "expansion",
                   {"gate_term": "updated", "product_order": "reversed"},
                   "the appendix code as it is: post-update gate term and reversed products",
                   _EXPANSION),
    FidelitySwitch("fixed_batch", "anisotropy", {"fixed_batch": True},
                   "§VII-B trains on one fixed batch", ((M.GRADCOV_AI, ("task", "cell",
                                                                         "optimizer")),)),
    FidelitySwitch("spectrum_epsilon", "anisotropy", {"spectrum_epsilon": 1e-12},
                   "AI_r and CE_r regularised by an absolute 1e-12, which dominates once a "
                   "transport product has vanished (the plain cell at long lags)", _JACOBIAN),
    FidelitySwitch("sampled_products", "anisotropy",
                   {"product_order": "reversed", "product_dtype": "float32",
                    "sampling": "paper", "gate_term": "updated"},
                   "sampled transport products reversed, in float32, from the code's windows, "
                   "with the post-update gate term", _JACOBIAN),
)}
