"""NARMA system identification (Atiya & Parlos 2000), orders 10 and 20.

Both recurrences as written can diverge: NARMA-10 does so rarely (about 2 in 10⁴ sequences
of length 120), while the NARMA-20 coefficients of the paper's code have no stable fixed
point at all (about 85% of sequences have blown up by ``T = 120``). gatescope therefore

* redraws every sequence whose ``|y_t|`` exceeds :data:`ESCAPE` at any step (no sequence
  that crosses it comes back; the task is NARMA *conditioned on not escaping*), and raises
  ``RuntimeError`` if some are still escaping after :data:`MAX_REDRAWS` rounds;
* offers ``saturate=True``, which wraps the update in ``tanh`` (as the NARMA variants of the
  reservoir-computing literature do), keeping ``|y_t| < 1``. It is the default for
  ``narma20`` only, the one whose paper form is unusable at the paper's lengths.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..checks import as_bool
from .base import Task
from .registry import register_task

#: A sequence whose ``|y_t|`` exceeds this is escaping to infinity and is redrawn.
ESCAPE = 2.0
#: Redraw rounds before giving up.
MAX_REDRAWS = 10


@dataclass(frozen=True)
class _Narma(Task):
    """NARMA-``n``: ``y_{t+1} = a y_t + b y_t Σ_{i<n} y_{t-i} + 1.5 u_{t-n+1} u_t + c``.

    Inputs: channel 0 i.i.d. U(0, 0.5), the other channels 0. ``y_0 = 0``; terms with a
    negative index are 0. With 0-based inputs ``u_0..u_{T-1}`` the target is ``y_T``,
    which depends on the last input ``u_{T-1}``.
    """

    saturate: bool = False

    ORDER: ClassVar[int] = 10
    COEFFICIENTS: ClassVar[tuple[float, float, float]] = (0.3, 0.05, 0.1)  # a, b, c
    source: ClassVar[str] = "Atiya & Parlos 2000; Livi 2025 code (s2_joint_anisotropy.py)"
    deterministic_target: ClassVar[bool] = True

    def _check_options(self) -> None:
        self._set("saturate", as_bool("saturate", self.saturate))

    @classmethod
    def _min_seq_len(cls, options: dict[str, Any]) -> tuple[int, str]:
        n = cls.ORDER
        return n, f"the lag-{n - 1} input term must reach the target"

    def _run(self, u0: Tensor) -> Tensor:
        """``(B, T)`` inputs -> ``(B, T+1)`` outputs ``y_0..y_T`` (a loop over time)."""
        n = self.ORDER
        a, b, c = self.COEFFICIENTS
        batch, T = u0.shape
        y = torch.zeros(batch, T + 1, dtype=u0.dtype)
        for t in range(T):
            yt = y[:, t]
            window = y[:, max(0, t - n + 1) : t + 1].sum(dim=1)
            lagged = u0[:, t - n + 1] if t >= n - 1 else 0.0
            update = a * yt + b * yt * window + 1.5 * lagged * u0[:, t] + c
            y[:, t + 1] = torch.tanh(update) if self.saturate else update
        return y

    def _escaped(self, u0: Tensor) -> tuple[Tensor, Tensor]:
        """``(escaped (B,) bool, y_T (B,))`` for inputs ``u0`` ``(B, T)``."""
        y = self._run(u0)
        return ~(y.abs() <= ESCAPE).all(dim=1), y[:, -1]

    def _generate(self, batch, generator):
        u0 = 0.5 * torch.rand(batch, self.seq_len, generator=generator, dtype=torch.float64)
        bad, target = self._escaped(u0)
        first_rate = float(bad.double().mean())
        for _ in range(MAX_REDRAWS):
            if not bad.any():
                break
            rows = bad.nonzero().squeeze(1)
            fresh = 0.5 * torch.rand(
                len(rows), self.seq_len, generator=generator, dtype=torch.float64
            )
            still, fresh_target = self._escaped(fresh)
            u0[rows], target[rows], bad[rows] = fresh, fresh_target, still
        if bad.any():
            raise RuntimeError(
                f"task {self.name!r}: {first_rate:.0%} of the sequences escaped (|y| > "
                f"{ESCAPE}) at seq_len={self.seq_len} and {int(bad.sum())} still did after "
                f"{MAX_REDRAWS} redraws; the unsaturated recurrence is unstable at this "
                "length: use saturate=True or a shorter seq_len"
            )
        u = torch.zeros(batch, self.seq_len, self.input_size, dtype=torch.float64)
        u[..., 0] = u0
        return u, target[:, None]


@register_task("narma10")
@dataclass(frozen=True)
class Narma10(_Narma):
    """NARMA-10: ``y_{t+1} = 0.3 y_t + 0.05 y_t Σ_{i<10} y_{t-i} + 1.5 u_{t-9} u_t + 0.1``.

    Inputs: channel 0 i.i.d. U(0, 0.5), the other channels 0; ``y_0 = 0``; target ``y_T``.
    Sequences that escape (``|y_t| > 2``, about 2 in 10⁴ at ``T = 120``) are redrawn.

    Shapes: ``u`` ``(B, T, m)``, ``y`` ``(B, 1)``. Needs ``T >= 10``.
    Baseline: Monte Carlo (about 0.012 once ``T`` passes ~50).

    Args:
        saturate: wrap the update in ``tanh`` (default False: the paper's form).
    """

    saturate: bool = False

    ORDER: ClassVar[int] = 10
    COEFFICIENTS: ClassVar[tuple[float, float, float]] = (0.3, 0.05, 0.1)
    description: ClassVar[str] = "NARMA-10 output y_T from inputs on channel 0"


@register_task("narma20")
@dataclass(frozen=True)
class Narma20(_Narma):
    """NARMA-20 with the paper's coefficients, saturated by default.

    ``y_{t+1} = tanh(0.1 y_t + 0.04 y_t Σ_{i<20} y_{t-i} + 1.5 u_{t-19} u_t + 0.2)``.

    The coefficients are the paper's; the ``tanh`` is gatescope's default
    (``saturate=True``) because without it the recurrence has no stable fixed point: a third
    of the sequences escape by ``T = 80``, most by ``T = 120``. ``saturate=False`` gives the
    paper's form exactly, usable up to ``T ≈ 60`` (escaping sequences are redrawn;
    ``RuntimeError`` when too many escape).

    Inputs: channel 0 i.i.d. U(0, 0.5), the other channels 0; ``y_0 = 0``; target ``y_T``.

    Shapes: ``u`` ``(B, T, m)``, ``y`` ``(B, 1)``. Needs ``T >= 20``.
    Baseline: Monte Carlo.

    Args:
        saturate: wrap the update in ``tanh`` (default True; see above).
    """

    saturate: bool = True

    ORDER: ClassVar[int] = 20
    COEFFICIENTS: ClassVar[tuple[float, float, float]] = (0.1, 0.04, 0.2)
    description: ClassVar[str] = "NARMA-20 (tanh-saturated) output y_T from channel 0"
