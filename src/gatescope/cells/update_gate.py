"""Where each cell's retention gate lives, and the follow-ups' gate initialisation.

The follow-ups (docs/experiments.md#learnability) start every cell at one update gate
``s`` (retention ``1 - s``): the constant gate is the ``leaky`` cell with ``α = s``; a learned
gate has its pre-activation weights zeroed and its bias set, so ``σ(bias)`` is the gate for
every input. :func:`retention_gate` is the one table of which parameters those are, per
cell; the initialisation (:func:`init_update_gate`) and the ``timescales`` experiment's
forcing (:mod:`gatescope.training.forcing`) both read it.

=============== ==================================== ============ ===========================
cell            gate parameters                      rows         ``σ(pre-activation)`` is
=============== ==================================== ============ ===========================
``scalar_gate`` ``gate_recurrent.weight``,           all (1)      the update gate ``g``
``multi_gate``  ``gate_input.weight``, ``.bias``     all (``n``)  the update gate ``g``
``gru``         ``weight_ih``, ``weight_hh``,        ``n..2n``    the retention ``z = 1 - g``
                ``bias_ih``, ``bias_hh``
``lstm``        the same                             ``n..2n``    the retention ``f``
=============== ==================================== ============ ===========================

(torch's gate order is ``r, z, n`` for the GRU and ``i, f, g, o`` for the LSTM; the LSTM's
update gate ``i`` is left alone: its retention, the forget gate, sets its time scales.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .base import RecurrentCell
from .gated import GatedCell
from .gru import GRUCell
from .leaky import LeakyCell
from .lstm import LSTMCell

#: The cells :func:`init_update_gate` knows.
INITIALISABLE = ("leaky", "scalar_gate", "multi_gate", "gru", "lstm")


@dataclass(frozen=True)
class RetentionGate:
    """The parameters of one cell's learned retention gate.

    Attributes:
        weights: names (within the cell) of the weights feeding the gate's pre-activation.
        biases: names of its biases; the first takes the initial value, the others 0.
        rows: the gate's rows in each of those tensors (a block of torch's layout).
        sign: ``+1`` where ``σ(pre-activation)`` is the update gate ``g``, ``-1`` where it
            is the retention ``1 - g`` (so the retention's logit is ``-sign · logit g``).
        size: the number of gate values: ``1`` (one shared gate) or ``n``.
    """

    weights: tuple[str, ...]
    biases: tuple[str, ...]
    rows: slice
    sign: int
    size: int

    @property
    def names(self) -> tuple[str, ...]:
        """Every gate parameter's name, weights first."""
        return self.weights + self.biases


def retention_gate(cell: RecurrentCell) -> RetentionGate | None:
    """The table above for ``cell``; ``None`` for the constant gate (``leaky``).

    Raises:
        ValueError: a cell outside :data:`INITIALISABLE`.
    """
    if isinstance(cell, LeakyCell):
        return None
    if isinstance(cell, GatedCell):
        k = cell.hidden_size if cell.per_neuron_gate else 1
        return RetentionGate(("gate_recurrent.weight", "gate_input.weight"),
                             ("gate_input.bias",), slice(0, k), +1, k)
    if isinstance(cell, GRUCell | LSTMCell):
        n = getattr(cell, "cell_size", cell.hidden_size)
        return RetentionGate(("weight_ih", "weight_hh"), ("bias_ih", "bias_hh"),
                             slice(n, 2 * n), -1, n)
    raise ValueError(f"the update-gate initialisation knows the cells {', '.join(INITIALISABLE)}"
                     f"; got {type(cell).__name__}")


def init_update_gate(cell: RecurrentCell, logit: float | Tensor) -> RecurrentCell:
    """Start ``cell``'s update gate at ``s = σ(logit)`` for every input (retention ``1 - s``).

    ``leaky``: ``α = σ(logit)`` (one value). Learned gates: the gate's weights (both the
    recurrent and the input ones) are set to 0 and its bias to ``logit`` (``-logit`` where
    the gate's pre-activation is the retention's, :class:`RetentionGate`); the LSTM's and
    GRU's second bias (``bias_hh``) is set to 0. The other parameters keep their values.

    Args:
        cell: one of :data:`INITIALISABLE`, built with ``bias=True`` where it has a learned
            gate.
        logit: ``logit s``: a finite float, or a ``(size,)`` tensor with one logit per gate
            value (a spread of initial time scales across neurons; ``size`` is ``n``, or 1
            for ``scalar_gate`` and ``leaky``).

    Returns:
        ``cell``, changed in place.

    Raises:
        ValueError: an unknown cell, a cell without gate biases, a logit tensor of the wrong
            size, or a non-finite logit.
    """
    gate = retention_gate(cell)
    size = 1 if gate is None else gate.size
    values = torch.as_tensor(logit, dtype=torch.float64).reshape(-1)
    if values.numel() not in (1, size):
        raise ValueError(f"logit must be one number or {size} (one per gate value of "
                         f"{type(cell).__name__}); got {values.numel()}")
    if not bool(torch.isfinite(values).all()):
        raise ValueError(f"logit must be finite; got {logit}")
    if gate is None:
        cell.alpha = 1 / (1 + math.exp(-float(values[0])))
        return cell
    params = dict(cell.named_parameters())
    missing = [name for name in gate.biases if name not in params]
    if missing:
        raise ValueError(f"{type(cell).__name__} has no gate bias {missing}: build it with "
                         "bias=True to initialise its update gate")
    with torch.no_grad():
        for name in gate.weights:
            params[name][gate.rows] = 0
        first, *others = gate.biases
        params[first][gate.rows] = (gate.sign * values).to(params[first])
        for name in others:
            params[name][gate.rows] = 0
    return cell
