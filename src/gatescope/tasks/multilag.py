"""Multi-lag linear regression with Gaussian inputs (Livi's follow-up papers).

Two readouts of one signal, ``s_t = Σ_k c_k vᵀ x_{t-ℓ_k}``: ``multilag`` asks for it at the
last step only, ``multilag_seq`` (the learnability-window protocol, docs/experiments.md#
learnability) at every step. Both draw ``x`` and then the noise from the same generator, and
share :func:`lagged_signal`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..checks import as_float, as_float_tuple, as_int_tuple
from .base import Task
from .registry import register_task


def lagged_signal(u: Tensor, direction: Tensor, lags: tuple[int, ...],
                  coefficients: tuple[float, ...], times: Tensor) -> Tensor:
    """``s_t = Σ_k c_k vᵀ x_{t-ℓ_k}`` at the given steps, with ``x_s = 0`` for ``s < 0``.

    Args:
        u: ``(B, T, m)`` inputs ``x_0..x_{T-1}``.
        direction: ``(m,)`` the unit vector ``v``.
        lags: ``ℓ_k >= 0``.
        coefficients: ``c_k``, one per lag.
        times: ``(S,)`` long, the steps ``t`` in ``[0, T)``.

    Returns:
        ``(B, S)`` in ``u``'s dtype.
    """
    projected = u @ direction.to(u.dtype)  # (B, T): vᵀ x_s
    lag = torch.tensor(lags)
    source = times[None, :] - lag[:, None]  # (K, S): t - ℓ_k
    picked = projected[:, source.clamp_min(0)] * (source >= 0)  # (B, K, S), x_{s<0} = 0
    return torch.einsum("bks,k->bs", picked, torch.tensor(coefficients, dtype=u.dtype))


@register_task("multilag")
@dataclass(frozen=True)
class MultiLag(Task):
    """A known mixture of lags: ``y = Σ_k c_k vᵀ x_{T-1-ℓ_k} + noise``.

    Definition: inputs ``x_t ~ N(0, I_m)`` i.i.d. over ``t`` (all channels); ``v`` a fixed
    unit vector (``direction``; by default ``(1, …, 1)/√m``); target
    ``y = Σ_k c_k vᵀ x[T-1-ℓ_k] + σ ξ`` with ``ξ ~ N(0, 1)``. Lag 0 is the last step.

    Shapes: ``u`` ``(B, T, m)``, ``y`` ``(B, 1)``. Needs ``T > max(lags)`` (41 for the
    defaults).
    Baseline: ``Var y = Σ_k c_k² + σ²`` (1.3225 for the defaults); :attr:`best_loss`, the
    MSE of the optimal predictor ``E[y | u]``, is ``σ²``.

    Args:
        lags: distinct non-negative lags ``ℓ_k`` (default ``(5, 20, 40)``).
        coefficients: ``c_k``, one per lag (default ``(1.0, 0.5, 0.25)``).
        noise_std: ``σ`` (default 0.1).
        direction: ``v`` as ``m`` numbers, rescaled to unit norm; ``None`` for
            ``(1, …, 1)/√m``.
    """

    lags: tuple[int, ...] = (5, 20, 40)
    coefficients: tuple[float, ...] = (1.0, 0.5, 0.25)
    noise_std: float = 0.1
    direction: tuple[float, ...] | None = None

    description: ClassVar[str] = "sum of c_k v'x at lags 5, 20, 40 plus noise (Gaussian inputs)"
    source: ClassVar[str] = "Livi, Learnability Window in Gated RNNs (arXiv 2512.05790)"

    def _check_options(self) -> None:
        lags = as_int_tuple("lags", self.lags, minimum=0)
        self._set("lags", lags)
        self._set(
            "coefficients", as_float_tuple("coefficients", self.coefficients, length=len(lags))
        )
        self._set("noise_std", as_float("noise_std", self.noise_std, minimum=0.0))
        if self.direction is not None:
            v = as_float_tuple("direction", self.direction, length=self.input_size)
            norm = math.sqrt(sum(x * x for x in v))
            if norm == 0.0:
                raise ValueError("direction must be a non-zero vector of input_size numbers")
            self._set("direction", tuple(x / norm for x in v))

    @classmethod
    def _min_seq_len(cls, options: dict[str, Any]) -> tuple[int, str]:
        ell = max(as_int_tuple("lags", options["lags"], minimum=0))
        return ell + 1, f"the largest lag, {ell}, must fall inside the sequence"

    def unit_direction(self) -> torch.Tensor:
        """``(m,)`` float64: the unit vector ``v``."""
        if self.direction is None:
            m = self.input_size
            return torch.full((m,), 1.0 / math.sqrt(m), dtype=torch.float64)
        return torch.tensor(self.direction, dtype=torch.float64)

    def noise(self, shape: tuple[int, ...], generator: torch.Generator | None) -> Tensor:
        """``σ ξ``, ``ξ ~ N(0, 1)`` i.i.d., float64: the target noise (drawn after ``u``).

        A subclass may draw another unit-scale noise here (the ``learnability`` experiment's
        α-stable noise, :mod:`gatescope.experiments.stable_noise`).
        """
        return self.noise_std * torch.randn(shape, generator=generator, dtype=torch.float64)

    def _inputs(self, batch: int, generator: torch.Generator | None) -> Tensor:
        return torch.randn(batch, self.seq_len, self.input_size, generator=generator,
                           dtype=torch.float64)

    def _generate(self, batch, generator):
        u = self._inputs(batch, generator)
        last = torch.tensor([self.seq_len - 1])
        signal = lagged_signal(u, self.unit_direction(), self.lags, self.coefficients, last)
        return u, signal + self.noise((batch, 1), generator)

    def _analytic_baseline(self) -> float:
        return sum(c * c for c in self.coefficients) + self.noise_std**2

    @property
    def best_loss(self) -> float:
        """``σ²``: the MSE of ``E[y | u]``, the noise the inputs cannot explain."""
        return self.noise_std**2


@register_task("multilag_seq")
@dataclass(frozen=True)
class MultiLagSequence(MultiLag):
    """The learnability-window protocol's task: a target at every step,
    ``y_t = Σ_k c_k vᵀ x_{t-ℓ_k} + σ ξ_t``.

    Definition: as :class:`MultiLag` (same options and defaults, ``ξ_t ~ N(0, 1)`` i.i.d.
    over ``b, t``), read at every step ``t = 0..T-1``. The loss counts the steps
    ``t >= max ℓ_k``, where every lagged input lies inside the sequence (``mask``); the
    earlier targets are the partial sums with ``x_s = 0`` for ``s < 0`` (what a model
    started from ``h_0 = 0`` could predict; they carry no weight).

    Shapes: ``u`` ``(B, T, m)``, ``y`` ``(B, T, 1)``, ``mask`` ``(B, T)``.
    Baseline: per counted step ``Var y_t = Σ_k c_k² + σ²``; :attr:`best_loss` ``σ²``.
    """

    readout: ClassVar[str] = "all"
    has_mask: ClassVar[bool] = True
    description: ClassVar[str] = ("c_k v'x at lags 5, 20, 40 plus noise at every step "
                                  "(counted from the largest lag)")

    def _generate(self, batch, generator):
        u = self._inputs(batch, generator)
        times = torch.arange(self.seq_len)
        signal = lagged_signal(u, self.unit_direction(), self.lags, self.coefficients, times)
        y = signal + self.noise((batch, self.seq_len), generator)
        mask = (times >= max(self.lags)).expand(batch, -1)
        return u, y[..., None], mask.clone()
