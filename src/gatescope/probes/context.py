"""What a quantity sees: the model, the probe batch, the optimizer, the measurement settings,
and the expensive intermediates, each computed on first use and shared by every quantity of
one measurement."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from ..cells.base import RecurrentCell, Trajectory
from ..dynamics.gate_term import check_gate_term, gate_split
from ..dynamics.jacobians import jacobians
from ..dynamics.structured import structured_sensitivities
from ..dynamics.transport import ordered_sensitivities
from ..measures.anisotropy import final_state_gradient, per_example_gradients
from ..measures.detection import DETECTION_GRID
from ..measures.matched import loss_steps, matched_statistic
from ..measures.optimizer_steps import DEFAULT_LEVELS, optimizer_step_sizes
from ..measures.profiles import PREDICTORS
from ..measures.rates import effective_learning_rates
from ..model import SequenceModel


@dataclass
class ProbeContext:
    """One measurement's inputs and lazily cached intermediates.

    A new context is made for every measurement (a probe call, or one seed at one checkpoint
    of an experiment), so nothing is shared across training steps.

    Attributes:
        model: the model being trained.
        u: ``(B, T, m)`` the probe inputs.
        y: the probe targets, as for :meth:`~gatescope.SequenceModel.loss`.
        mask: optional ``(B, T)`` step weights.
        lengths: optional ``(B,)`` valid lengths of a padded batch: the trajectory holds
            each state past its length (packed-sequence semantics).
        optimizer: the training optimizer, or ``None``.
        lags: the lags of transport quantities, each in ``1..T``.
        rank: the ``r`` of ``AI_r``/``CE_r`` (see :meth:`spectrum_rank`).
        samples_per_lag: transport products sampled per lag for propagation anisotropy.
        step: the training step being recorded.
        rate_lags: the lags of the effective-rate quantities (``None``: ``lags``).
        schedule_lags: the lags of the implied global schedule (``()``: not measured).
        lr: the SGD step ``η`` of the implied schedule (``None``: the optimizer's first
            group's ``lr``).
        gradient_batch: ``(u, y)`` for per-example gradients (``None``: the probe batch).
        step_sizes: the optimizer's per-parameter step sizes
            (:func:`~gatescope.optimizer_step_sizes`; ``None``: read from ``optimizer``).
        sampling_seed: seed of the ``(b, t, k)`` sampling of propagation anisotropy.
        product_order: ``"chain"`` or the paper code's ``"reversed"`` transport products
            (of the sensitivities and of propagation anisotropy's sampled products).
        trim: the quantile cut of the profile's power fit.
        gate_factors, profile_pairs, profile_median: the profile's ``factors``, ``pairs`` and
            ``median`` (:func:`~gatescope.profile_fit`; the paper's code: ``"lag+1"``,
            ``"paper"``, ``"lower"``).
        power_iterations: ``None`` for exact transport norms, or the paper code's estimate
            with that many power iterations (starting vectors drawn with ``sampling_seed``).
        ce_denominator: ``CE_r`` of the transport products over ``"all"`` singular values or
            the top ``16`` (the gradient covariance's ``CE_r`` is always over all, as in the
            paper's code).
        spectrum_epsilon: the absolute regulariser ``ε`` of ``AI_r`` and ``CE_r``
            (:func:`~gatescope.measures.anisotropy.spectrum_stats`; ``0``: scale-invariant,
            the paper's code: ``1e-12``).
        gate_term: ``"previous"``, or the paper code's ``"updated"``: the Jacobians every
            transport quantity reads are then ``A + B`` with the post-update gate term
            (:func:`~gatescope.dynamics.gate_term.gate_split`; gated tanh cells only).
        sampling: how :func:`~gatescope.propagation_anisotropy` draws its windows
            (``"uniform"`` or the paper code's ``"paper"``).
        product_dtype: the precision its products are formed in (``"float64"`` or the paper
            code's ``"float32"``).
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
    rate_lags: tuple[int, ...] | None = None
    schedule_lags: tuple[int, ...] = ()
    lr: float | None = None
    gradient_batch: tuple[Tensor, Tensor] | None = None
    step_sizes: Mapping[Tensor, Tensor] | None = None
    sampling_seed: int = 0
    product_order: str = "chain"
    trim: float = 0.01
    power_iterations: int | None = None
    lengths: Tensor | None = None
    ce_denominator: str | int = "all"
    spectrum_epsilon: float = 0.0
    gate_term: str = "previous"
    gate_factors: str = "lag"
    profile_pairs: str = "all"
    profile_median: str = "interpolated"
    sampling: str = "uniform"
    product_dtype: str = "float64"

    def __post_init__(self) -> None:
        check_gate_term(self.cell, self.gate_term)

    @property
    def cell(self) -> RecurrentCell:
        """The model's recurrent cell."""
        return self.model.cell

    def spectrum_rank(self, size: int) -> int:
        """``min(rank, size)``: the ``r`` used for a spectrum of ``size`` values."""
        return min(self.rank, size)

    def coords(self) -> dict[str, list]:
        """``{axis: coordinates}`` of every axis (:data:`gatescope.metrics.AXIS_COLUMNS`) a
        quantity's metric may have here."""
        T = self.u.shape[1]
        return {
            "lag": list(self.lags), "rate_lag": list(self.effective_rate_lags),
            "schedule_lag": list(self.schedule_lags), "profile_lag": list(range(1, T)),
            "time": list(range(1, T + 1)), "predictor": list(PREDICTORS),
            "neuron": list(range(self.cell.hidden_size)), "level": list(DEFAULT_LEVELS),
            "samples": list(DETECTION_GRID),
        }

    @property
    def effective_rate_lags(self) -> tuple[int, ...]:
        """``rate_lags``, or ``lags`` when not given."""
        return self.lags if self.rate_lags is None else self.rate_lags

    @cached_property
    def trajectory(self) -> Trajectory:
        """The cell unrolled over ``u`` from ``h_0 = 0`` (with ``lengths``), detached."""
        with torch.no_grad():
            return self.cell.unroll(self.u, lengths=self.lengths).detach()

    @cached_property
    def jacobians(self) -> Tensor:
        """``(B, T, N, N)`` per-step Jacobians (:func:`gatescope.jacobians`), or ``A + B``
        with the paper code's post-update gate term when ``gate_term`` says so."""
        if self.gate_term == "previous":
            return jacobians(self.cell, self.trajectory)
        A, B = gate_split(self.cell, self.trajectory, self.gate_term)
        return A + B

    @cached_property
    def structured(self) -> bool:
        """Whether the cell declares its :meth:`~gatescope.RecurrentCell.jacobian_structure`
        (a single diagonal or rotation-block layer; never a stack): exact sensitivities and
        the rates then come from cumulative log-sums, without the dense Jacobians
        (docs/maths.md#structured-jacobians)."""
        return (self.gate_term == "previous"
                and self.cell.jacobian_structure(self.trajectory) is not None)

    @cached_property
    def retention_structured(self) -> bool:
        """Whether the cell declares a
        :meth:`~gatescope.RecurrentCell.retention_structure` (every structured cell, and
        Mamba's SSM state): the rates and envelopes then come from cumulative log-sums,
        without the dense Jacobians (docs/maths.md#retention-structure)."""
        return (self.gate_term == "previous"
                and self.cell.retention_structure(self.trajectory) is not None)

    @cached_property
    def sensitivities(self) -> Tensor:
        """``(B, T+1, T+1)`` transport norms (:func:`gatescope.sensitivities`) of products
        in ``product_order``, exact or by ``power_iterations``; exact ones of a
        :attr:`structured` cell by :func:`~gatescope.dynamics.structured.
        structured_sensitivities` (its factors commute: both orders agree)."""
        if self.structured and self.power_iterations is None:
            return structured_sensitivities(self.cell, self.trajectory)
        return ordered_sensitivities(self.jacobians, self.product_order, self.power_iterations,
                                     torch.Generator().manual_seed(self.sampling_seed))

    @cached_property
    def rates(self) -> Tensor:
        """``(B, T+1, L, n)`` first-order effective learning rates at the rate lags (by the
        :attr:`retention_structured` path when it applies)."""
        return effective_learning_rates(self.cell, self.trajectory, self.effective_rate_lags,
                                        order=1,
                                        J=None if self.retention_structured else self.jacobians)

    @cached_property
    def matched_samples(self) -> Tensor:
        """``(L, S)`` the samples of the matched statistic ``ψ_t(ℓ)`` at the rate lags, one
        row per lag: every ``(b, t)`` whose state carries a loss term
        (:func:`~gatescope.measures.matched.loss_steps`), NaN where ``ℓ > t``; the
        direction ``w`` drawn from a generator seeded with ``sampling_seed``
        (:func:`~gatescope.measures.matched.matched_statistic`)."""
        psi = matched_statistic(self.model, self.u, self.y, self.effective_rate_lags,
                                torch.Generator().manual_seed(self.sampling_seed), self.mask,
                                self.lengths)
        steps = loss_steps(self.model, *self.u.shape[:2], self.mask).to(psi.device)
        return psi.masked_fill(~steps.unsqueeze(-1), float("nan")).flatten(0, 1).T

    @cached_property
    def optimizer_steps(self) -> Mapping[Tensor, Tensor] | None:
        """``step_sizes``, else those of ``optimizer``; ``None`` without either."""
        if self.step_sizes is not None or self.optimizer is None:
            return self.step_sizes
        return optimizer_step_sizes(self.optimizer)

    @cached_property
    def per_example_gradients(self) -> Tensor:
        """``(M, P)`` per-example gradients (:func:`gatescope.per_example_gradients`) of the
        gradient batch, else of the probe batch."""
        if self.gradient_batch is None:
            return per_example_gradients(self.model, self.u, self.y, self.mask)
        return per_example_gradients(self.model, *self.gradient_batch)

    @cached_property
    def final_adjoint(self) -> Tensor:
        """``(B, N)`` ``δ_T = ∂L_b/∂h_T`` per example
        (:func:`~gatescope.measures.anisotropy.final_state_gradient`); the parameters'
        ``.grad`` are not touched."""
        return final_state_gradient(self.model, self.trajectory.states, self.y, self.mask)
