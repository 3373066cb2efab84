"""Heavy-tailed forcing of the slow-mode updates (the ``timescales`` experiment, FOLLOWUPS §2;
docs/experiments.md#timescales).

After every optimizer step, each forced parameter entry ``θ_i`` of seed ``k`` moves by

    ``θ_i ← θ_i + c · ρ_k · ξ_i``,   ``ρ_k = RMS_i(Δθ_i)`` over the forced entries of that
    tensor in this step's update ``Δθ`` of seed ``k``,

with ``ξ_i`` i.i.d. symmetric α-stable, normalised to be ``N(0, 1)`` at ``α = 2``
(:func:`standard_stable`), drawn from seed ``k``'s own stream ``"forcing"`` (one draw per
step for all forced entries, in the order of :attr:`StableForcing.parameters`), and ``c`` the
``forcing_scale``. So the forcing is a fixed fraction of the update's own size, with tails of
index ``α``: at ``α < 2`` most kicks are small and a few are far larger than the update.

**Slow mode.** The forced entries are those that set a cell's time scales
(:func:`slow_mode_parameters`): a learned gate's parameters (weights and biases of the
retention gate, :func:`gatescope.cells.retention_gate`), whose bias is each neuron's log time
scale at initialisation; for the constant gate, whose retention ``1 - s`` is fixed, the
recurrent weights ``W_r``, the only parameters that move its slow modes (``J = (1-s) I +
s D W_r``). The claim under test (A3) is that forcing the constant gate's only free
time-scale parameters does not give it the extended spectrum a per-neuron gate reaches.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from ..cells import RecurrentCell, retention_gate
from ..cells.leaky import LeakyCell
from ..measures.stable import stable_samples

#: The stream of each seed that the forcing draws from.
FORCING_STREAM = "forcing"


def standard_stable(alpha: float, shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    """Symmetric α-stable samples of stable scale ``1/√2``: ``N(0, 1)`` at ``α = 2``, heavier
    tails (``P(|ξ| > x) ~ x^{-α}``) below. ``float64`` on the CPU."""
    return stable_samples(alpha, shape, generator, scale=1 / math.sqrt(2))


def slow_mode_parameters(cell: RecurrentCell) -> dict[str, slice]:
    """``{parameter name within the cell: its forced rows}``: the retention gate's
    parameters, or ``recurrent.weight`` for the constant gate (module docstring).

    Raises:
        ValueError: a cell without a known retention gate.
    """
    if isinstance(cell, LeakyCell):
        return {"recurrent.weight": slice(None)}
    gate = retention_gate(cell)
    present = dict(cell.named_parameters())
    return {name: gate.rows for name in gate.names if name in present}


@dataclass(frozen=True)
class StableForcing:
    """α-stable forcing of some parameters' updates (module docstring).

    Attributes:
        alpha: the tail index, in ``(0, 2]``.
        scale: ``c >= 0``, the forcing's size relative to the RMS of the update.
        parameters: ``{model parameter name: rows}`` of the forced entries (e.g.
            ``{"cell.gate_input.bias": slice(0, 32)}``), the rows along the parameter's
            first dimension.
    """

    alpha: float
    scale: float
    parameters: Mapping[str, slice]

    def __post_init__(self) -> None:
        if not (isinstance(self.alpha, int | float) and 0 < self.alpha <= 2):
            raise ValueError(f"forcing alpha must lie in (0, 2]; got {self.alpha!r}")
        if not (isinstance(self.scale, int | float) and math.isfinite(self.scale)
                and self.scale >= 0):
            raise ValueError(f"forcing scale must be a finite number >= 0; got {self.scale!r}")
        if not self.parameters:
            raise ValueError("forcing needs at least one parameter to force")

    @classmethod
    def on_slow_modes(cls, alpha: float, scale: float, cell: RecurrentCell,
                      prefix: str = "cell.") -> StableForcing:
        """The forcing of ``cell``'s :func:`slow_mode_parameters`, named as the model's
        parameters (``prefix`` + the cell's names)."""
        return cls(alpha, scale, {prefix + name: rows
                                  for name, rows in slow_mode_parameters(cell).items()})

    def apply(self, params: Mapping[str, Tensor], before: Mapping[str, Tensor],
              generators: list[torch.Generator], alive: Tensor) -> Tensor:
        """Add the forcing to the stacked ``params`` in place (no grad).

        Args:
            params: ``{name: (E, *shape)}`` the parameters after the optimizer step.
            before: the forced ones before it (``{name: (E, *shape)}``).
            generators: seed ``k``'s forcing stream at index ``k``.
            alive: ``(E,)`` bool: only these seeds are forced (the others stay frozen).

        Returns:
            ``(E,)`` bool: the seeds whose forced parameters are all finite afterwards.
        """
        finite = torch.ones_like(alive)
        shapes = [tuple(params[name][:, rows].shape[1:]) for name, rows in
                  self.parameters.items()]
        counts = [math.prod(shape) for shape in shapes]
        # one draw per seed for all forced entries, split in the order of ``parameters``
        draws = torch.stack([standard_stable(self.alpha, (sum(counts),), g)
                             for g in generators]).split(counts, dim=1)
        for (name, rows), shape, draw in zip(self.parameters.items(), shapes, draws,
                                             strict=True):
            p = params[name]
            delta = (p - before[name])[:, rows]
            rms = delta.pow(2).flatten(1).mean(1).sqrt()
            xi = draw.reshape(-1, *shape).to(p)
            kick = (self.scale * rms).reshape(-1, *([1] * (delta.dim() - 1))) * xi
            keep = alive.reshape(-1, *([1] * (delta.dim() - 1)))
            p[:, rows] += torch.where(keep, kick, torch.zeros_like(kick))
            finite &= torch.isfinite(p[:, rows]).flatten(1).all(1)
        return finite
