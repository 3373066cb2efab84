"""Optimizers by name: ``make_optimizer("adam", params, lr=1e-3)``.

Every optimizer here is *elementwise*: the update of one parameter entry depends only on
that entry's own gradient history. So one optimizer over parameters stacked across seeds
(shape ``(E, ...)``) performs exactly the updates of E separate optimizers, which is what
lets :class:`~gatescope.training.EnsembleTrainer` train a seed ensemble in one pass.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

#: name -> (torch.optim class, default options). ``momentum`` is heavy-ball SGD, β = 0.9.
_OPTIMIZERS: dict[str, tuple[type[torch.optim.Optimizer], dict[str, Any]]] = {
    "sgd": (torch.optim.SGD, {}),
    "momentum": (torch.optim.SGD, {"momentum": 0.9}),
    "adam": (torch.optim.Adam, {}),
    "adamw": (torch.optim.AdamW, {}),
    "rmsprop": (torch.optim.RMSprop, {}),
}


def list_optimizers() -> list[str]:
    """The optimizer names, e.g. for settings validation and ``gatescope list``."""
    return list(_OPTIMIZERS)


def check_learning_rate(lr: float) -> float:
    """``lr`` as a float; ``ValueError`` unless it is finite and > 0."""
    try:
        value = float(lr)
    except (TypeError, ValueError):
        raise ValueError(f"learning rate must be a number > 0; got {lr!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"learning rate must be finite and > 0; got {lr!r}")
    return value


def make_optimizer(name: str, params: Iterable[torch.Tensor], lr: float,
                   **options: Any) -> torch.optim.Optimizer:
    """Build a registered optimizer.

    Args:
        name: one of :func:`list_optimizers`.
        params: the tensors to optimise (leaf tensors with ``requires_grad``).
        lr: learning rate, finite and > 0.
        **options: passed to the torch optimizer over the defaults (e.g. ``betas=``,
            ``weight_decay=``, ``momentum=``).

    Raises:
        ValueError: unknown name, bad learning rate, or an option the optimizer rejects.
    """
    try:
        cls, defaults = _OPTIMIZERS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown optimizer {name!r}; choose one of {list_optimizers()}") from None
    lr = check_learning_rate(lr)
    try:
        return cls(params, lr=lr, **{**defaults, **options})
    except TypeError as err:
        raise ValueError(f"optimizer {name!r}: {err}") from None
