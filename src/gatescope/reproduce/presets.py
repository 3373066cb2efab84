"""The ``reproduce`` presets: the settings of each experiment, and the fidelity runs.

``paper`` is the paper's protocol (its code's settings, docs/fidelity.md#paper-protocol) with
20 seeds and the
factorial anisotropy design (which contains the paper's three arms). ``quick`` keeps every
experiment, claim and figure but trades statistical power and training length for time, so
it finishes in minutes on a laptop CPU; :data:`QUICK_TRADE_OFFS` says what it gives up, and
the report repeats it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..paper import FIDELITY


@dataclass(frozen=True)
class FidelityRun:
    """One paper-code defect switched on, run beside the default for comparison.

    Attributes:
        switch: the setting that reproduces the defect.
        experiment: which experiment it applies to.
        overrides: settings of the fidelity run (the switch plus any size reductions); it is
            compared with the default run's rows of the same groups and seeds.
    """

    switch: str
    experiment: str
    overrides: dict[str, Any]

    @classmethod
    def of(cls, switch: str, **reductions: Any) -> FidelityRun:
        """The run of the paper's fidelity switch ``switch`` (see :data:`gatescope.paper.
        FIDELITY`): its experiment, its settings, then ``reductions``.

        Raises:
            ValueError: ``switch`` is not one of the paper's fidelity switches.
        """
        if switch not in FIDELITY:
            raise ValueError(f"switch must be one of {sorted(FIDELITY)}, got {switch!r}")
        known = FIDELITY[switch]
        return cls(switch, known.experiment, {**known.settings, **reductions})


@dataclass(frozen=True)
class Preset:
    """Settings per experiment and the fidelity runs of a preset.

    Attributes:
        name: the preset's name.
        settings: ``{experiment: {setting: value}}`` over the experiments' defaults.
        fidelity: the fidelity runs.
        trade_offs: what it gives up against the paper's protocol, one line each (the
            report repeats them).
    """

    name: str
    settings: dict[str, dict[str, Any]]
    fidelity: tuple[FidelityRun, ...]
    trade_offs: tuple[str, ...] = ()


QUICK_TRADE_OFFS = (
    "4 seeds for profiles, 3 for anisotropy and 5 for expansion instead of 20: medians and "
    "IQRs are rough, so verdicts that hinge on a spread (C2, C5) are less certain",
    "profiles trains 400 steps (checkpoints 0/100/200/400) instead of 800 (0/50/200/400/600/"
    "800)",
    "anisotropy runs 3 of the 5 tasks (adding, delaysum, narma10) at T=80 instead of 120, "
    "300 steps (checkpoints 0/150/300) instead of 1200, with 32 probe sequences, 32 sampled "
    "products per lag and 128 per-example gradients instead of 64, 64 and 256",
)

_GATED = ["scalar_gate", "multi_gate"]
_FIDELITY_QUICK = (
    FidelityRun.of("product_order", seeds=2, cells=_GATED),
    FidelityRun.of("norms", seeds=2),
    FidelityRun.of("gate_term_profiles", seeds=2, cells=_GATED),
    FidelityRun.of("profile_protocol", seeds=2),
    FidelityRun.of("gate_term"),
    FidelityRun.of("appendix_code"),
    FidelityRun.of("fixed_batch", design="paper", tasks=["adding"]),
    FidelityRun.of("spectrum_epsilon", design="paper", tasks=["adding"], lags=[40]),
    FidelityRun.of("sampled_products", design="paper", tasks=["adding"], lags=[1, 8, 40]),
)

PRESETS = {
    "quick": Preset(
        "quick",
        {
            "expansion": {"seeds": 5},
            "profiles": {"seeds": 4, "steps": 400, "checkpoints": [0, 100, 200, 400]},
            "anisotropy": {"seeds": 3, "steps": 300, "checkpoints": [0, 150, 300],
                           "seq_len": 80, "tasks": ["adding", "delaysum", "narma10"],
                           "probe_batch": 32, "samples_per_lag": 32,
                           "gradient_examples": 128},
        },
        _FIDELITY_QUICK,
        QUICK_TRADE_OFFS,
    ),
    "paper": Preset(
        "paper",
        {"expansion": {"seeds": 20}, "profiles": {"seeds": 20}, "anisotropy": {"seeds": 20}},
        (
            FidelityRun.of("product_order", cells=_GATED),
            FidelityRun.of("norms"),
            FidelityRun.of("gate_term_profiles", cells=_GATED),
            FidelityRun.of("profile_protocol"),
            FidelityRun.of("gate_term"),
            FidelityRun.of("appendix_code"),
            FidelityRun.of("fixed_batch", design="paper", tasks=["adding"]),
            FidelityRun.of("spectrum_epsilon", design="paper", tasks=["adding"], lags=[40]),
            FidelityRun.of("sampled_products", design="paper", tasks=["adding"]),
        ),
    ),
}
