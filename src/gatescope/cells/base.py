"""The recurrent-cell interface every gatescope analysis is written against.

A cell maps a state ``h_{t-1}`` (shape ``(..., N)``) and an input ``u_t`` (shape ``(..., m)``)
to the next state ``h_t``. Cells are explicit tensor programs (no fused kernels), so
``torch.func`` transforms and double backward work through them.

Conventions:
    * ``N = state_size`` is the size of the full state (``2n`` for an LSTM, whose state is
      ``[h; c]``); ``n = hidden_size`` is the part a readout sees, always ``state[..., :n]``.
    * Time is 1-based in the maths and 0-based in tensors: ``states[:, t]`` is ``h_t`` with
      ``states[:, 0] = h_0``, while per-step tensors (gates, caches, Jacobians) store step
      ``t`` at index ``t - 1``.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .structure import JacobianStructure


@dataclass
class Trajectory:
    """Everything an unrolled cell produced, so no analysis recomputes the forward pass.

    Attributes:
        inputs: ``(B, T, m)`` the inputs ``u_1..u_T``.
        states: ``(B, T+1, N)`` the states ``h_0..h_T`` (``h_0`` included).
        gates: ``(B, T, n)`` or ``(B, T, 1)`` the update gate ``g_t`` (the weight of the new
            candidate), or ``None`` for cells without a learned gate.
        retention: ``(B, T, n)`` or ``(B, T, 1)`` the retention ``r_t`` (the weight kept of the
            old state: ``1 - g_t``; ``1 - α`` for leaky; ``0`` for plain; the forget gate
            for LSTM).
        cache: per-step intermediates the analytic Jacobians need, each ``(B, T, ...)``.
        cell_type: the class of the cell that made it (``None`` when built by hand), so an
            analysis given another cell's trajectory can say so.
        lengths: ``(B,)`` int64 valid length of each sequence of a padded batch, or ``None``
            when every sequence runs all ``T`` steps. Past its length a sequence's state is
            held (``h_t = h_{len}``, as torch's packed sequences do) and measures ignore
            those steps (:attr:`step_mask`).
    """

    inputs: Tensor
    states: Tensor
    gates: Tensor | None
    retention: Tensor
    cache: dict[str, Tensor] = field(default_factory=dict)
    cell_type: type | None = field(default=None, repr=False, compare=False)
    lengths: Tensor | None = None

    @property
    def step_mask(self) -> Tensor:
        """``(B, T)`` bool: ``True`` where step ``t`` (index ``t - 1``) lies within its
        sequence's length; all ``True`` without :attr:`lengths`."""
        steps = torch.arange(1, self.seq_len + 1, device=self.states.device)
        if self.lengths is None:
            return steps.new_ones(self.batch_size, self.seq_len, dtype=torch.bool)
        return steps <= self.lengths.to(steps.device).unsqueeze(-1)

    @property
    def previous_states(self) -> Tensor:
        """``(B, T, N)``: ``h_{t-1}`` stored at index ``t - 1``."""
        return self.states[:, :-1]

    @property
    def batch_size(self) -> int:
        return self.states.shape[0]

    @property
    def seq_len(self) -> int:
        return self.inputs.shape[1]

    def detach(self) -> Trajectory:
        """A copy whose tensors are cut from the autograd graph."""
        return self._map(Tensor.detach, Tensor.detach, self.lengths)

    def examples(self, rows: slice) -> Trajectory:
        """The trajectory of the examples ``rows`` (every per-example tensor sliced on dim 0)."""
        return self._map(lambda x: x[rows], lambda x: x[rows],
                         None if self.lengths is None else self.lengths[rows])

    def steps(self, start: int, stop: int) -> Trajectory:
        """The steps ``start+1..stop`` as a trajectory of ``stop - start`` steps whose
        ``h_0`` is ``h_start`` (lengths shift with the window and clip to it)."""
        lengths = (None if self.lengths is None
                   else (self.lengths - start).clamp(0, stop - start))
        return self._map(lambda x: x[:, start:stop], lambda h: h[:, start:stop + 1], lengths)

    def _map(self, per_step, on_states, lengths: Tensor | None) -> Trajectory:
        """A trajectory with ``per_step`` applied to every ``(B, T, ...)`` tensor and
        ``on_states`` to the ``(B, T+1, N)`` states."""
        return Trajectory(
            inputs=per_step(self.inputs),
            states=on_states(self.states),
            gates=None if self.gates is None else per_step(self.gates),
            retention=per_step(self.retention),
            cache={k: per_step(v) for k, v in self.cache.items()},
            cell_type=self.cell_type,
            lengths=lengths,
        )


def scale_rows(v: Tensor, W: Tensor) -> Tensor:
    """``diag(v) @ W`` batched: ``v`` is ``(..., n)``, ``W`` is ``(n, k)`` or ``(..., n, k)``."""
    return v.unsqueeze(-1) * W


def eye_like(v: Tensor) -> Tensor:
    """``diag(v)`` batched: ``(..., n) -> (..., n, n)``."""
    return torch.diag_embed(v)


def add_diagonal_(M: Tensor, v: Tensor) -> Tensor:
    """``M += diag(v)`` in place, batched: ``M`` is ``(..., n, n)``, ``v`` broadcasts to
    ``(..., n)``. Returns ``M``."""
    M.diagonal(dim1=-2, dim2=-1).add_(v)
    return M


def check_lengths(lengths, batch_size: int, seq_len: int) -> Tensor:
    """``lengths`` checked as ``(B,)`` integers in ``1..T``; returned as int64.

    Raises:
        TypeError: when ``lengths`` is not an integer tensor (or a list of ints).
        ValueError: for another shape, or a length outside ``1..seq_len``.
    """
    if not isinstance(lengths, Tensor):
        try:
            lengths = torch.as_tensor(lengths)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"lengths must be a (B,) integer tensor, got {type(lengths).__name__}"
                            ) from None
    if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
        raise TypeError(f"lengths must be a (B,) integer tensor, got dtype {lengths.dtype}")
    if tuple(lengths.shape) != (batch_size,):
        raise ValueError(f"lengths must have shape (B={batch_size},), got {tuple(lengths.shape)}")
    if lengths.numel() and not bool(((lengths >= 1) & (lengths <= seq_len)).all()):
        raise ValueError(f"lengths must lie in 1..T={seq_len}, got {lengths.tolist()}")
    return lengths.to(torch.int64)


def _positive_size(name: str, value) -> int:
    """``value`` as an int ``>= 1``; a clear error naming ``name`` otherwise (bools, floats
    and other non-integers are refused rather than truncated)."""
    try:
        if isinstance(value, bool):
            raise TypeError
        size = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int >= 1, got {value!r} "
                        f"({type(value).__name__})") from None
    if size < 1:
        raise ValueError(f"{name} must be an int >= 1, got {size}")
    return size


class RecurrentCell(nn.Module):
    """Base class of gatescope cells.

    A subclass implements :meth:`compute` (one step, returning the new state and the
    intermediates it wants cached) and, where it can, :meth:`analytic_jacobian_split`;
    without it gatescope falls back to ``torch.func`` (with a one-time warning). A cell may
    also override :meth:`analytic_jacobian` where ``J`` alone is cheaper than its two parts.

    A cell whose Jacobian is diagonal or 2×2-block diagonal on an inner state (with output
    rows ``C Λ_t`` in front) declares it with :meth:`jacobian_structure`; transport,
    sensitivities and effective rates then run in ``O(B·T·N)`` without forming ``J``
    (docs/maths.md#structured-jacobians).

    Args:
        input_size: ``m``, the size of ``u_t``.
        hidden_size: ``n``, the size of ``h_t`` seen by a readout.
    """

    #: Registry name, set by :func:`gatescope.register_cell`.
    name: str = "custom"
    #: One line for ``gatescope list``.
    description: str = "a user-defined cell"
    #: What ``traj.gates`` holds: ``"sigmoid"``, gate values in ``(0, 1)`` (every cell but
    #: Mamba), or ``"step size"``, Mamba's ``Δ_t > 0`` (unbounded above; docs/maths.md#mamba).
    gate_kind: str = "sigmoid"

    def __init_subclass__(cls, **kwargs) -> None:
        # a subclass that redefines the split but not J gets J = A + B of its own split, so
        # an inherited shortcut for J can never disagree with the split it replaced
        super().__init_subclass__(**kwargs)
        if "analytic_jacobian_split" in vars(cls) and "analytic_jacobian" not in vars(cls):
            cls.analytic_jacobian = RecurrentCell.analytic_jacobian

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.input_size = _positive_size("input_size", input_size)
        self.hidden_size = _positive_size("hidden_size", hidden_size)

    @property
    def state_size(self) -> int:
        """``N``, the size of the full recurrent state."""
        return self.hidden_size

    @property
    def retention_size(self) -> int:
        """``n_r``, the number of state entries the retention acts on: the **last** ``n_r``
        of the state (``hidden_size`` unless a cell says otherwise, e.g. an LSTM's ``c``)."""
        return self.hidden_size

    def compute(self, h: Tensor, u: Tensor, held: tuple[Tensor, ...] | None = None) -> dict:
        """One step ``h_{t-1}, u_t -> h_t``.

        Args:
            h: ``(..., N)`` previous state.
            u: ``(..., m)`` input.
            held: gate values to use instead of computing them from ``h`` (as returned in
                ``"held"``); used to differentiate with every gate held fixed.

        Returns:
            A dict with ``"state"`` ``(..., N)``; ``"held"``, the tuple of gate tensors
            held fixed by the time-scale Jacobian ``A`` (empty for ungated cells);
            ``"gate"`` and ``"retention"`` (``(..., n)`` or ``(..., 1)``); and any
            intermediates the analytic Jacobians read from the cache.
        """
        raise NotImplementedError

    def forward(self, h: Tensor, u: Tensor) -> Tensor:
        """The next state; ``(..., N), (..., m) -> (..., N)``."""
        return self.compute(h, u)["state"]

    step = forward

    def initial_state(self, batch_size: int, like: Tensor) -> Tensor:
        """``(B, N)`` zeros with the dtype and device of ``like``."""
        return like.new_zeros(batch_size, self.state_size)

    def unroll(self, u: Tensor, h0: Tensor | None = None,
               lengths: Tensor | None = None) -> Trajectory:
        """Run the cell over a batch of sequences.

        Args:
            u: ``(B, T, m)`` inputs, batch first.
            h0: ``(B, N)`` initial state; zeros when ``None``.
            lengths: ``(B,)`` integer valid lengths ``1 <= len <= T`` of a padded batch, or
                ``None`` (every sequence runs ``T`` steps). With torch's packed-sequence
                semantics, sequence ``b``'s state is held past its length
                (``h_t = h_{len_b}`` for ``t > len_b``), so ``traj.states[:, -1]`` is torch's
                ``h_n``; the gates and cache at those steps are what the cell computes from
                the held state and the padding (measures ignore them, ``traj.step_mask``).

        Returns:
            The :class:`Trajectory`, differentiable with respect to the parameters, with
            ``traj.lengths`` set (int64) when ``lengths`` is given.

        Raises:
            ValueError: for a wrong shape of ``u`` or ``h0``, or bad ``lengths``.
            TypeError: when ``u`` or ``h0`` has another dtype than the cell's parameters, or
                ``lengths`` is not an integer tensor.
        """
        if u.dim() != 3 or u.shape[-1] != self.input_size or u.shape[1] < 1:
            raise ValueError(
                f"u must have shape (B, T >= 1, input_size={self.input_size}), "
                f"got {tuple(u.shape)}"
            )
        if h0 is not None and tuple(h0.shape) != (u.shape[0], self.state_size):
            raise ValueError(f"h0 must have shape (B={u.shape[0]}, state_size="
                             f"{self.state_size}); got {tuple(h0.shape)}")
        self._check_dtype("u", u)
        if h0 is not None:
            self._check_dtype("h0", h0)
        lengths = None if lengths is None else check_lengths(lengths, *u.shape[:2])
        h = self.initial_state(u.shape[0], u) if h0 is None else h0
        states, steps = [h], []
        for t in range(u.shape[1]):
            out = self.compute(h, u[:, t])
            h = out["state"] if lengths is None else torch.where(
                (lengths > t).to(h.device).unsqueeze(-1), out["state"], h)
            states.append(h)
            steps.append(out)
        traj = self._assemble(u, states, steps)
        traj.lengths = lengths
        return traj

    def _check_dtype(self, name: str, x: Tensor) -> None:
        """Refuse an input whose dtype is neither the parameters' nor its real counterpart."""
        p = next(self.parameters(), None)
        if p is not None and x.dtype not in (p.dtype, p.dtype.to_real()):
            raise TypeError(
                f"{name} has dtype {x.dtype} but the {type(self).__name__}'s parameters are "
                f"{p.dtype}: pass {name}.to({p.dtype.to_real()}) or convert the cell with "
                f"cell.to({x.dtype})"
            )

    def _assemble(self, u: Tensor, states: list[Tensor], steps: list[dict]) -> Trajectory:
        skip = {"state", "held", "gate", "retention"}
        stack = lambda key: torch.stack([s[key] for s in steps], dim=1)  # noqa: E731
        first = steps[0]
        return Trajectory(
            inputs=u,
            states=torch.stack(states, dim=1),
            gates=stack("gate") if first.get("gate") is not None else None,
            retention=stack("retention"),
            cache={k: stack(k) for k in first if k not in skip},
            cell_type=type(self),
        )

    def analytic_jacobian_split(self, traj: Trajectory) -> tuple[Tensor, Tensor] | None:
        """``(A, B)``, each ``(B, T, N, N)``, or ``None`` when the cell has no closed form.

        ``A[:, t-1]`` is ``∂h_t/∂h_{t-1}`` with every gate held at its value; ``B`` is the
        remainder, the part that flows through the gates.
        """
        return None

    def analytic_input_jacobian(self, traj: Trajectory) -> Tensor | None:
        """``∂h_t/∂u_t`` at every step: ``(B, T, N, m)`` (step ``t`` at index ``t - 1``), or
        ``None`` when the cell has no closed form. A :class:`~gatescope.StackedCell` chains
        its layers with it."""
        return None

    def analytic_jacobian(self, traj: Trajectory) -> Tensor | None:
        """``J = A + B``: ``(B, T, N, N)``, or ``None`` when the cell has no closed form.

        The default adds the two parts of :meth:`analytic_jacobian_split`; a cell overrides
        it where ``J`` costs fewer full-size tensors than ``A`` and ``B`` apart.
        """
        split = self.analytic_jacobian_split(traj)
        return None if split is None else split[0] + split[1]

    def jacobian_structure(self, traj: Trajectory) -> JacobianStructure | None:
        """The per-step Jacobians as a :class:`~gatescope.cells.structure.JacobianStructure`
        (the diagonal or the 2×2 rotation blocks ``(B, T, K)`` of the inner state and the
        output rows' map), or ``None`` (the default) when ``J`` has no such structure.

        It must describe exactly :meth:`analytic_jacobian` at every step, and its ``modulus``
        must be the trajectory's retention on the inner entries
        (docs/maths.md#structured-jacobians). Steps past a sequence's length need no care:
        the analyses hold them (``J = I``).
        """
        return None

    def retention_structure(self, traj: Trajectory) -> JacobianStructure | None:
        """The structure of every transport product's block on the retention entries (the
        last :attr:`retention_size` of the state), when that block is the product of the
        steps' blocks and those are diagonal or rotation blocks; ``None`` otherwise.

        It is what the effective learning rates and their envelopes read (both are defined
        on the retention entries). By default it is the inner state of
        :meth:`jacobian_structure` (output rows dropped). A cell whose full Jacobian is not
        structured can still declare it when nothing outside the retention entries feeds
        back into them: Mamba's SSM state, read by the output but feeding only itself
        (docs/maths.md#retention-structure).
        """
        s = self.jacobian_structure(traj)
        return None if s is None else JacobianStructure(s.modulus, s.angle)
