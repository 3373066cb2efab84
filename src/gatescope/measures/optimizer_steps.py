"""Per-parameter effective step sizes of an optimizer, and their dispersion beside the gates'.

Read from the optimizer's own hyper-parameters and state (the current ``lr``, so a scheduler's
changes are seen), for a gradient ``g`` moving a parameter by ``step · g`` per iteration:

* ``SGD``: ``η``; with momentum ``β`` and dampening ``τ`` the **asymptotic** step
  ``η (1-τ) / (1-β)`` (the momentum buffer of a constant gradient tends to
  ``(1-τ) g / (1-β)``; Nesterov requires ``τ = 0`` and has the same limit);
* ``Adam``/``AdamW``: ``η / (√v̂ + ε)``, ``v̂ = v / (1 - β₂^t)`` with ``v = exp_avg_sq`` (the
  running maximum ``max_exp_avg_sq`` under ``amsgrad``) and ``t`` the state's step count
  (the first-moment bias correction and weight decay are not part of the step size);
* ``RMSprop``: ``η / (√v + ε)``, ``v = square_avg`` (minus ``grad_avg²`` when centred), no bias
  correction, divided by ``1 - β`` with momentum ``β`` (asymptotic, as for SGD).

Adam and RMSprop have no step size before their first step: those parameters get NaN.

Dispersion treats a vector of steps ``x`` as the diagonal preconditioner ``diag(x)``, whose
singular values are ``|x|``: coefficient of variation of ``|x|``, the
:func:`~gatescope.measures.spectrum_stats` of ``|x|``, and quantiles. Every statistic but the
quantiles is scale-invariant, so a gated cell's ``μ`` (the multiplier of the SGD step along
each neuron) and an optimizer's steps compare directly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ._quantile import quantile
from .anisotropy import coefficient_of_variation, spectrum_stats

#: Quantile levels reported by the dispersion functions.
DEFAULT_LEVELS = (0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99)


def _sgd(group: dict, state: dict, p: Tensor) -> Tensor:
    beta = group.get("momentum", 0.0)
    scale = (1 - group.get("dampening", 0.0)) / (1 - beta) if beta else 1.0
    return torch.full_like(p, float(group["lr"]) * scale)


def _adam(group: dict, state: dict, p: Tensor) -> Tensor:
    if "exp_avg_sq" not in state:
        return torch.full_like(p, math.nan)
    v = state["max_exp_avg_sq"] if group.get("amsgrad", False) else state["exp_avg_sq"]
    correction = 1 - group["betas"][1] ** float(state["step"])
    return float(group["lr"]) / ((v / correction).sqrt() + group["eps"])


def _rmsprop(group: dict, state: dict, p: Tensor) -> Tensor:
    if "square_avg" not in state:
        return torch.full_like(p, math.nan)
    v = state["square_avg"]
    if group.get("centered", False):
        v = v - state["grad_avg"] ** 2
    return float(group["lr"]) / ((v.sqrt() + group["eps"]) * (1 - group.get("momentum", 0.0)))


_RULES = (
    (torch.optim.SGD, _sgd),
    ((torch.optim.Adam, torch.optim.AdamW), _adam),
    (torch.optim.RMSprop, _rmsprop),
)


def optimizer_step_sizes(optimizer: torch.optim.Optimizer) -> dict[Tensor, Tensor]:
    """The per-parameter effective step of ``optimizer`` (see the module notes).

    Args:
        optimizer: ``torch.optim.SGD``, ``Adam``, ``AdamW`` or ``RMSprop``.

    Returns:
        ``{parameter: tensor of its shape and dtype}`` for every parameter of every group,
        in group order.

    Raises:
        TypeError: for any other optimizer.
    """
    rule = next((f for kinds, f in _RULES if isinstance(optimizer, kinds)), None)
    if rule is None:
        raise TypeError(f"optimizer_step_sizes supports SGD, Adam, AdamW and RMSprop, "
                        f"not {type(optimizer).__name__}")
    return {p: rule(group, optimizer.state.get(p, {}), p.detach())
            for group in optimizer.param_groups for p in group["params"]}


@dataclass
class Dispersion:
    """How unequal a set of step sizes is; fields share a batch shape ``(...)``.

    Attributes:
        cv: coefficient of variation ``std/mean`` of ``|x|`` (population std).
        ai: ``AI_r`` of ``|x|`` as singular values.
        ce: ``CE_r``.
        participation_ratio: ``(Σx²)²/Σx⁴``, the effective number of coordinates.
        effective_rank: ``exp(-Σ p log p)``, ``p = |x|/Σ|x|``.
        levels: ``(Q,)`` quantile levels.
        quantiles: ``(Q, ...)`` quantiles of ``|x|``.
    """

    cv: Tensor
    ai: Tensor
    ce: Tensor
    participation_ratio: Tensor
    effective_rank: Tensor
    levels: Tensor
    quantiles: Tensor


def _shape(a: Tensor, r: int) -> dict[str, Tensor]:
    """The scale-invariant fields of :class:`Dispersion` for magnitudes ``a`` ``(..., K)``."""
    stats = spectrum_stats(a, r)
    return {"cv": coefficient_of_variation(a), "ai": stats.ai, "ce": stats.ce,
            "participation_ratio": stats.participation_ratio,
            "effective_rank": stats.effective_rank}


def dispersion(x: Tensor, r: int = 10, levels: Sequence[float] = DEFAULT_LEVELS) -> Dispersion:
    """Dispersion of the vectors ``x`` ``(..., K)`` along the last dimension (float64)."""
    a = x.detach().double().abs()
    levels_t = torch.tensor(levels, dtype=torch.float64)
    return Dispersion(**_shape(a, r), levels=levels_t, quantiles=quantile(a, levels_t))


def step_size_dispersion(steps: Mapping[Tensor, Tensor] | Tensor, r: int = 10,
                         levels: Sequence[float] = DEFAULT_LEVELS) -> Dispersion:
    """Dispersion of all step sizes together (fields are scalars).

    Args:
        steps: :func:`optimizer_step_sizes`' dict or any tensor, flattened; NaN entries
            (parameters not stepped yet) are left out.
        r: the rank of ``AI_r``/``CE_r``.
        levels: quantile levels.
    """
    values = (torch.cat([s.detach().flatten().double().cpu() for s in steps.values()])
              if isinstance(steps, Mapping) else steps.detach().flatten().double())
    return dispersion(values[~values.isnan()], r, levels)


@dataclass
class GatesVsOptimizer:
    """Gate-induced rates beside an optimizer's step sizes.

    Attributes:
        gates: per lag (fields ``(L,)``, quantiles ``(Q, L)``): the median over examples and
            end times ``t ≥ ℓ`` of the across-neuron dispersion of ``η μ_{t,ℓ,·}``, and the
            quantiles of ``|η μ|`` pooled over examples, times and neurons.
        optimizer: the dispersion of all the optimizer's step sizes (scalar fields).
    """

    gates: Dispersion
    optimizer: Dispersion


def gates_vs_optimizer(mu: Tensor, optimizer: torch.optim.Optimizer | Mapping | Tensor,
                       lr: float = 1.0, r: int = 10,
                       levels: Sequence[float] = DEFAULT_LEVELS) -> GatesVsOptimizer:
    """The "gates vs Adam" comparison in one call: how unequal the gates make the per-neuron
    steps, beside how unequal an optimizer makes the per-parameter steps.

    Args:
        mu: ``(B, T+1, L, n)`` from :func:`~gatescope.measures.effective_learning_rates`
            (``order=0`` isolates the gates: a scalar gate then has ``cv = 0`` exactly).
        optimizer: an optimizer (read with :func:`optimizer_step_sizes`), its steps dict, or
            a tensor of steps.
        lr: the SGD step ``η`` multiplying ``μ`` (only the quantiles depend on it).
        r: the rank of ``AI_r``/``CE_r`` on both sides (``≤ n``).
        levels: quantile levels.
    """
    steps = (optimizer_step_sizes(optimizer) if isinstance(optimizer, torch.optim.Optimizer)
             else optimizer)
    a = (lr * mu).detach().double().abs()
    per_vector = _shape(a, r)  # fields (B, T+1, L); NaN where ℓ > t
    levels_t = torch.tensor(levels, dtype=torch.float64)
    gates = Dispersion(
        **{k: quantile(v.flatten(0, 1), 0.5, dim=0) for k, v in per_vector.items()},
        levels=levels_t, quantiles=quantile(a.permute(2, 0, 1, 3).flatten(1), levels_t),
    )
    return GatesVsOptimizer(gates, step_size_dispersion(steps, r, levels))
