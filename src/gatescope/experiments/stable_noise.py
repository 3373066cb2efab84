"""``multilag_seq`` with α-stable target noise: the heavier-tails axis of ``learnability``
(claim L2, docs/experiments.md#learnability).

The noise is ``σ ξ_t`` with ``ξ_t`` symmetric α-stable of stable scale ``1/√2``
(:func:`gatescope.training.standard_stable`): ``N(0, 1)`` at ``α = 2``, where the task is
exactly the registered ``multilag_seq`` (same draws), and tails ``P(|ξ| > x) ~ x^{-α}``
below. The task lives here rather than in :mod:`gatescope.tasks` because its sampler,
:func:`gatescope.measures.stable.stable_samples`, lies above the tasks' layer; it is not
registered (the experiment builds it from its settings).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..checks import as_float
from ..tasks.multilag import MultiLagSequence
from ..training import standard_stable


@dataclass(frozen=True)
class StableNoiseMultiLag(MultiLagSequence):
    """:class:`~gatescope.tasks.multilag.MultiLagSequence` with α-stable noise of index
    ``noise_alpha`` in ``(1, 2]`` (a mean exists, so the MSE's optimum is still the signal).

    Baseline and best loss: as ``multilag_seq`` at ``α = 2``; infinite below (the noise has
    no variance) when ``noise_std > 0``.
    """

    noise_alpha: float = 2.0

    def _check_options(self) -> None:
        super()._check_options()
        self._set("noise_alpha", as_float("noise_alpha", self.noise_alpha, above=1.0,
                                          maximum=2.0))

    def noise(self, shape: tuple[int, ...], generator: torch.Generator | None) -> Tensor:
        if self.noise_alpha == 2.0:
            return super().noise(shape, generator)
        if generator is None:
            generator = torch.default_generator
        return self.noise_std * standard_stable(self.noise_alpha, shape, generator)

    def _analytic_baseline(self) -> float:
        if self.noise_alpha < 2 and self.noise_std > 0:
            return math.inf
        return super()._analytic_baseline()

    @property
    def best_loss(self) -> float:
        return math.inf if self.noise_alpha < 2 and self.noise_std > 0 else super().best_loss
