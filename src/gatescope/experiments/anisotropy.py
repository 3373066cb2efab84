"""``anisotropy`` (paper §VII-B): anisotropy of gradient transport and of parameter updates,
gated cells under SGD against a plain cell under Adam.

Designs:

* ``"paper"`` — the paper's three arms per task: plain + Adam, scalar_gate + SGD,
  multi_gate + SGD (architecture and optimizer confounded, as in the paper);
* ``"factorial"`` — every cell with every optimizer, which separates what the cell does from
  what the optimizer does (claim C6). It contains the paper's arms, and starts them first.

At each checkpoint every live seed is measured by the quantities of :data:`PLAN` on its fixed
probe batch (stream ``"probe"``) and its fixed batch of ``gradient_examples`` sequences for
per-example gradients (stream ``"gradients"``): propagation anisotropy and transport–loss
alignment per lag, the anisotropy of per-example gradients, the optimizer's step-size
dispersion (from its first step on) and the gates' zeroth-order rate dispersion (cells with
retention).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from .. import metrics as M
from ..measures import optimizer_step_sizes
from ..paper import PAPER_ARMS
from ..probes import ProbeContext
from ..training import EnsembleTrainer, stream_generator, train_resumable
from .base import Experiment, Group, Progress
from .fidelity_settings import TransportFidelity
from .grid import GridSettings
from .losses import live_models, logged_steps, record_losses
from .measurements import plan_with, record_measurements
from .registry import register_experiment
from .rows import RowWriter
from .settings import (
    MAX_BATCH,
    MAX_SEQ_LEN,
    MAX_STEPS,
    BatchSize,
    CellNames,
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
    TaskNames,
    check_lr_covers,
    integer,
)

#: The quantities measured at each checkpoint, and the metrics kept of each.
PLAN = {
    "propagation_anisotropy": (M.JACOBIAN_AI, M.JACOBIAN_CE),
    "alignment": None,
    "update_anisotropy": (M.GRADCOV_AI, M.GRADCOV_CE),
    "optimizer_steps": (M.STEP_CV, M.STEP_AI),
    "zeroth_order_rates": None,
}


class AnisotropySettings(GridSettings, TransportFidelity):
    """Settings of :class:`AnisotropyExperiment` (defaults: the paper's §VII-B)."""

    design: Literal["paper", "factorial"] = Field(
        "factorial", description="paper: its 3 arms; factorial: cells x optimizers")
    tasks: TaskNames = Field(("adding", "ar2", "movingavg", "delaysum", "narma10"),
                             description="task names")
    cells: CellNames = Field(("plain", "scalar_gate", "multi_gate"),
                             description="cells of the factorial design")
    optimizers: OptimizerNames = Field(("sgd", "adam"),
                                       description="optimizers of the factorial design")
    lr: LearningRates = Field({"sgd": 1e-2, "adam": 1e-3}, description="{optimizer = lr}")
    seeds: Seeds = Field(tuple(range(20)), description="a count N (seeds 0..N-1) or a list")
    steps: StepCount = Field(1200, description=f"optimizer steps (<= {MAX_STEPS})")
    checkpoints: Steps | None = Field((0, 400, 800, 1200), description="measurement steps")
    seq_len: SeqLen = Field(120, description=f"task length T (<= {MAX_SEQ_LEN})")
    input_size: OptionalInputSize = Field(6, description="m")
    probe_batch: BatchSize = Field(64, description=f"fixed probe sequences per seed "
                                   f"(<= {MAX_BATCH})")
    lags: Lags = Field((1, 2, 4, 8, 12, 16, 24, 32, 40), description="lags measured "
                       "(each < seq_len)")
    samples_per_lag: BatchSize = Field(64, description="(b, t, k) triples per lag")
    rank: Annotated[int, integer(1)] = Field(
        10, description="r of AI_r, CE_r and the alignment (<= hidden_size, gradient_examples)")
    ce_denominator: Literal["all", 16] = Field(
        "all", description="CE_r of the transport products over all singular values, or the "
        "top 16 (the paper's code; the gradient covariance's CE_r is over all in both)")
    spectrum_epsilon: NonNegativeFloat = Field(
        0.0, description="absolute regulariser of AI_r = s1/(s_r+eps) and CE_r (0: "
        "scale-invariant; the paper's code: 1e-12, which dominates once a transport product "
        "has vanished)")
    product_dtype: Literal["float64", "float32"] = Field(
        "float64", description="precision of the sampled transport products; float32 = the "
        "paper code's")
    sampling: Literal["uniform", "paper"] = Field(
        "uniform", description="(b, t, k) windows: uniform with replacement, or paper = the "
        "code's draw without replacement among windows ending before T")
    gradient_examples: BatchSize = Field(256, description="M per-example gradients")
    rate_lags: Lags = Field((1, 4, 16), description="lags of the gate-induced rate "
                            "dispersion (each < seq_len)")
    log_every: StepCount = Field(10, description="record the training loss every k steps")
    fixed_batch: bool = Field(False, description="train on one fixed batch (the paper code's "
                              "§VII-B defect)")
    extra_quantities: QuantityNames = Field(
        (), description="more registered quantities measured at each checkpoint")

    _lags_fit = field_validator("lags", "rate_lags")(GridSettings.lags_within)

    @model_validator(mode="after")
    def _lr_for_every_arm(self) -> AnisotropySettings:
        arms = PAPER_ARMS if self.design == "paper" else \
            [(c, o) for c in self.cells for o in self.optimizers]
        try:
            check_lr_covers(self.lr, {o for _, o in arms})
        except ValueError as err:
            raise SettingConflict("lr", str(err)) from None
        return self

    @field_validator("rank")
    @classmethod
    def _rank_fits(cls, rank: int, info: ValidationInfo) -> int:
        if "hidden_size" in info.data and rank > info.data["hidden_size"]:
            raise ValueError(f"rank must be <= hidden_size={info.data['hidden_size']}")
        return rank

    @model_validator(mode="after")
    def _spectra_hold_rank(self) -> AnisotropySettings:
        # AI_r and CE_r of the gradients need r <= M singular values; the paper's CE_r over
        # the top 16 needs r <= 16 <= n and 16 <= M
        if self.rank > self.gradient_examples:
            raise SettingConflict(
                "rank, gradient_examples", f"rank={self.rank} must be <= gradient_examples="
                f"{self.gradient_examples} (the gradients' singular values)")
        if self.ce_denominator == 16 and not (
                self.rank <= 16 <= min(self.hidden_size, self.gradient_examples)):
            raise SettingConflict(
                "ce_denominator, rank, hidden_size, gradient_examples",
                f"ce_denominator=16 needs rank <= 16 <= hidden_size and gradient_examples; got "
                f"rank={self.rank}, hidden_size={self.hidden_size}, gradient_examples="
                f"{self.gradient_examples}")
        return self

    def largest_tensors(self) -> list[tuple[str, list[tuple[str, int]]]]:
        return [*super().largest_tensors(), self.probe_jacobians(self.probe_batch),
                ("one seed's per-example gradients of the recurrent weights",
                 [("gradient_examples", self.gradient_examples),
                  ("hidden_size", self.hidden_size), ("hidden_size", self.hidden_size)])]


@register_experiment("anisotropy")
class AnisotropyExperiment(Experiment):
    """Propagation and update anisotropy, gates against optimizers (claims C4–C7)."""

    description = ("§VII-B: anisotropy of transport and of updates, gated cells + SGD vs "
                   "plain + Adam (paper or factorial design)")
    settings_model = AnisotropySettings

    def groups(self, settings: AnisotropySettings) -> list[Group]:
        paper = [Group(t, c, o) for t in settings.tasks for c, o in PAPER_ARMS]
        if settings.design == "paper":
            return paper
        # the paper's arms start first, so their results (and wall time) come before the
        # rest of the factorial design
        first = [g for g in paper if g.cell in settings.cells and g.optimizer in
                 settings.optimizers]
        return first + [g for g in settings.grid() if g not in first]

    def run_group(self, settings: AnisotropySettings, group: Group, workdir: Path,
                  progress: Progress) -> list[dict[str, Any]]:
        trainer = settings.trainer(group, fixed_batch=settings.fixed_batch)
        probe = trainer.sample_batch([stream_generator(s, "probe") for s in trainer.seeds],
                                     settings.probe_batch)
        grads = trainer.sample_batch([stream_generator(s, "gradients") for s in trainer.seeds],
                                     settings.gradient_examples)

        plan = plan_with(PLAN, settings.extra_quantities)

        def measure(t: EnsembleTrainer) -> list[dict[str, Any]]:
            writer = RowWriter(self.name, group.task, group.cell, group.optimizer)
            idx, seeds, models = live_models(t)
            steps = optimizer_step_sizes(t.optimizer)
            contexts = (ProbeContext(
                model, probe[0][k], probe[1][k], None, None, lags=settings.lags,
                rank=settings.rank, samples_per_lag=settings.samples_per_lag,
                step=t.steps_done, rate_lags=settings.rate_lags,
                gradient_batch=(grads[0][k], grads[1][k]),
                step_sizes={p: v[k] for p, v in steps.items()}, sampling_seed=seed,
                ce_denominator=settings.ce_denominator,
                spectrum_epsilon=settings.spectrum_epsilon,
                product_dtype=settings.product_dtype, sampling=settings.sampling,
                **settings.transport_options(model.cell))
                for k, seed, model in zip(idx, seeds, models, strict=True))
            record_measurements(writer, seeds, t.steps_done, contexts, plan)
            return writer.rows

        rows = train_resumable(trainer, settings.steps, settings.checkpoint_steps(),
                               workdir / "checkpoints", measure, progress)
        writer = RowWriter(self.name, group.task, group.cell, group.optimizer)
        record_losses(writer, trainer, logged_steps(settings.steps, settings.log_every))
        return rows + writer.rows
