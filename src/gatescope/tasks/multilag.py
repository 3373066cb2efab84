"""Multi-lag linear regression with Gaussian inputs (Livi's follow-up papers)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..checks import as_float, as_float_tuple, as_int_tuple
from .base import Task
from .registry import register_task


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

    def _generate(self, batch, generator):
        T = self.seq_len
        u = torch.randn(batch, T, self.input_size, generator=generator, dtype=torch.float64)
        steps = torch.tensor([T - 1 - ell for ell in self.lags])
        coef = torch.tensor(self.coefficients, dtype=torch.float64)
        signal = (u[:, steps] @ self.unit_direction()) @ coef
        noise = self.noise_std * torch.randn(batch, generator=generator, dtype=torch.float64)
        return u, (signal + noise)[:, None]

    def _analytic_baseline(self) -> float:
        return sum(c * c for c in self.coefficients) + self.noise_std**2

    @property
    def best_loss(self) -> float:
        """``σ²``: the MSE of ``E[y | u]``, the noise the inputs cannot explain."""
        return self.noise_std**2
