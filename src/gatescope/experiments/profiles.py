"""``profiles`` (paper §VII-A): lag profiles of transport sensitivity and their gate-product
predictors over training.

Each group trains one cell over all seeds with fresh batches each step; at every checkpoint
each seed's fixed probe batch (stream ``"probe"`` of the seed) is measured by the quantities
of :data:`PLAN`: the sensitivity profile ``μ̃_eff(ℓ)``, both gate-product predictors with
their fitted power ``s`` and ``R²``, the effective rates' envelope and across-neuron
dispersion (first and zeroth order), and the quantities behind the schedule and momentum
analogies. Rows also carry the training ``loss``.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from .. import metrics as M
from ..cells import cell_class
from ..probes import ProbeContext
from ..training import EnsembleTrainer, stream_generator
from .base import Experiment, Group, Progress
from .fidelity_settings import TransportFidelity
from .grid import GridSettings
from .measurements import plan_with, train_measured
from .registry import register_experiment
from .settings import (
    MAX_BATCH,
    MAX_STEPS,
    BatchSize,
    CellNames,
    Lags,
    OptionalInputSize,
    QuantityNames,
    Seeds,
    StepCount,
    Steps,
    lr_for,
    number,
)

PROBE_STREAM = "probe"

#: The quantities measured at each checkpoint, and the metrics kept of each.
PLAN = {
    "profile": None,
    "effective_rates": (M.ENVELOPE, M.RATE_CV_ORDER1),
    "zeroth_order_rates": None,
    "zeroth_order_rates_null": None,
    "schedule": None,
}


#: Power iterations of each ``norms`` setting (``None``: exact norms).
POWER_ITERATIONS = {"exact": None, "power5": 5}


class ProfilesSettings(GridSettings, TransportFidelity):
    """Settings of :class:`ProfilesExperiment` (defaults: the paper's §VII-A)."""

    cells: CellNames = Field(("leaky", "scalar_gate", "multi_gate"), description="cell names")
    seeds: Seeds = Field(tuple(range(20)), description="a count N (seeds 0..N-1) or a list")
    steps: StepCount = Field(800, description=f"optimizer steps (<= {MAX_STEPS})")
    checkpoints: Steps | None = Field((0, 50, 200, 400, 600, 800),
                                      description="steps at which the probe batch is measured")
    input_size: OptionalInputSize = Field(4, description="m")
    probe_batch: BatchSize = Field(12, description=f"fixed probe sequences per seed "
                                   f"(<= {MAX_BATCH})")
    alpha: Annotated[float, number(above=0, maximum=1)] = Field(
        0.8, description="leaky cell's update weight, in (0, 1]")
    trim: Annotated[float, number(minimum=0, below=0.5)] = Field(
        0.01, description="quantile cut of the power fit, in [0, 0.5)")
    rate_lags: Lags = Field((1, 2, 4, 8, 16, 32), description="lags of effective rates "
                            "(each < seq_len)")
    schedule_lags: Lags = Field((1, 5, 10, 20), description="lags of the implied schedule "
                                "(each < seq_len)")
    log_every: StepCount = Field(10, description="record the training loss every k steps")
    norms: Literal["exact", "power5"] = Field(
        "exact", description="transport norms: exact (certified), or power5 = the paper "
        "code's 5 power iterations")
    gate_factors: Literal["lag", "lag+1"] = Field(
        "lag", description="factors of the gate product; lag+1 = the paper code's (the start "
        "step's gate too)")
    pairs: Literal["all", "paper"] = Field(
        "all", description="pairs of the profile and fit; paper = the code's, without those "
        "starting at k = 0")
    profile_median: Literal["interpolated", "lower"] = Field(
        "interpolated", description="lag medians; lower = the paper code's torch.median")
    extra_quantities: QuantityNames = Field(
        (), description="more registered quantities measured at each checkpoint")

    _lags_fit = field_validator("rate_lags", "schedule_lags")(GridSettings.lags_within)


def cell_options(cell: str, alpha: float) -> dict[str, Any] | None:
    """The ``alpha`` setting for a cell whose constructor takes an ``alpha`` (``leaky``, or a
    user's cell), else no options."""
    takes_alpha = "alpha" in inspect.signature(cell_class(cell)).parameters
    return {"alpha": alpha} if takes_alpha else None

    def largest_tensors(self) -> list[tuple[str, list[tuple[str, int]]]]:
        return [*super().largest_tensors(), self.probe_jacobians(self.probe_batch)]


@register_experiment("profiles")
class ProfilesExperiment(Experiment):
    """Lag-dependent effective learning rates under fixed-step SGD (claims C1–C3)."""

    description = ("§VII-A: transport-sensitivity lag profiles vs gate-product predictors "
                   "over training")
    settings_model = ProfilesSettings

    def groups(self, settings: ProfilesSettings) -> list[Group]:
        return settings.grid()

    def run_group(self, settings: ProfilesSettings, group: Group, workdir: Path,
                  progress: Progress) -> list[dict[str, Any]]:
        lr = lr_for(settings.lr, group.optimizer)
        trainer = settings.trainer(group, cell_options(group.cell, settings.alpha))
        probe_u, probe_y = trainer.sample_batch([stream_generator(s, PROBE_STREAM)
                                                 for s in trainer.seeds], settings.probe_batch)[:2]

        plan = plan_with(PLAN, settings.extra_quantities)

        def contexts(t: EnsembleTrainer, idx: list[int], seeds: list[int], models: list):
            return (ProbeContext(
                model, probe_u[k], probe_y[k], None, None, lags=settings.rate_lags, rank=10,
                samples_per_lag=1, step=t.steps_done, schedule_lags=settings.schedule_lags,
                lr=lr, trim=settings.trim, power_iterations=POWER_ITERATIONS[settings.norms],
                gate_factors=settings.gate_factors, profile_pairs=settings.pairs,
                profile_median=settings.profile_median, **settings.transport_options(model.cell))
                for k, model in zip(idx, models, strict=True))

        return train_measured(self.name, group, trainer, settings, workdir, progress,
                              contexts, plan)
