"""Settings shared by every experiment that trains a grid of tasks × cells × optimizers.

Field names are the common ones (docs/adding-an-experiment.md#common-settings); an experiment
subclasses
:class:`GridSettings`, adds its own fields and overrides defaults.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field, ValidationInfo, field_validator, model_validator

from ..tasks import make_task
from ..training import EnsembleTrainer, task_model_factory
from .base import Group, Settings
from .settings import (
    MAX_BATCH,
    MAX_HIDDEN_SIZE,
    MAX_INPUT_SIZE,
    MAX_SEQ_LEN,
    MAX_STEPS,
    BatchSize,
    CellNames,
    Device,
    DtypeName,
    HiddenSize,
    LearningRates,
    OptimizerNames,
    OptionalInputSize,
    Seeds,
    SeqLen,
    StepCount,
    Steps,
    TaskNames,
    check_lags,
    check_lr_covers,
    check_task_sizes,
    check_tensor_size,
    check_within,
    lr_for,
)


class GridSettings(Settings):
    """Tasks × cells × optimizers trained over seeds, with checkpoints."""

    tasks: TaskNames = Field(("adding",), description="task names (gatescope list)")
    cells: CellNames = Field(("leaky", "scalar_gate", "multi_gate"), description="cell names")
    optimizers: OptimizerNames = Field(("sgd",), description="sgd, momentum, adam, adamw, "
                                       "rmsprop")
    seeds: Seeds = Field((0, 1, 2, 3, 4), description="a count N (seeds 0..N-1) or a list")
    steps: StepCount = Field(800, description=f"optimizer steps (<= {MAX_STEPS})")
    lr: LearningRates = Field(1e-2, description="learning rate, or a table {optimizer = lr}")
    batch_size: BatchSize = Field(64, description=f"fresh sequences per seed per step "
                                  f"(<= {MAX_BATCH})")
    seq_len: SeqLen = Field(80, description=f"task length T (<= {MAX_SEQ_LEN})")
    input_size: OptionalInputSize = Field(None, description=f"m (<= {MAX_INPUT_SIZE}); none: "
                                          "each task's smallest")
    hidden_size: HiddenSize = Field(64, description=f"n (<= {MAX_HIDDEN_SIZE})")
    bias: bool = Field(False, description="biases in the cell and the readout")
    checkpoints: Steps | None = Field(None, description="steps to measure and save at; "
                                      "none: 0, 1/4, 1/2, 3/4 of steps (the end is added)")
    dtype: DtypeName = Field("float32", description="float32 or float64")
    device: Device = Field("cpu", description="cpu, cuda, cuda:N or auto")

    @field_validator("lr")
    @classmethod
    def _lr_for_every_optimizer(cls, lr, info: ValidationInfo):
        if "optimizers" in info.data:
            check_lr_covers(lr, info.data["optimizers"])
        return lr

    @field_validator("seq_len")
    @classmethod
    def _tasks_take_length(cls, seq_len: int, info: ValidationInfo) -> int:
        if "tasks" in info.data:
            check_task_sizes(info.data["tasks"], seq_len)
        return seq_len

    @field_validator("input_size")
    @classmethod
    def _tasks_take_inputs(cls, input_size: int | None, info: ValidationInfo) -> int | None:
        if "tasks" in info.data and "seq_len" in info.data:
            check_task_sizes(info.data["tasks"], info.data["seq_len"], input_size)
        return input_size

    @field_validator("checkpoints")
    @classmethod
    def _checkpoints_in_run(cls, checkpoints, info: ValidationInfo):
        if checkpoints is not None and "steps" in info.data:
            check_within(checkpoints, info.data["steps"])
        return checkpoints

    @model_validator(mode="after")
    def _fits_in_memory(self) -> GridSettings:
        for what, dims in self.largest_tensors():
            check_tensor_size(what, dims, self.dtype)
        return self

    def largest_tensors(self) -> list[tuple[str, list[tuple[str, int]]]]:
        """``(what, [(setting, size), ...])`` of the largest tensors a run allocates, which
        must each fit ``MAX_TENSOR_GIB``; subclasses add their measurements' tensors."""
        return [("the ensemble's hidden states",
                 [("seeds", len(self.seeds)), ("batch_size", self.batch_size),
                  ("seq_len", self.seq_len), ("hidden_size", self.hidden_size)])]

    def probe_jacobians(self, probe_batch: int) -> tuple[str, list[tuple[str, int]]]:
        """The Jacobians of one seed's probe batch, ``(probe_batch, T, n, n)``."""
        return ("one seed's probe Jacobians",
                [("probe_batch", probe_batch), ("seq_len", self.seq_len),
                 ("hidden_size", self.hidden_size), ("hidden_size", self.hidden_size)])

    def checkpoint_steps(self) -> tuple[int, ...]:
        """The checkpoint steps, the last step included."""
        marks = (self.checkpoints if self.checkpoints is not None
                 else [self.steps * q // 4 for q in range(4)])
        return tuple(sorted({*marks, self.steps}))

    @staticmethod
    def lags_within(lags: tuple[int, ...], info: ValidationInfo) -> tuple[int, ...]:
        """A field validator's body: ``lags`` once checked below ``seq_len``."""
        if "seq_len" in info.data:
            check_lags(lags, info.data["seq_len"])
        return lags

    def grid(self) -> list[Group]:
        """Every ``(task, cell, optimizer)`` combination, tasks outermost."""
        return [Group(t, c, o) for t in self.tasks for c in self.cells for o in self.optimizers]

    def task(self, name: str):
        """The task ``name`` at this grid's sizes."""
        return make_task(name, seq_len=self.seq_len, input_size=self.input_size)

    def model_factory(self, group: Group, cell_options: dict[str, Any] | None = None):
        """A factory of the group's fresh models: the task's model of ``group.cell`` at this
        grid's ``hidden_size`` (an experiment with other models overrides it)."""
        return task_model_factory(self.task(group.task), group.cell, self.hidden_size,
                                  bias=self.bias, **(cell_options or {}))

    def trainer(self, group: Group, cell_options: dict[str, Any] | None = None,
                **trainer_options: Any) -> EnsembleTrainer:
        """The :class:`~gatescope.training.EnsembleTrainer` of ``group``: every seed, the
        group's optimizer at its learning rate, this grid's sizes, dtype and device.

        Args:
            group: the grid cell to train.
            cell_options: extra options of the cell (e.g. ``alpha``).
            **trainer_options: extra options of the trainer (e.g. ``fixed_batch``).
        """
        return EnsembleTrainer(self.model_factory(group, cell_options), self.seeds,
                               self.task(group.task), optimizer=group.optimizer,
                               lr=lr_for(self.lr, group.optimizer), batch_size=self.batch_size,
                               dtype=getattr(torch, self.dtype), device=self.device,
                               **trainer_options)
