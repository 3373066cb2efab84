"""AR(2) targets: the paper's unlearnable control (``ar2``) and its learnable twin."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..checks import as_float
from .base import Task
from .registry import register_task


@dataclass(frozen=True)
class _AR2(Task):
    """Shared parts: the filter ``x_t = a1 x_{t-1} + a2 x_{t-2} + ε_t``, ``x_0 = x_{-1} = 0``,
    driven by shocks ``ε_1..ε_T`` with ``Var ε = noise_std²``; target ``x_T``.

    ``x_T = Σ_{t=1..T} ψ_{T-t} ε_t`` with the impulse response ``ψ_0 = 1``, ``ψ_1 = a1``,
    ``ψ_k = a1 ψ_{k-1} + a2 ψ_{k-2}``, which is how it is computed (exactly the recurrence,
    without a loop over the batch), and ``Var x_T = noise_std² Σ_{k<T} ψ_k²``: the analytic
    baseline (``E x_T = 0``). The paper's code also draws a shock at ``t = 0`` (``T + 1`` in
    all); that changes ``Var x_T`` by ``noise_std² ψ_T²``, negligible past a few dozen steps.
    """

    a1: float = 1.6
    a2: float = -0.7
    noise_std: float = 0.05

    def _check_options(self) -> None:
        a1 = as_float("a1", self.a1)
        a2 = as_float("a2", self.a2)
        if not (abs(a2) < 1 and a1 + a2 < 1 and a2 - a1 < 1):
            raise ValueError(
                "a1, a2 must make the AR(2) filter stationary (|a2| < 1, a1 + a2 < 1, "
                f"a2 - a1 < 1); got a1={a1:g}, a2={a2:g}"
            )
        self._set("a1", a1)
        self._set("a2", a2)
        self._set("noise_std", as_float("noise_std", self.noise_std, above=0.0))

    @classmethod
    def _min_seq_len(cls, options: dict[str, Any]) -> tuple[int, str]:
        return 2, "both AR lags must enter the target"

    def impulse_response(self) -> Tensor:
        """``(T,)`` float64: ``ψ_0..ψ_{T-1}``."""
        psi = [1.0, self.a1]
        for _ in range(2, self.seq_len):
            psi.append(self.a1 * psi[-1] + self.a2 * psi[-2])
        return torch.tensor(psi[: self.seq_len], dtype=torch.float64)

    def _filter(self, shocks: Tensor) -> Tensor:
        """``(B, T)`` shocks ``ε_1..ε_T`` -> ``(B, 1)`` ``x_T``."""
        return (shocks @ self.impulse_response().flip(0))[:, None]

    def _analytic_baseline(self) -> float:
        psi = self.impulse_response()
        return float(self.noise_std**2 * (psi**2).sum())


@register_task("ar2")
@dataclass(frozen=True)
class AR2(_AR2):
    """AR(2) latent regression, the paper's control: unlearnable by design.

    Definition: ``x_t = 1.6 x_{t-1} − 0.7 x_{t-2} + ε_t``, ``ε_t ~ N(0, 0.05²)`` i.i.d.,
    ``x_0 = x_{-1} = 0``; target ``x_T``. The inputs, every channel i.i.d. U(0,1), are
    independent of the target (as in the paper's code), so nothing beats predicting the
    mean: ``best_loss == baseline_loss``. Use it as a control; :class:`AR2Driven` is the
    learnable twin.

    Shapes: ``u`` ``(B, T, m)``, ``y`` ``(B, 1)``. Needs ``T >= 2``.
    Baseline: ``noise_std² Σ_{k<T} ψ_k²`` (about 0.0429 for large ``T``).

    Args:
        a1, a2: AR coefficients (defaults 1.6, −0.7; must be stationary).
        noise_std: shock standard deviation (default 0.05).
    """

    description: ClassVar[str] = "AR(2) latent x_T; inputs are unrelated noise (control)"
    source: ClassVar[str] = "Livi 2025 code (s2_joint_anisotropy.py)"

    def _generate(self, batch, generator):
        u = torch.rand(
            batch, self.seq_len, self.input_size, generator=generator, dtype=torch.float64
        )
        shocks = self.noise_std * torch.randn(
            batch, self.seq_len, generator=generator, dtype=torch.float64
        )
        return u, self._filter(shocks)

    @property
    def best_loss(self) -> float:
        """The baseline: the inputs carry no information about the target."""
        return self.baseline_loss


@register_task("ar2_driven")
@dataclass(frozen=True)
class AR2Driven(_AR2):
    """AR(2) filter of the input: the learnable twin of :class:`AR2`.

    Definition: every channel i.i.d. U(0,1) (the same inputs as ``ar2``); the shocks are
    made from channel 0, ``ε_t = noise_std · √12 · (u[t, 0] − ½)`` (zero mean, standard
    deviation ``noise_std``); ``x_t = a1 x_{t-1} + a2 x_{t-2} + ε_t``,
    ``x_0 = x_{-1} = 0``; target ``x_T``, a fixed linear filter of channel 0 (so
    ``best_loss = 0``). Channels ``1..m-1`` are distractors.

    Shapes: ``u`` ``(B, T, m)``, ``y`` ``(B, 1)``. Needs ``T >= 2``.
    Baseline: ``noise_std² Σ_{k<T} ψ_k²``, the same as ``ar2``.

    Args:
        a1, a2: AR coefficients (defaults 1.6, −0.7; must be stationary).
        noise_std: shock standard deviation (default 0.05).
    """

    description: ClassVar[str] = "AR(2) filter driven by channel 0 (learnable ar2)"
    source: ClassVar[str] = "gatescope (learnable twin of the paper's ar2)"
    deterministic_target: ClassVar[bool] = True

    def _generate(self, batch, generator):
        u = torch.rand(
            batch, self.seq_len, self.input_size, generator=generator, dtype=torch.float64
        )
        shocks = self.noise_std * math.sqrt(12.0) * (u[..., 0] - 0.5)
        return u, self._filter(shocks)
