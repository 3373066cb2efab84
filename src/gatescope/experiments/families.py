"""``families``: where the paper's coupling lives in the gated recurrences trained today.

The paper's §VII-A profile, the effective-rate dispersion across channels and the §VII-B
gradient-covariance anisotropy, for leaky / GRU / LSTM / minGRU / LRU / Mamba with one and
two layers, trained on the paper's tasks with SGD and Adam, seeds stacked into one ensemble
(docs/experiments.md#families).

Within one diagonal layer (``min_gru``, ``lru``, ``mamba``'s SSM) the gates read only the
input and ``B = 0``; the coupling the paper measures lives across the layers of a stack and
in the gradients of the gate parameters, which the two-layer models and the gradient
covariance expose.

Models (group ``cell`` = ``FAMILY.L{layers}``, e.g. ``min_gru.L2``): one layer is the bare
cell ``m -> n``. Two layers are a :class:`~gatescope.StackedCell` whose first layer is the
bare cell (it reads the task's ``m`` inputs: it is the input projection) and whose second
layer reads the first's ``n`` outputs; for the diagonal families that second layer is wrapped
in a pre-norm :class:`~gatescope.ResidualCell` (RMS norm), as the reference language models
wrap every layer. A residual around the first layer would need ``m = n``, which the paper's
tasks (``m`` of 2 to 6) do not have.

At each checkpoint each live seed's fixed probe batch (stream ``"probe"``) is measured by the
quantities of :data:`PLAN` (the sensitivity profile and its fitted power, the first-order
effective rates' envelope and across-channel CV) and its fixed gradient batch (stream
``"gradients"``) by the anisotropy of per-example gradients; rows also carry the training
``loss``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from .. import metrics as M
from ..cells import RecurrentCell, ResidualCell, StackedCell, make_cell
from ..model import SequenceModel
from ..probes import ProbeContext
from ..training import EnsembleTrainer, stream_generator
from .base import Experiment, Group, Progress
from .fidelity_settings import TransportFidelity
from .grid import GridSettings
from .measurements import train_measured
from .registry import register_experiment
from .settings import (
    MAX_BATCH,
    MAX_STEPS,
    BatchSize,
    HiddenSize,
    Lags,
    LearningRates,
    OptimizerNames,
    Seeds,
    SeqLen,
    StepCount,
    Steps,
    TaskNames,
    integer,
)

#: The cell families of the grid.
FAMILIES = ("leaky", "gru", "lstm", "min_gru", "lru", "mamba")
#: The diagonal families, whose upper layers are wrapped in a pre-norm residual block.
DIAGONAL = ("min_gru", "lru", "mamba")
#: The numbers of layers of the grid.
LAYERS = (1, 2)

#: The quantities measured at each checkpoint, and the metrics kept of each.
PLAN = {
    "profile": (M.SENSITIVITY_PROFILE, M.FIT_SLOPE, M.FIT_R2),
    "effective_rates": (M.ENVELOPE, M.RATE_CV_ORDER1),
    "update_anisotropy": (M.GRADCOV_AI, M.GRADCOV_CE),
}

Family = Literal["leaky", "gru", "lstm", "min_gru", "lru", "mamba"]


def model_name(family: str, layers: int) -> str:
    """The group's ``cell``: ``FAMILY.L{layers}``, e.g. ``min_gru.L2``."""
    return f"{family}.L{layers}"


def parse_model_name(name: str) -> tuple[str, int]:
    """``(family, layers)`` of a :func:`model_name`."""
    family, _, layers = name.rpartition(".L")
    return family, int(layers)


class FamiliesSettings(GridSettings, TransportFidelity):
    """Settings of :class:`FamiliesExperiment` (defaults: the quick preset)."""

    cells: list[Family] = Field(default=list(FAMILIES), min_length=1,
                                description=f"cell families: {', '.join(FAMILIES)}")
    layers: list[Literal[1, 2]] = Field(default=list(LAYERS), min_length=1,
                                        description="layers of each model: 1 and/or 2")
    tasks: TaskNames = Field(("adding",), description="task names; the paper preset: adding, "
                             "ar2, movingavg, delaysum, narma10")
    optimizers: OptimizerNames = Field(("sgd", "adam"), description="optimizers")
    lr: LearningRates = Field({"sgd": 1e-2, "adam": 1e-3}, description="{optimizer = lr}")
    seeds: Seeds = Field((0, 1, 2), description="a count N (seeds 0..N-1) or a list")
    steps: StepCount = Field(150, description=f"optimizer steps (<= {MAX_STEPS})")
    checkpoints: Steps | None = Field((0, 150), description="measurement steps")
    batch_size: BatchSize = Field(16, description=f"fresh sequences per seed per step "
                                  f"(<= {MAX_BATCH})")
    seq_len: SeqLen = Field(30, description="task length T")
    hidden_size: HiddenSize = Field(16, description="n")
    probe_batch: BatchSize = Field(4, description="fixed probe sequences per seed")
    gradient_examples: BatchSize = Field(16, description="M per-example gradients")
    rank: Annotated[int, integer(1)] = Field(
        4, description="r of AI_r and CE_r (<= gradient_examples)")
    rate_lags: Lags = Field((1, 4, 16), description="lags of the effective rates "
                            "(each < seq_len)")
    mamba_d_state: Annotated[int, integer(1, 64)] = Field(2, description="mamba's d_state S")
    mamba_expand: Annotated[int, integer(1, 4)] = Field(1, description="mamba's expand")
    log_every: StepCount = Field(10, description="record the training loss every k steps")

    _lags_fit = field_validator("rate_lags")(GridSettings.lags_within)

    @field_validator("cells", "layers", mode="before")
    @classmethod
    def _listed(cls, value: Any) -> Any:
        """One value or ``"a,b"`` as a list; ``"2"`` as ``2`` (from ``--set layers=1,2``)."""
        items = value.split(",") if isinstance(value, str) else \
            value if isinstance(value, list | tuple) else [value]
        items = [int(v) if isinstance(v, str) and v.strip().isdigit() else
                 v.strip() if isinstance(v, str) else v for v in items]
        if len(set(map(str, items))) != len(items):
            raise ValueError(f"give each value once; got {items}")
        return items

    @field_validator("rank")
    @classmethod
    def _rank_fits(cls, rank: int, info) -> int:
        if "gradient_examples" in info.data and rank > info.data["gradient_examples"]:
            raise ValueError(f"rank must be <= gradient_examples="
                             f"{info.data['gradient_examples']}")
        return rank

    def grid(self) -> list[Group]:
        """Every ``(task, FAMILY.L{layers}, optimizer)``, tasks outermost."""
        return [Group(t, model_name(f, n), o) for t in self.tasks for f in self.cells
                for n in self.layers for o in self.optimizers]

    def cell(self, family: str, input_size: int):
        """One layer of ``family`` reading ``input_size`` inputs."""
        options: dict[str, Any] = {"bias": self.bias}
        if family == "mamba":
            options |= {"d_state": self.mamba_d_state, "expand": self.mamba_expand}
        return make_cell(family, input_size, self.hidden_size, **options)

    def stack(self, family: str, layers: int, input_size: int) -> RecurrentCell:
        """The recurrent part of a model: the bare cell, or two layers as a StackedCell
        (the upper one in a ResidualCell for the diagonal families)."""
        first = self.cell(family, input_size)
        if layers == 1:
            return first
        upper = self.cell(family, self.hidden_size)
        return StackedCell([first, ResidualCell(upper) if family in DIAGONAL else upper])

    def model_factory(self, group: Group, cell_options: dict[str, Any] | None = None):
        """A factory of the group's fresh :class:`~gatescope.SequenceModel` s (a family takes
        no ``cell_options``)."""
        family, layers = parse_model_name(group.cell)
        task = self.task(group.task)

        def build() -> SequenceModel:
            return SequenceModel(self.stack(family, layers, task.input_size),
                                 output_size=task.output_size, readout=task.readout,
                                 loss=task.loss, bias=self.bias)

        return build

    def largest_tensors(self) -> list[tuple[str, list[tuple[str, int]]]]:
        # the state of a stack, or of mamba (its SSM state and window), exceeds hidden_size
        size = max(self.stack(f, n, 1).state_size for f in self.cells for n in self.layers)
        state = ("state size (hidden_size, layers, mamba_d_state, mamba_expand)", size)
        return [("the ensemble's states", [("seeds", len(self.seeds)),
                                           ("batch_size", self.batch_size),
                                           ("seq_len", self.seq_len), state]),
                ("one seed's probe Jacobians", [("probe_batch", self.probe_batch),
                                                ("seq_len", self.seq_len), state, state])]


@register_experiment("families")
class FamiliesExperiment(Experiment):
    """Profiles, rate dispersion and gradient anisotropy across today's gated recurrences."""

    description = ("profile, rate dispersion and gradient anisotropy of leaky/GRU/LSTM/"
                   "minGRU/LRU/Mamba, 1 and 2 layers, SGD vs Adam")
    settings_model = FamiliesSettings

    def groups(self, settings: FamiliesSettings) -> list[Group]:
        return settings.grid()

    def run_group(self, settings: FamiliesSettings, group: Group, workdir: Path,
                  progress: Progress) -> list[dict[str, Any]]:
        trainer = settings.trainer(group)
        probe = trainer.sample_batch([stream_generator(s, "probe") for s in trainer.seeds],
                                     settings.probe_batch)
        grads = trainer.sample_batch([stream_generator(s, "gradients") for s in trainer.seeds],
                                     settings.gradient_examples)

        def contexts(t: EnsembleTrainer, idx: list[int], seeds: list[int], models: list):
            return (ProbeContext(
                model, probe[0][k], probe[1][k], None, None, lags=settings.rate_lags,
                rank=settings.rank, samples_per_lag=1, step=t.steps_done,
                gradient_batch=(grads[0][k], grads[1][k]), sampling_seed=seed,
                **settings.transport_options(model.cell))
                for k, seed, model in zip(idx, seeds, models, strict=True))

        return train_measured(self.name, group, trainer, settings, workdir, progress,
                              contexts, PLAN)
