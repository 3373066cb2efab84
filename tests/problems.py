"""One catalogue of problems for the twin tests (analytic against autograd), as BackPACK's
settings lists: cells × sizes × dtypes, each with its seed, so every twin test draws the same
well-named cases (ids such as ``multi_gate-n5-T7-float64``).

Use :func:`cases` to parametrize a test over a slice of the catalogue::

    @pytest.mark.parametrize("problem", cases(cells=GATED))
    def test_x(problem):
        cell, traj = problem.cell(), problem.trajectory()
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import pytest
import torch

import gatescope as gs

CELLS = ("plain", "leaky", "scalar_gate", "multi_gate", "gru", "lstm")
GATED = ("scalar_gate", "multi_gate", "gru", "lstm")
DTYPES = (torch.float64, torch.float32)

#: ``(rtol, atol)`` of an analytic-vs-autograd comparison per dtype.
TOLERANCES = {torch.float64: (0.0, 1e-10), torch.float32: (1e-4, 1e-5)}


@dataclass(frozen=True)
class Size:
    """Sizes of one problem: batch ``B``, length ``T``, hidden ``n``, inputs ``m``, bias."""

    B: int
    T: int
    n: int
    m: int
    bias: bool


#: A typical size, the degenerate one (one example, one step, one neuron, one input) and a
#: long one (products of 25 factors).
SIZES = {"typical": Size(B=3, T=7, n=5, m=3, bias=True),
         "smallest": Size(B=1, T=1, n=1, m=1, bias=False),
         "long": Size(B=2, T=25, n=12, m=2, bias=True)}


@dataclass(frozen=True)
class Problem:
    """A cell with random parameters and random inputs, reproducible from its seed."""

    cell_name: str
    size: Size
    dtype: torch.dtype
    seed: int

    @property
    def id(self) -> str:
        """``cell-nN-TT-dtype``, e.g. ``multi_gate-n5-T7-float64``."""
        return f"{self.cell_name}-n{self.size.n}-T{self.size.T}-{str(self.dtype)[6:]}"

    @property
    def tolerance(self) -> dict[str, float]:
        """``rtol``/``atol`` keywords for ``torch.testing.assert_close`` at this dtype."""
        rtol, atol = TOLERANCES[self.dtype]
        return {"rtol": rtol, "atol": atol}

    def cell(self) -> gs.RecurrentCell:
        """The cell, its parameters drawn from the seed."""
        torch.manual_seed(self.seed)
        return gs.make_cell(self.cell_name, self.size.m, self.size.n, bias=self.size.bias,
                            dtype=self.dtype)

    def inputs(self, B: int | None = None) -> torch.Tensor:
        """``(B, T, m)`` standard normal inputs from the seed."""
        gen = torch.Generator().manual_seed(self.seed + 1)
        B = self.size.B if B is None else B
        return torch.randn(B, self.size.T, self.size.m, generator=gen, dtype=self.dtype)

    def targets(self, readout: str, generator: torch.Generator, outputs: int = 2
                ) -> torch.Tensor:
        """Standard normal targets of a model with ``readout``: ``(B, outputs)`` for
        ``"last"``, ``(B, T, outputs)`` for ``"all"``, drawn from ``generator``."""
        B, T = self.size.B, self.size.T
        shape = (B, outputs) if readout == "last" else (B, T, outputs)
        return torch.randn(shape, generator=generator, dtype=self.dtype)

    def trajectory(self, cell: gs.RecurrentCell | None = None) -> gs.Trajectory:
        """The unrolled trajectory (no autograd graph) of ``cell`` (default: a fresh one)."""
        cell = self.cell() if cell is None else cell
        with torch.no_grad():
            return cell.unroll(self.inputs())


PROBLEMS = tuple(Problem(cell, size, dtype, seed=17 * i + j)
                 for i, cell in enumerate(CELLS)
                 for j, (size, dtype) in enumerate((s, d) for s in SIZES.values()
                                                   for d in DTYPES))


def select(cells: Iterable[str] | None = None, dtypes: Iterable[torch.dtype] | None = None,
           sizes: Iterable[str] | None = None) -> list[Problem]:
    """The catalogue's problems of the given cells, dtypes and size names (default: all)."""
    cells = CELLS if cells is None else tuple(cells)
    dtypes = DTYPES if dtypes is None else tuple(dtypes)
    wanted = [SIZES[s] for s in (SIZES if sizes is None else sizes)]
    return [p for p in PROBLEMS
            if p.cell_name in cells and p.dtype in dtypes and p.size in wanted]


def cases(**selection) -> list:
    """:func:`select` as ``pytest.param`` s with readable ids."""
    return [pytest.param(p, id=p.id) for p in select(**selection)]
