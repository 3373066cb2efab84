"""What a probe quantity sees: the model, the probe batch, the optimizer, and the expensive
intermediates, each computed on first use and shared by every quantity of one probe call."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from ..cells.base import RecurrentCell, Trajectory
from ..dynamics.jacobians import jacobians
from ..dynamics.transport import sensitivities
from ..measures.anisotropy import final_state_gradient, per_example_gradients
from ..measures.rates import effective_learning_rates
from ..model import SequenceModel


@dataclass
class ProbeContext:
    """One probe call's inputs and lazily cached intermediates.

    A new context is made for every call, so nothing is shared across training steps.

    Attributes:
        model: the model being trained.
        u: ``(B, T, m)`` the probe inputs.
        y: the probe targets, as for :meth:`~gatescope.SequenceModel.loss`.
        mask: optional ``(B, T)`` step weights.
        optimizer: the training optimizer, or ``None``.
        lags: the probe lags, each in ``1..T``.
        rank: the ``r`` of ``AI_r``/``CE_r`` (see :meth:`spectrum_rank`).
        samples_per_lag: transport products sampled per lag for propagation anisotropy.
        step: the training step being recorded.
    """

    model: SequenceModel
    u: Tensor
    y: Tensor
    mask: Tensor | None
    optimizer: torch.optim.Optimizer | None
    lags: tuple[int, ...]
    rank: int
    samples_per_lag: int
    step: int

    @property
    def cell(self) -> RecurrentCell:
        """The model's recurrent cell."""
        return self.model.cell

    def spectrum_rank(self, size: int) -> int:
        """``min(rank, size)``: the ``r`` used for a spectrum of ``size`` values."""
        return min(self.rank, size)

    @cached_property
    def trajectory(self) -> Trajectory:
        """The cell unrolled over ``u`` from ``h_0 = 0``, detached."""
        with torch.no_grad():
            return self.cell.unroll(self.u).detach()

    @cached_property
    def jacobians(self) -> Tensor:
        """``(B, T, N, N)`` per-step Jacobians (:func:`gatescope.jacobians`)."""
        return jacobians(self.cell, self.trajectory)

    @cached_property
    def sensitivities(self) -> Tensor:
        """``(B, T+1, T+1)`` transport norms (:func:`gatescope.sensitivities`)."""
        return sensitivities(self.jacobians)

    @cached_property
    def rates(self) -> Tensor:
        """``(B, T+1, L, n)`` first-order effective learning rates at the probe lags."""
        return effective_learning_rates(self.cell, self.trajectory, self.lags, order=1,
                                        J=self.jacobians)

    @cached_property
    def per_example_gradients(self) -> Tensor:
        """``(B, P)`` per-example gradients (:func:`gatescope.per_example_gradients`)."""
        return per_example_gradients(self.model, self.u, self.y, self.mask)

    @cached_property
    def final_adjoint(self) -> Tensor:
        """``(B, N)`` ``δ_T = ∂L_b/∂h_T`` per example
        (:func:`~gatescope.measures.anisotropy.final_state_gradient`); the parameters'
        ``.grad`` are not touched."""
        return final_state_gradient(self.model, self.trajectory.states, self.y, self.mask)
