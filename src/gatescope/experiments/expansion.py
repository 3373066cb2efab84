"""``expansion`` (paper appendix): accuracy of the first-order expansion in the gate term.

Untrained ``scalar_gate`` and ``multi_gate`` cells with weights ``N(0, weight_std²)`` and no
bias are driven by slow sinusoids plus noise (the paper code's signal:
``u_{t,i} = sin(f_i s_t + p_i) + noise_std·ε``, ``s_t`` on ``linspace(0, 12, T)``,
``f_i`` on ``linspace(0.03, 0.09, m)``, ``p_i ~ N(0, 1)``). Along the trajectory
``J_t = A_t + B_t``; over the whole window the first-order expansion of
``∏ (A_j + ε B_j)`` is compared with the exact product (docs/maths.md#first-order-expansion).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import torch
from pydantic import Field, ValidationInfo, field_validator, model_validator

from ..cells import make_cell
from ..dynamics.expansion import DEFAULT_EPS, first_order_expansion
from ..dynamics.gate_term import gate_split
from ..dynamics.transport import chain_ordered
from .base import Experiment, Group, Progress
from .fidelity_settings import TransportFidelity
from .registry import register_experiment
from .settings import (
    MAX_HIDDEN_SIZE,
    MAX_INPUT_SIZE,
    MAX_SEQ_LEN,
    Device,
    HiddenSize,
    InputSize,
    NonNegativeFloat,
    PositiveFloat,
    Seeds,
    SeqLen,
    check_tensor_size,
    integer,
    numbers,
)

ExpansionCell = Literal["scalar_gate", "multi_gate"]


class ExpansionSettings(TransportFidelity):
    """Settings of :class:`ExpansionExperiment` (defaults: the paper's)."""

    seeds: Seeds = Field(tuple(range(20)), description="a count N (seeds 0..N-1) or a list")
    cells: list[ExpansionCell] = Field(default=["scalar_gate", "multi_gate"], min_length=1,
                                       description="scalar_gate and/or multi_gate")
    seq_len: SeqLen = Field(100, description=f"window length T (<= {MAX_SEQ_LEN})")
    hidden_size: HiddenSize = Field(64, description=f"n (<= {MAX_HIDDEN_SIZE})")
    input_size: InputSize = Field(3, description=f"m (<= {MAX_INPUT_SIZE})")
    weight_std: PositiveFloat = Field(0.2, description="std of the N(0, std^2) weights (> 0)")
    noise_std: NonNegativeFloat = Field(0.05, description="std of the input noise (>= 0)")
    eps: Annotated[list[float], numbers(min_length=2, above=0)] = Field(
        default=list(DEFAULT_EPS), description="the eps grid: >= 2 finite numbers > 0")
    fit_points: Annotated[int, integer(2)] = Field(
        5, description="the slope is fitted on this many smallest eps (2..len(eps))")
    dtype: Literal["float64", "float32"] = "float64"
    device: Device = "cpu"

    @field_validator("cells")
    @classmethod
    def _distinct_cells(cls, cells: list[str]) -> list[str]:
        if len(set(cells)) != len(cells):
            raise ValueError(f"give distinct cells; got {cells}")
        return cells

    @field_validator("fit_points")
    @classmethod
    def _fit_within_grid(cls, fit_points: int, info: ValidationInfo) -> int:
        if "eps" in info.data and fit_points > len(info.data["eps"]):
            raise ValueError(f"fit_points must be <= the number of eps ({len(info.data['eps'])})")
        return fit_points

    @model_validator(mode="after")
    def _fits_in_memory(self) -> ExpansionSettings:
        check_tensor_size("the products over the eps grid",
                          [("eps", len(self.eps)), ("seq_len", self.seq_len),
                           ("hidden_size", self.hidden_size), ("hidden_size", self.hidden_size)],
                          self.dtype)
        return self


def sinusoid_inputs(seq_len: int, input_size: int, noise_std: float, generator: torch.Generator,
                    dtype: torch.dtype) -> torch.Tensor:
    """``(1, T, m)`` slow sinusoids with random phases plus Gaussian noise."""
    s = torch.linspace(0, 12, seq_len, dtype=torch.float64)
    freq = torch.linspace(0.03, 0.09, input_size, dtype=torch.float64)
    phase = torch.randn(input_size, generator=generator, dtype=torch.float64)
    u = torch.sin(s[:, None] * freq + phase)
    u = u + noise_std * torch.randn(seq_len, input_size, generator=generator, dtype=torch.float64)
    return u.unsqueeze(0).to(dtype)


@register_experiment("expansion")
class ExpansionExperiment(Experiment):
    """First-order expansion accuracy (claim C8)."""

    description = "truncation error of the first-order expansion in the gate term (appendix)"
    settings_model = ExpansionSettings

    def groups(self, settings):
        return [Group("sinusoid", cell, "none") for cell in settings.cells]

    def run_group(self, settings: ExpansionSettings, group: Group, workdir: Path,
                  progress: Progress):
        dtype = getattr(torch, settings.dtype)
        rows = []
        for i, seed in enumerate(settings.seeds):
            gen = torch.Generator().manual_seed(seed)
            cell = make_cell(group.cell, settings.input_size, settings.hidden_size,
                             dtype=dtype, device=settings.device)
            with torch.no_grad():
                for p in cell.parameters():
                    p.copy_(settings.weight_std * torch.randn(p.shape, generator=gen,
                                                              dtype=torch.float64))
                u = sinusoid_inputs(settings.seq_len, settings.input_size, settings.noise_std,
                                    gen, dtype).to(settings.device)
                A, B = gate_split(cell, cell.unroll(u), settings.gate_term)
            A, B = (chain_ordered(X, settings.product_order) for X in (A, B))
            ex = first_order_expansion(A[0], B[0], settings.eps, settings.fit_points)
            rows.extend(self._rows(group, seed, ex))
            progress(i + 1, len(settings.seeds))
        return rows

    @staticmethod
    def _rows(group, seed, ex):
        base = {"experiment": "expansion", "task": group.task, "cell": group.cell,
                "optimizer": "none", "seed": seed, "step": 0, "lag": None}
        rows = []
        for eps, err, c2 in zip(ex.eps.tolist(), ex.error.tolist(), ex.remainder.tolist(),
                                strict=True):
            rows.append({**base, "metric": "truncation_error", "eps": eps, "value": err})
            rows.append({**base, "metric": "remainder_c2", "eps": eps, "value": c2})
        rows.append({**base, "metric": "error_slope", "value": ex.slope.item()})
        rows.append({**base, "metric": "correction_ratio_median",
                     "value": ex.ratios.double().quantile(0.5).item()})  # interpolated
        for j, rho in enumerate(ex.ratios.tolist(), start=1):
            rows.append({**base, "metric": "correction_ratio", "time": j, "value": rho})
        return rows
