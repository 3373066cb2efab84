"""Fixed linear read-outs of the input history: windows, delay taps, early-vs-late contrasts."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..checks import as_float, as_int, as_int_tuple
from .base import Task
from .registry import register_task


def _first_channel_only(batch: int, seq_len: int, input_size: int, generator) -> torch.Tensor:
    """``(B, T, m)`` float64: channel 0 ~ U(0,1), the others zeros."""
    u = torch.zeros(batch, seq_len, input_size, dtype=torch.float64)
    u[..., 0] = torch.rand(batch, seq_len, generator=generator, dtype=torch.float64)
    return u


@register_task("sinmix")
@dataclass(frozen=True)
class SinMix(Task):
    """Early-vs-late contrast of two random sinusoids (Livi's code).

    Definition: on the grid ``t_i = i/(T-1)``, ``i = 0..T-1`` (``t ∈ [0, 1]``), channel
    ``c ∈ {0, 1}`` is ``sin(2π f_c t + p_c)`` with ``f_c ~ U[1, 7]`` and
    ``p_c ~ U[0, 2π)`` drawn per sequence; channels ``2..m-1`` are i.i.d.
    ``N(0, noise_std²)``. With ``q = T//4`` steps in each of the first (early) and last
    (late) quarter, the target is
    ``y = (late mean − early mean of channel 0) + (early mean − late mean of channel 1)``.
    (The paper's code takes the last ``T − 3T//4`` steps as "late"; the two agree when
    ``4`` divides ``T``.)

    Shapes: ``u`` ``(B, T, m)``, ``y`` ``(B, 1)``. Needs ``m >= 2`` and ``T >= 4``.
    Baseline: Monte Carlo (it depends on ``T``; ``E[y] = 0``).

    Args:
        noise_std: standard deviation of the distractor channels (default 0.1).
    """

    noise_std: float = 0.1

    description: ClassVar[str] = "late-minus-early means of two random sinusoids"
    source: ClassVar[str] = "Livi 2025 code (s1_effective_lr.py)"
    deterministic_target: ClassVar[bool] = True
    min_input_size: ClassVar[int] = 2
    input_size_rule: ClassVar[str] = "two sinusoid channels, then distractors"

    def _check_options(self) -> None:
        self._set("noise_std", as_float("noise_std", self.noise_std, minimum=0.0))

    @classmethod
    def _min_seq_len(cls, options: dict[str, Any]) -> tuple[int, str]:
        return 4, "a quarter of the sequence must hold at least one step"

    def _generate(self, batch, generator):
        T, m = self.seq_len, self.input_size
        t = torch.linspace(0.0, 1.0, T, dtype=torch.float64)
        freq = 1.0 + 6.0 * torch.rand(batch, 2, generator=generator, dtype=torch.float64)
        phase = 2 * math.pi * torch.rand(batch, 2, generator=generator, dtype=torch.float64)
        waves = torch.sin(2 * math.pi * freq[:, None, :] * t[None, :, None] + phase[:, None, :])
        noise = self.noise_std * torch.randn(
            batch, T, m - 2, generator=generator, dtype=torch.float64
        )
        u = torch.cat([waves, noise], dim=-1)
        q = T // 4
        early = waves[:, :q].mean(dim=1)
        late = waves[:, T - q :].mean(dim=1)
        y = (late[:, 0] - early[:, 0]) + (early[:, 1] - late[:, 1])
        return u, y[:, None]


class _TrailingWindow(Task):
    """A task whose target reads the last ``window`` inputs; subclasses declare the
    ``window: int`` option with their default."""

    def _check_options(self) -> None:
        self._set("window", as_int("window", self.window, minimum=1))

    @classmethod
    def _min_seq_len(cls, options: dict[str, Any]) -> tuple[int, str]:
        w = options["window"]
        return w, f"the window of {w} steps must fit"


@register_task("short")
@dataclass(frozen=True)
class Short(_TrailingWindow):
    """A myopic control: the target only needs the last few steps (Livi's code).

    Definition: every channel i.i.d. U(0,1); target the sum of channel 0 over the last
    ``window`` steps, ``y = Σ_{d<window} u[T-1-d, 0]``. Channels ``1..m-1`` are distractors
    (the paper's code leaves its last channel at zero; a constant channel carries nothing,
    so gatescope fills it like the others).

    Shapes: ``u`` ``(B, T, m)``, ``y`` ``(B, 1)``. Needs ``T >= window``.
    Baseline: ``window / 12`` (``1/2`` for the default 6).

    Args:
        window: number of trailing steps summed (default 6).
    """

    window: int = 6

    description: ClassVar[str] = "sum of channel 0 over the last 6 steps (myopic control)"
    source: ClassVar[str] = "Livi 2025 code (s1_effective_lr.py)"
    deterministic_target: ClassVar[bool] = True

    def _generate(self, batch, generator):
        u = torch.rand(
            batch, self.seq_len, self.input_size, generator=generator, dtype=torch.float64
        )
        y = u[:, -self.window :, 0].sum(dim=1, keepdim=True)
        return u, y

    def _analytic_baseline(self) -> float:
        return self.window / 12.0


@register_task("movingavg")
@dataclass(frozen=True)
class MovingAvg(_TrailingWindow):
    """Moving-average regression (Livi's code, §VII-B).

    Definition: channel 0 i.i.d. U(0,1), the other channels 0; target the mean of the last
    ``window`` values of channel 0, ``y = (1/w) Σ_{d<w} u[T-1-d, 0]``.

    Shapes: ``u`` ``(B, T, m)``, ``y`` ``(B, 1)``. Needs ``T >= window``.
    Baseline: ``1 / (12 window)`` (``1/96`` for the default 8).

    Args:
        window: number of trailing steps averaged (default 8).
    """

    window: int = 8

    description: ClassVar[str] = "mean of the last 8 values of channel 0"
    source: ClassVar[str] = "Livi 2025 code (s2_joint_anisotropy.py)"
    deterministic_target: ClassVar[bool] = True

    def _generate(self, batch, generator):
        u = _first_channel_only(batch, self.seq_len, self.input_size, generator)
        y = u[:, -self.window :, 0].mean(dim=1, keepdim=True)
        return u, y

    def _analytic_baseline(self) -> float:
        return 1.0 / (12.0 * self.window)


@register_task("delaysum")
@dataclass(frozen=True)
class DelaySum(Task):
    """Delay-tap regression (Livi's code, §VII-B).

    Definition: channel 0 i.i.d. U(0,1), the other channels 0; target the mean of channel 0
    at the given delays from the last step, ``y = (1/K) Σ_k u[T-1-d_k, 0]``.
    The paper's code clamps delays that fall before the sequence to step 0; gatescope
    refuses such a ``seq_len`` instead.

    Shapes: ``u`` ``(B, T, m)``, ``y`` ``(B, 1)``. Needs ``T > max(delays)`` (37 for the
    defaults). Baseline: ``1 / (12 K)`` (``1/48`` for the default 4 delays).

    Args:
        delays: distinct non-negative delays (default ``(4, 12, 24, 36)``); delay 0 is the
            last step.
    """

    delays: tuple[int, ...] = (4, 12, 24, 36)

    description: ClassVar[str] = "mean of channel 0 at delays 4, 12, 24, 36"
    source: ClassVar[str] = "Livi 2025 code (s2_joint_anisotropy.py)"
    deterministic_target: ClassVar[bool] = True

    def _check_options(self) -> None:
        self._set("delays", as_int_tuple("delays", self.delays, minimum=0))

    @classmethod
    def _min_seq_len(cls, options: dict[str, Any]) -> tuple[int, str]:
        d = max(options["delays"])
        return d + 1, f"the largest delay, {d}, must fall inside the sequence"

    def _generate(self, batch, generator):
        u = _first_channel_only(batch, self.seq_len, self.input_size, generator)
        steps = torch.tensor([self.seq_len - 1 - d for d in self.delays])
        y = u[:, steps, 0].mean(dim=1, keepdim=True)
        return u, y

    def _analytic_baseline(self) -> float:
        return 1.0 / (12.0 * len(self.delays))
