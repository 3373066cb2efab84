"""What ``learnability`` and ``timescales`` share: the follow-ups' protocol (FOLLOWUPS §1
"Protocol"; docs/experiments.md#learnability).

The task is ``multilag_seq`` (a target at every step, counted from the largest lag) at the
settings' lags, coefficients and noise; every cell starts at one update gate ``s``
(:func:`gatescope.cells.init_update_gate`: the constant gate is ``leaky`` with ``α = s``, a
learned gate has weights 0 and bias ``logit s``), optionally with a spread of per-neuron
gate biases; seeds train as one ensemble with AdamW (weight decay), gradient clipping per
seed, and optionally α-stable forcing of the slow-mode updates
(:class:`gatescope.training.StableForcing`).

One group is one *arm*: ``(noise α, cell, gate spread, forced or not)``. Its ``task`` is
``multilag_seq`` (Gaussian noise) or ``multilag_seq.alpha{α}``; its ``cell`` the cell name,
or ``{cell}.spread{σ_b}`` for a spread of gate biases; its ``optimizer`` the optimizer name,
with ``+forcing`` for the forced arm.

At each checkpoint each live seed's fixed probe batch (stream ``"probe"``) is measured by
:attr:`FollowupExperiment.plan` (the probe loss, the first-order effective rates' envelope per
rate lag and time scale per neuron, and each experiment's own measures) plus the
``extra_quantities``; rows also carry the training ``loss``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import Field, ValidationInfo, field_validator, model_validator

from .. import metrics as M
from ..cells import cell_class, init_update_gate
from ..cells.gated import GatedCell
from ..cells.leaky import LeakyCell
from ..probes import ProbeContext
from ..training import (
    EnsembleTrainer,
    StableForcing,
    seeded_init,
    stream_generator,
    task_model_factory,
)
from .base import Experiment, Group, Progress
from .grid import GridSettings
from .measurements import plan_with, train_measured
from .settings import (
    BatchSize,
    HiddenSize,
    Lags,
    LearningRates,
    NonNegativeFloat,
    OptimizerNames,
    OptionalInputSize,
    QuantityNames,
    Seeds,
    SeqLen,
    SettingConflict,
    StepCount,
    Steps,
    lr_for,
    number,
    numbers,
)
from .stable_noise import StableNoiseMultiLag

#: The cells of the protocol: the constant gate, the shared and per-neuron gates, GRU, LSTM.
CELLS = ("leaky", "scalar_gate", "multi_gate", "gru", "lstm")
Cell = Literal["leaky", "scalar_gate", "multi_gate", "gru", "lstm"]
#: The three gate types, every experiment's default cells: constant, shared, per-neuron.
GATE_TYPES = ("leaky", "scalar_gate", "multi_gate")
#: The task every arm trains on.
TASK = "multilag_seq"
#: The probe batch's stream of each seed.
PROBE_STREAM = "probe"
#: ``r`` of the spectrum statistics, should an extra quantity need one.
SPECTRUM_RANK = 10

#: The quantities both experiments measure at each checkpoint, and the metrics kept of each;
#: each experiment adds its own (:attr:`FollowupExperiment.plan`).
PLAN = {
    "loss": None,
    "effective_rates": (M.ENVELOPE, M.TIME_SCALES),
}

#: The laptop rate lags: ``numpy.geomspace(1, 64, 40)`` rounded (twice the largest task
#: lag), plus the task's lags.
LAPTOP_RATE_LAGS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 13, 14, 16, 18, 20, 22, 24, 25, 27, 30,
                    32, 34, 38, 42, 46, 52, 58, 64)
#: The protocol's rate lags: ``numpy.geomspace(4, 256, 32)`` rounded, plus the task's lags.
PAPER_RATE_LAGS = (4, 5, 6, 7, 8, 9, 10, 12, 13, 15, 17, 20, 23, 26, 30, 32, 34, 39, 45, 51, 59,
                   64, 67, 77, 88, 100, 114, 128, 131, 150, 171, 192, 196, 224, 256)

#: The protocol's settings (FOLLOWUPS §1), for both experiments; the step count is ours (the
#: protocol gives none). Cost: docs/experiments.md#learnability.
PAPER_PROTOCOL: dict[str, Any] = {
    "seq_len": 1024, "lags": [32, 64, 128, 192, 256],
    "coefficients": [0.6, 0.5, 0.4, 0.32, 0.26], "noise_std": 0.3, "hidden_size": 128,
    "batch_size": 512, "lr": 1e-3, "weight_decay": 1e-4, "clip_norm": 1.0,
    "initial_gate": 0.05, "rate_lags": list(PAPER_RATE_LAGS), "steps": 10_000,
    "checkpoints": [0, 500, 1000, 2000, 4000, 6000, 8000, 10_000], "seeds": 10,
    "probe_batch": 32, "log_every": 50, "cells": list(CELLS),
}

OptionalAlpha = Annotated[float | None, number(optional=True, above=0, maximum=2)]


def gate_logits(initial_gate: float, spread: float, size: int) -> torch.Tensor:
    """``(size,)`` float64 initial gate logits ``logit s + σ_b · Φ^{-1}((q + ½)/size)``:
    all ``logit s`` for ``σ_b = 0``, else spread over the standard normal quantiles (the
    neuron order is immaterial: the other weights are i.i.d. across neurons)."""
    levels = (torch.arange(size, dtype=torch.float64) + 0.5) / size
    centre = math.log(initial_gate / (1 - initial_gate))
    return centre + spread * torch.special.ndtri(levels)


def per_neuron_gate(cell: str) -> bool:
    """Whether the cell has one learned gate per neuron (``multi_gate``, ``gru``, ``lstm``)."""
    cls = cell_class(cell)
    return not (issubclass(cls, LeakyCell) or (issubclass(cls, GatedCell)
                                               and not cls.per_neuron_gate))


@dataclass(frozen=True)
class Arm:
    """One group's configuration (module docstring)."""

    noise_alpha: float
    cell: str
    spread: float
    optimizer: str
    forced: bool

    @property
    def group(self) -> Group:
        task = TASK if self.noise_alpha == 2 else f"{TASK}.alpha{self.noise_alpha:g}"
        cell = self.cell if self.spread == 0 else f"{self.cell}.spread{self.spread:g}"
        return Group(task, cell, f"{self.optimizer}+forcing" if self.forced else self.optimizer)


class FollowupSettings(GridSettings):
    """Settings shared by ``learnability`` and ``timescales`` (defaults: the laptop run)."""

    tasks: tuple[Literal["multilag_seq"], ...] = Field(
        (TASK,), description="the task: multilag_seq, at the lags, coefficients and noise below")
    cells: list[Cell] = Field(default=list(GATE_TYPES), min_length=1,
                              description=f"cells: {', '.join(CELLS)}")
    optimizers: OptimizerNames = Field(("adamw",), description="optimizers")
    lr: LearningRates = Field(1e-3, description="learning rate, or a table {optimizer = lr}")
    weight_decay: NonNegativeFloat = Field(1e-4, description="the optimizer's weight decay")
    clip_norm: Annotated[float | None, number(optional=True, above=0)] = Field(
        1.0, description="clip each seed's gradient norm to this; none: no clipping")
    seeds: Seeds = Field((0, 1, 2), description="a count N (seeds 0..N-1) or a list")
    steps: StepCount = Field(200, description="optimizer steps")
    checkpoints: Steps | None = Field((0, 50, 100, 200), description="measurement steps")
    batch_size: BatchSize = Field(32, description="fresh sequences per seed per step")
    seq_len: SeqLen = Field(128, description="task length T")
    input_size: OptionalInputSize = Field(16, description="m: x_t ~ N(0, I_m)")
    hidden_size: HiddenSize = Field(32, description="n")
    bias: bool = Field(True, description="biases in the cell and the readout (the gate "
                       "initialisation sets the gate biases)")
    lags: Lags = Field((4, 8, 16, 24, 32), description="the task's lags l_k (each < seq_len)")
    coefficients: Annotated[tuple[float, ...], numbers()] = Field(
        (0.6, 0.5, 0.4, 0.32, 0.26), description="the task's c_k, one per lag")
    noise_std: NonNegativeFloat = Field(0.3, description="the task's noise scale sigma")
    noise_alphas: Annotated[tuple[float, ...], numbers(above=1, maximum=2)] = Field(
        (2.0,), description="tail indices of the task noise, each in (1, 2] (2: Gaussian)")
    initial_gate: Annotated[float, number(above=0, below=1)] = Field(
        0.05, description="every cell's initial update gate s (retention 1 - s)")
    gate_spreads: Annotated[tuple[float, ...], numbers(minimum=0)] = Field(
        (0.0,), description="spreads of the per-neuron gate-bias logits around logit(s) "
        "(multi_gate, gru, lstm; 0: all equal)")
    forcing_alpha: OptionalAlpha = Field(
        None, description="tail index of the slow-mode forcing, in (0, 2]; none: no forced arm")
    forcing_scale: NonNegativeFloat = Field(
        1.0, description="forcing size relative to the RMS of each update")
    rate_lags: Lags = Field(LAPTOP_RATE_LAGS, description="lags of the effective rates "
                            "(each < seq_len)")
    probe_batch: BatchSize = Field(8, description="fixed probe sequences per seed")
    log_every: StepCount = Field(10, description="record the training loss every k steps")
    extra_quantities: QuantityNames = Field(
        (), description="more registered quantities measured at each checkpoint")

    _lags_fit = field_validator("rate_lags", "lags")(GridSettings.lags_within)

    @field_validator("seq_len")
    @classmethod
    def _tasks_take_length(cls, seq_len: int, info: ValidationInfo) -> int:
        return seq_len  # the task is built from this grid's lags: see _task_builds

    @field_validator("input_size")
    @classmethod
    def _tasks_take_inputs(cls, input_size: int | None, info: ValidationInfo) -> int | None:
        return input_size

    @field_validator("cells", mode="before")
    @classmethod
    def _listed(cls, value: Any) -> Any:
        items = [v.strip() for v in value.split(",")] if isinstance(value, str) else value
        if isinstance(items, list | tuple) and len(set(items)) != len(items):
            raise ValueError(f"give each cell once; got {list(items)}")
        return items

    @field_validator("noise_alphas", "gate_spreads")
    @classmethod
    def _distinct(cls, values: tuple[float, ...], info: ValidationInfo) -> tuple[float, ...]:
        if len({f"{v:g}" for v in values}) != len(values):  # as the group names write them
            raise ValueError(f"give each value once (to 6 significant digits); got "
                             f"{list(values)}")
        return values

    @model_validator(mode="after")
    def _gates_have_biases(self) -> FollowupSettings:
        learned = [c for c in self.cells if c != "leaky"]
        if learned and not self.bias:
            raise SettingConflict("bias, cells", f"the gate initialisation sets the gate biases "
                                  f"of {', '.join(learned)}: bias must be true")
        return self

    @model_validator(mode="after")
    def _task_builds(self) -> FollowupSettings:
        if len(self.coefficients) != len(self.lags):
            raise SettingConflict("coefficients, lags", f"give one coefficient per lag: "
                                  f"{len(self.lags)} lags, {len(self.coefficients)} coefficients")
        try:
            self.task(TASK)
        except ValueError as err:
            raise SettingConflict("seq_len, input_size, lags, coefficients, noise_std",
                                  str(err)) from None
        return self

    def largest_tensors(self) -> list[tuple[str, list[tuple[str, int]]]]:
        state = ("state size (hidden_size; 2 x hidden_size for lstm)",
                 self.hidden_size * (2 if "lstm" in self.cells else 1))
        return [("the ensemble's states", [("seeds", len(self.seeds)),
                                           ("batch_size", self.batch_size),
                                           ("seq_len", self.seq_len), state]),
                ("one seed's probe Jacobians", [("probe_batch", self.probe_batch),
                                                ("seq_len", self.seq_len), state, state])]

    # ------------------------------------------------------------------ the grid

    def arms(self) -> list[Arm]:
        """Every arm, noise outermost: cells × (spreads for the per-neuron gates) ×
        optimizers × (unforced, forced when ``forcing_alpha`` is set)."""
        forcing = (False,) if self.forcing_alpha is None else (False, True)
        return [Arm(a, c, s, o, f) for a in self.noise_alphas for c in self.cells
                for s in (self.gate_spreads if per_neuron_gate(c) else (0.0,))
                for o in self.optimizers for f in forcing]

    def grid(self) -> list[Group]:
        return [arm.group for arm in self.arms()]

    def arm(self, group: Group) -> Arm:
        """The arm of ``group`` (``ValueError`` for a group not in the grid)."""
        for arm in self.arms():
            if arm.group == group:
                return arm
        raise ValueError(f"group {group.key} is not in this grid")

    def task(self, name: str) -> StableNoiseMultiLag:
        """The task of a group's ``task`` name (``multilag_seq`` or ``multilag_seq.alpha{α}``)."""
        alpha = float(name.removeprefix(f"{TASK}.alpha")) if name != TASK else 2.0
        return StableNoiseMultiLag(self.seq_len, self.input_size, lags=self.lags,
                                   coefficients=self.coefficients, noise_std=self.noise_std,
                                   noise_alpha=alpha)

    def model_factory(self, group: Group, cell_options: dict[str, Any] | None = None):
        """A factory of the arm's models, the update gate initialised
        (:func:`~gatescope.cells.init_update_gate` with :func:`gate_logits`)."""
        arm = self.arm(group)
        build = task_model_factory(self.task(group.task), arm.cell, self.hidden_size,
                                   bias=self.bias, **(cell_options or {}))
        logits = gate_logits(self.initial_gate, arm.spread,
                             self.hidden_size if per_neuron_gate(arm.cell) else 1)

        def initialised():  # in the run's dtype first, so the gate bias is not rounded
            model = build().to(getattr(torch, self.dtype))
            init_update_gate(model.cell, logits)
            return model

        return initialised

    def trainer(self, group: Group, cell_options: dict[str, Any] | None = None,
                **trainer_options: Any) -> EnsembleTrainer:
        """The arm's ensemble: its optimizer with ``weight_decay``, per-seed clipping at
        ``clip_norm``, and the slow-mode forcing for a forced arm."""
        arm = self.arm(group)
        factory = self.model_factory(group, cell_options)
        forcing = None if not arm.forced else StableForcing.on_slow_modes(
            self.forcing_alpha, self.forcing_scale, seeded_init(factory, 0).cell)
        return EnsembleTrainer(factory, self.seeds, self.task(group.task),
                               optimizer=arm.optimizer, lr=lr_for(self.lr, arm.optimizer),
                               batch_size=self.batch_size,
                               optimizer_options={"weight_decay": self.weight_decay},
                               dtype=getattr(torch, self.dtype), device=self.device,
                               clip_norm=self.clip_norm, forcing=forcing, **trainer_options)


class FollowupExperiment(Experiment):
    """Trains each arm's seeds as one ensemble and measures :attr:`plan` (plus the
    ``extra_quantities``) on each live seed's probe batch at every checkpoint."""

    #: The quantities measured at each checkpoint (:data:`PLAN` and the experiment's own).
    plan: dict[str, tuple[M.Metric, ...] | None] = PLAN

    def groups(self, settings: FollowupSettings) -> list[Group]:
        return settings.grid()

    def run_group(self, settings: FollowupSettings, group: Group, workdir: Path,
                  progress: Progress) -> list[dict[str, Any]]:
        trainer = settings.trainer(group)
        u, y, mask = trainer.sample_batch([stream_generator(s, PROBE_STREAM)
                                           for s in trainer.seeds], settings.probe_batch)
        plan = plan_with(self.plan, settings.extra_quantities)

        def contexts(t: EnsembleTrainer, idx: list[int], seeds: list[int], models: list):
            return (ProbeContext(model, u[k], y[k], mask[k], None, lags=settings.rate_lags,
                                     rank=SPECTRUM_RANK, samples_per_lag=1, step=t.steps_done,
                                     sampling_seed=seed)
                        for k, seed, model in zip(idx, seeds, models, strict=True))

        return train_measured(self.name, group, trainer, settings, workdir, progress,
                              contexts, plan)
