"""The pre-norm residual block that language models put around each recurrent mixer
(mambapy's ``ResidualBlock``; with ``feedforward``, a whole layer of ``minGRU_pytorch``'s
``minLM``): ``v_t = u_t + mixer(norm(u_t))``, then optionally
``y_t = v_t + FF(ff_norm(v_t))`` (docs/maths.md#residual-blocks).

State layout: ``[y_t (n); mixer state]``, so ``state[..., :n]`` is the block's output, what a
readout and the next layer of a :class:`~gatescope.StackedCell` read. The mixer's output is
the first ``n`` entries of its own state.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import RecurrentCell, Trajectory
from .diagonal import with_output_columns
from .feedforward import feedforward_jacobian, make_feedforward
from .norms import make_norm, norm_jacobian
from .structure import JacobianStructure

#: The keys of a step's dict that are not cached intermediates.
_STEP_KEYS = ("state", "held", "gate", "retention")


class ResidualCell(RecurrentCell):
    """``v_t = u_t + x_t[:n]``, ``x_t[:n]`` the output of the mixer's step
    ``x_t = mixer(x_{t-1}, norm(u_t))``; the block's output is ``y_t = v_t``, or with
    ``feedforward`` ``y_t = v_t + FF(ff_norm(v_t))``; the state is ``[y_t; x_t]``.

    Jacobian split: the norms, the feedforward and the residuals act on the input and the
    output only, and ``y_{t-1}`` does not feed the step, so ``J_t`` is the mixer's ``J^x_t``
    with its first ``n`` rows, times ``K_t = ∂y_t/∂v_t`` (``I``, or
    ``I + ∂FF/∂z · ∂ff_norm(v_t)/∂v_t`` at ``z = ff_norm(v_t)``), as the rows of ``y_t`` and
    zero columns for ``y_{t-1}``; ``A`` and ``B`` are the mixer's mapped the same way (the
    held gates are the mixer's). The input Jacobian goes through the norm:
    ``∂x_t/∂u_t = E^x_t N_t`` with ``N_t = ∂norm(u_t)/∂u_t``, and
    ``∂y_t/∂u_t = K_t (I + (E^x_t N_t)[:n])``.

    Trajectory layout: ``traj.gates`` and ``traj.retention`` are the mixer's (the retention
    acts on the last entries of the state, the mixer's); the mixer's cached intermediates
    are under ``"mixer.{name}"`` and the normalised inputs under ``"normed"``;
    :meth:`mixer_trajectory` gives the mixer's own :class:`Trajectory`.

    Args:
        mixer: the recurrent cell inside the block; ``input_size == hidden_size`` (``m = n``,
            the residual adds the input to the output).
        norm: ``"rms"`` (default), ``"layer"`` or ``None`` (see :mod:`gatescope.cells.norms`).
        eps: the norm's ``ε``; ``None`` is torch's default (mambapy's ``RMSNorm`` uses
            ``1e-5``).
        affine: whether the norm has a learned gain (``norm.weight``) and, for ``"layer"``,
            bias.
        feedforward: ``None`` (default), or minLM's ``ff_mult``: the block adds the
            feedforward half ``FF(ff_norm(v))`` (``ff``, ``ff_norm`` of the same kind as
            ``norm``; see :mod:`gatescope.cells.feedforward`).

    Raises:
        TypeError: when ``mixer`` is not a gatescope cell.
        ValueError: when ``mixer.input_size != mixer.hidden_size``, or for a bad ``norm``,
            ``eps`` or ``feedforward``.
    """

    name = "residual"
    description = "pre-norm residual block y = u + mixer(norm(u)) around a cell"

    def __init__(self, mixer: RecurrentCell, norm: str | None = "rms", eps: float | None = None,
                 affine: bool = True, feedforward: float | None = None) -> None:
        if not isinstance(mixer, RecurrentCell):
            raise TypeError(f"mixer must be a gatescope RecurrentCell, got "
                            f"{type(mixer).__name__}")
        if mixer.input_size != mixer.hidden_size:
            raise ValueError(
                f"a residual block adds its input to the mixer's output, so the mixer needs "
                f"input_size == hidden_size; got input_size={mixer.input_size}, "
                f"hidden_size={mixer.hidden_size}")
        super().__init__(mixer.hidden_size, mixer.hidden_size)
        p = next(mixer.parameters(), None)
        like = {} if p is None else {"dtype": p.dtype, "device": p.device}
        self.norm = make_norm(norm, self.hidden_size, eps, affine).to(**like)
        self.mixer = mixer
        if feedforward is None:
            self.ff_norm = self.ff = None
        else:
            self.ff = make_feedforward(self.hidden_size, feedforward).to(**like)
            self.ff_norm = make_norm(norm, self.hidden_size, eps, affine).to(**like)

    def extra_repr(self) -> str:
        return f"hidden_size={self.hidden_size}, feedforward={self.ff is not None}"

    @property
    def state_size(self) -> int:
        return self.hidden_size + self.mixer.state_size

    @property
    def retention_size(self) -> int:
        return self.mixer.retention_size

    @property
    def gate_kind(self) -> str:
        """The mixer's (its gates are the block's)."""
        return self.mixer.gate_kind

    @property
    def gated(self) -> bool:
        """Whether the mixer has a learned, data-dependent update gate."""
        return getattr(self.mixer, "gated", False)

    def initial_state(self, batch_size: int, like: Tensor) -> Tensor:
        """``[0; the mixer's initial state]``."""
        return torch.cat([like.new_zeros(batch_size, self.hidden_size),
                          self.mixer.initial_state(batch_size, like)], -1)

    def compute(self, h, u, held=None):
        normed = self.norm(u)
        out = self.mixer.compute(h[..., self.hidden_size:], normed, held)
        x = out["state"]
        y = u + x[..., :self.hidden_size]
        if self.ff is not None:
            y = y + self.ff(self.ff_norm(y))
        result = {"state": torch.cat([y, x], -1),
                  "held": out["held"], "gate": out["gate"], "retention": out["retention"],
                  "normed": normed}
        result.update({f"mixer.{key}": v for key, v in out.items()
                       if key not in _STEP_KEYS and v is not None})
        return result

    def mixer_trajectory(self, traj: Trajectory) -> Trajectory:
        """The mixer's own trajectory within the block's ``traj``: its inputs
        ``norm(u_t)``, its states, gates, retention and cache."""
        prefix = "mixer."
        cache = {key[len(prefix):]: v for key, v in traj.cache.items() if key.startswith(prefix)}
        return Trajectory(inputs=traj.cache["normed"], states=traj.states[..., self.hidden_size:],
                          gates=traj.gates, retention=traj.retention, cache=cache,
                          cell_type=type(self.mixer), lengths=traj.lengths)

    def retention_structure(self, traj: Trajectory) -> JacobianStructure | None:
        """The mixer's: the block's norms, residuals and feedforward act on the input and
        the output rows only, so the transport's block on the retention entries (the
        mixer's last ones) is the mixer's (docs/maths.md#retention-structure)."""
        return self.mixer.retention_structure(self.mixer_trajectory(traj))

    def output_slope(self, traj: Trajectory) -> Tensor | None:
        """``K_t = ∂y_t/∂v_t = I + ∂FF/∂z · ∂ff_norm(v_t)/∂v_t``: ``(B, T, n, n)``, or
        ``None`` (``K_t = I``) without a feedforward."""
        if self.ff is None:
            return None
        n = self.hidden_size
        v = traj.inputs + traj.states[:, 1:, n:2 * n]
        K = feedforward_jacobian(self.ff, self.ff_norm(v)) @ norm_jacobian(self.ff_norm, v)
        K.diagonal(dim1=-2, dim2=-1).add_(1)
        return K

    def _block_rows(self, rows: Tensor, slope: Tensor | None, direct: bool = False) -> Tensor:
        """``∂[y_t; x_t]/∂·`` from ``∂x_t/∂·`` (``(..., N_x, k)``): in front, the first ``n``
        rows (plus ``I`` when ``direct``: ``∂u_t/∂u_t``) times ``slope`` (``K_t``; ``None``
        for ``I``); ``(..., n + N_x, k)``."""
        top = rows[..., :self.hidden_size, :]
        if direct:
            top = top + torch.eye(self.hidden_size, dtype=top.dtype, device=top.device)
        return torch.cat([top if slope is None else slope @ top, rows], -2)

    def _state_jacobian(self, J_mixer: Tensor | None, slope: Tensor | None) -> Tensor | None:
        """The block's ``(B, T, N, N)`` from the mixer's state Jacobian (or part of it)."""
        if J_mixer is None:
            return None
        return with_output_columns(self._block_rows(J_mixer, slope), self.hidden_size)

    def analytic_jacobian(self, traj):
        """``J_t`` from the mixer's (see the class docstring): ``(B, T, N, N)`` or ``None``."""
        return self._state_jacobian(self.mixer.analytic_jacobian(self.mixer_trajectory(traj)),
                                    self.output_slope(traj))

    def analytic_jacobian_split(self, traj):
        """The mixer's ``(A, B)`` mapped as ``J`` (see the class docstring), or ``None``."""
        split = self.mixer.analytic_jacobian_split(self.mixer_trajectory(traj))
        if split is None:
            return None
        slope = self.output_slope(traj)
        return tuple(self._state_jacobian(part, slope) for part in split)

    def analytic_input_jacobian(self, traj):
        """``∂[y_t; x_t]/∂u_t = [K_t (I + (E^x N)[:n]); E^x N]``: ``(B, T, N, n)`` or
        ``None``."""
        E = self.mixer.analytic_input_jacobian(self.mixer_trajectory(traj))
        if E is None:
            return None
        return self._block_rows(E @ norm_jacobian(self.norm, traj.inputs),
                                self.output_slope(traj), direct=True)
