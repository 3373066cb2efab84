"""A stack of recurrent layers run as one recurrence (``nn.GRU(num_layers=L)`` and kin).

Layer ``k`` (``0`` at the bottom) maps its state ``x^k_{t-1}`` and its input ``u^k_t`` to
``x^k_t``, where ``u^0_t = u_t`` and ``u^k_t = h^{k-1}_t`` is the readout part (the first
``hidden_size`` entries) of the layer below's *new* state. The stack's state holds every
layer, **top layer first** (docs/maths.md#stacked-state-layout)::

    state = [x^{L-1}; x^{L-2}; ...; x^0]

so a readout, which sees ``state[..., :hidden_size]``, sees the top layer's ``h``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .base import RecurrentCell, Trajectory


class StackedCell(RecurrentCell):
    """Layers stacked in depth, one step of the stack being one step of every layer in turn.

    Per-step Jacobian (block row ``k``, block column ``j``, both layer indices)::

        ∂x^k_t/∂x^k_{t-1} = J^k_t
        ∂x^k_t/∂x^j_{t-1} = E^k_t [∂x^{k-1}_t/∂x^j_{t-1}]_{h rows}    (j < k)
        ∂x^k_t/∂x^j_{t-1} = 0                                        (j > k)

    with ``J^k`` the layer's own Jacobian and ``E^k = ∂x^k_t/∂u^k_t`` its input Jacobian
    (:meth:`RecurrentCell.analytic_input_jacobian`): the layers couple *within* a step, so
    ``J`` is block lower triangular in the layer index. It is built layer by layer, each
    layer in one vectorised pass over batch and time.

    Jacobian split: every gate of every layer is held for ``A``, and so is the input each
    layer receives from the layer below, so ``A = blockdiag(A^0, ..., A^{L-1})`` (each
    layer's own time-scale part, in the state's block order) and ``B = J - A``: each layer's
    own gate-induced part ``B^k`` plus all the coupling between layers. ``compute``'s
    ``"held"`` is accordingly every layer's held gates followed by the inputs of layers
    ``1..L-1``, which makes the ``torch.func`` split equal this one.

    Trajectory layout: ``traj.gates`` and ``traj.retention`` are those of layer 0, the layer
    whose state is last in the stack's state (the entries effective learning rates read,
    docs/maths.md#effective-learning-rates); every layer's gate, retention and cached
    intermediates are in ``traj.cache`` under ``"l{k}.{name}"`` (e.g. ``"l1.retention"``),
    and :meth:`layer_trajectory` gives one layer's own :class:`Trajectory`.

    Dropout between layers (torch's ``dropout``) is not part of the cell: it computes eval
    semantics, as torch's module in ``eval()`` mode.

    Args:
        layers: the single-layer cells, bottom first; layer ``k``'s ``input_size`` must be
            layer ``k-1``'s ``hidden_size``.

    Attributes:
        layers: ``nn.ModuleList`` of the layers, bottom first.
        layer_slices: ``layer_slices[k]`` is the slice of the state holding layer ``k``.
    """

    name = "stacked"
    description = "layers stacked in depth as one recurrence (state: top layer first)"

    def __init__(self, layers: Sequence[RecurrentCell]) -> None:
        layers = list(layers)
        if not layers or not all(isinstance(c, RecurrentCell) for c in layers):
            raise TypeError("layers must be a non-empty sequence of gatescope RecurrentCells, "
                            f"got {[type(c).__name__ for c in layers]}")
        for k in range(1, len(layers)):
            if layers[k].input_size != layers[k - 1].hidden_size:
                raise ValueError(
                    f"layers[{k}].input_size={layers[k].input_size} must equal "
                    f"layers[{k - 1}].hidden_size={layers[k - 1].hidden_size} (layer k reads "
                    "the h of layer k-1)")
        super().__init__(layers[0].input_size, layers[-1].hidden_size)
        self.layers = nn.ModuleList(layers)
        sizes = [c.state_size for c in layers]
        ends = [sum(sizes[k:]) for k in range(len(sizes))]  # layer k ends where k+1.. start
        self.layer_slices = [slice(sum(sizes[k + 1:]), ends[k]) for k in range(len(sizes))]
        self._held_counts = [_held_count(c) for c in layers]

    @property
    def state_size(self) -> int:
        return sum(c.state_size for c in self.layers)

    @property
    def retention_size(self) -> int:
        """``traj.retention`` is layer 0's, whose state is last in the stack's state."""
        return self.layers[0].retention_size

    @property
    def gated(self) -> bool:
        """Whether any layer has a learned, state-dependent update gate."""
        return any(getattr(c, "gated", False) for c in self.layers)

    def split_state(self, state: Tensor) -> list[Tensor]:
        """The layers' parts of ``state`` (``(..., N)``), bottom first: ``[(..., N_k)]``."""
        return [state[..., s] for s in self.layer_slices]

    def join_states(self, parts: Sequence[Tensor]) -> Tensor:
        """Inverse of :meth:`split_state`: the layers' states (bottom first) -> ``(..., N)``."""
        return torch.cat(list(parts)[::-1], -1)

    def compute(self, h, u, held=None):
        layer_held = self._split_held(held)
        x, news, outs, passed = u, [], [], []
        for k, (cell, h_k) in enumerate(zip(self.layers, self.split_state(h), strict=True)):
            if k > 0:
                x = x if held is None else layer_held[1][k - 1]
                passed.append(x)
            out = cell.compute(h_k, x, held=None if held is None else layer_held[0][k])
            news.append(out["state"])
            outs.append(out)
            x = out["state"][..., :cell.hidden_size]
        result = {"state": self.join_states(news),
                  "held": (*(g for out in outs for g in out["held"]), *passed),
                  "gate": outs[0]["gate"], "retention": outs[0]["retention"]}
        for k, out in enumerate(outs):
            result.update({f"l{k}.{key}": v for key, v in out.items()
                           if key not in ("state", "held") and v is not None})
        return result

    def _split_held(self, held):
        """``held`` (flat) -> ``(per-layer gate tuples, inputs of layers 1..L-1)``."""
        if held is None:
            return None
        gates, start = [], 0
        for count in self._held_counts:
            gates.append(tuple(held[start:start + count]))
            start += count
        return gates, tuple(held[start:])

    def layer_trajectory(self, traj: Trajectory, k: int) -> Trajectory:
        """Layer ``k``'s own trajectory within the stack's ``traj``: its inputs (``u`` for
        layer 0, the layer below's ``h_t`` otherwise), its states, gates, retention and
        cache, as ``self.layers[k].unroll`` of those inputs would give."""
        cell = self.layers[k]
        inputs = traj.inputs if k == 0 else (
            traj.states[:, 1:, self.layer_slices[k - 1]][..., :self.layers[k - 1].hidden_size])
        prefix = f"l{k}."
        cache = {key[len(prefix):]: v for key, v in traj.cache.items() if key.startswith(prefix)}
        gate, retention = cache.pop("gate", None), cache.pop("retention")
        return Trajectory(inputs=inputs, states=traj.states[..., self.layer_slices[k]],
                          gates=gate, retention=retention, cache=cache,
                          cell_type=type(cell), lengths=traj.lengths)

    def analytic_jacobian(self, traj):
        """``J`` chained across the layers from their analytic ``J^k`` and ``E^k`` (see the
        class docstring); ``None`` when a layer has no closed form for either.

        Returns:
            ``(B, T, N, N)``.
        """
        return self._chained(traj, lambda cell, lt: cell.analytic_jacobian(lt))

    def analytic_jacobian_split(self, traj):
        """``A = blockdiag(A^k)`` and ``B = J - A`` (see the class docstring).

        Returns:
            ``(A, B)``, each ``(B, T, N, N)``, or ``None`` without a closed form.
        """
        J = self.analytic_jacobian(traj)
        if J is None:
            return None
        A = torch.zeros_like(J)
        for k, cell in enumerate(self.layers):
            split = cell.analytic_jacobian_split(self.layer_trajectory(traj, k))
            if split is None:
                return None
            A[..., self.layer_slices[k], self.layer_slices[k]] = split[0]
        return A, J - A

    def analytic_input_jacobian(self, traj):
        """``∂state_t/∂u_t``, chained up the layers: ``(B, T, N, m)``, or ``None``."""
        return self._chained(traj, None)

    def _chained(self, traj: Trajectory, own) -> Tensor | None:
        """Rows of ``∂state_t/∂(h_{t-1} or u_t)`` layer by layer: row block ``k`` is
        ``E^k`` times the ``h`` rows of block ``k-1``, plus (for the state Jacobian,
        ``own`` given) ``own(layer, its trajectory)`` on its diagonal block. For the input
        Jacobian (``own=None``) row block 0 is ``E^0``."""
        Bsz, T = traj.batch_size, traj.seq_len
        cols = self.state_size if own is not None else self.input_size
        out = traj.states.new_zeros(Bsz, T, self.state_size, cols)
        below = None
        for k, cell in enumerate(self.layers):
            lt = self.layer_trajectory(traj, k)
            rows = out[..., self.layer_slices[k], :]
            if k > 0 or own is None:
                E = cell.analytic_input_jacobian(lt)
                if E is None:
                    return None
                rows.copy_(E if below is None else E @ below)
            if own is not None:
                J_k = own(cell, lt)
                if J_k is None:
                    return None
                rows[..., self.layer_slices[k]] += J_k
            below = rows[..., :cell.hidden_size, :]
        return out


def _held_count(cell: RecurrentCell) -> int:
    """How many gate tensors ``cell.compute`` returns in ``"held"`` (one probe step)."""
    p = next(cell.parameters(), None)
    like = torch.zeros(()) if p is None else p.detach()
    with torch.no_grad():
        out = cell.compute(like.new_zeros(1, cell.state_size), like.new_zeros(1, cell.input_size))
    return len(out["held"])
