"""Mamba's selective SSM with its causal depthwise convolution (Gu & Dao 2023), step for step
``mambapy.mamba.MambaBlock.step`` (docs/maths.md#mamba).

With ``d = expand · n`` inner channels, ``S = d_state`` states per channel, a convolution of
width ``K = d_conv`` and ``W = K - 1``:

``[x_t; z_t] = W_in u_t (+ b_in)`` (``in_proj``), the causal depthwise convolution
``c_t = Σ_{k<W} w_{:,k} ⊙ ξ_{t-1,k} + w_{:,W} ⊙ x_t (+ b_c)`` over the window
``ξ_{t-1} = (x_{t-W}, …, x_{t-1})`` (``conv1d``), ``a_t = silu(c_t)``,
``[δ_t; B_t; C_t] = W_x a_t`` (``x_proj``), ``Δ_t = softplus(W_Δ δ_t + b_Δ)`` (``dt_proj``),
``h_t = exp(Δ_t A) ⊙ h_{t-1} + (Δ_t ⊙ a_t) B_tᵀ`` with ``A = -exp(A_log)`` (``(d, S)``),
``o_t = h_t C_t + D ⊙ a_t``, output ``y_t = W_out (o_t ⊙ silu(z_t)) (+ b_out)`` (``out_proj``)
and the new window ``ξ_t = (x_{t-W+1}, …, x_t)``. Parameter names are mambapy's, so a
``MambaBlock``'s ``state_dict`` loads directly.

State layout, ``N = n + d W + d S``::

    state_t = [y_t (n); ξ_t (d × W, entry i W + k, k = 0 the oldest); h_t (d × S, entry i S + s)]

the window and SSM state flattened as mambapy's cache ``(inputs, h)`` of shapes ``(d, W)`` and
``(d, S)``. The SSM state comes last, so the retention ``exp(Δ_t A)`` acts on the last
``retention_size = d S`` entries.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .base import RecurrentCell, Trajectory, _positive_size, eye_like
from .registry import register_cell
from .structure import JacobianStructure

#: torch's ``softplus`` returns its input above this threshold (``beta = 1``), slope ``1``.
SOFTPLUS_THRESHOLD = 20.0

DT_INITS = ("random", "constant")


def silu_slope(x: Tensor) -> Tensor:
    """``silu'(x) = σ(x) (1 + x (1 - σ(x)))``, elementwise."""
    s = torch.sigmoid(x)
    return s * (1 + x * (1 - s))


def block_rows(v: Tensor) -> Tensor:
    """The block-diagonal rows of ``v``: ``(..., d, k) -> (..., d, d k)``, row ``i`` holding
    ``v[..., i, :]`` in columns ``i k .. i k + k - 1`` and zeros elsewhere."""
    d = v.shape[-2]
    return (torch.eye(d, dtype=v.dtype, device=v.device).unsqueeze(-1)
            * v.unsqueeze(-2)).flatten(-2)


@register_cell("mamba")
class MambaCell(RecurrentCell):
    """Mamba's selective SSM: retention ``exp(Δ_t A)`` per SSM channel, gate ``Δ_t``.

    ``traj.gates`` is the step size ``Δ_t`` ``(B, T, d)``, one per inner channel: it plays
    the update gate's part (``Δ → 0`` keeps the state, ``exp(Δ A) → 1``, and admits no
    input, ``Δ B x → 0``), but it is positive and unbounded, not in ``(0, 1)``.
    ``traj.retention`` is ``exp(Δ_t A)`` ``(B, T, d S)`` (entry ``i S + s``).

    Jacobian split (docs/maths.md#mamba). The window makes the gates depend on the previous
    state: ``c_t`` reads ``ξ_{t-1}``, and ``Δ_t``, ``B_t``, ``C_t`` read ``a_t = silu(c_t)``
    (``z_t`` reads only the input). ``A_t`` holds ``Δ_t, B_t, C_t`` at their values; ``B_t``
    is the rest, through the gates. With ``E_t = ∂a_t/∂ξ_{t-1}`` (block rows
    ``diag(silu'(c_t) ⊙ w_{:,k})``) and ``g_t = silu(z_t)``, rows × columns:

    * ``h`` rows: ``∂h/∂h_{t-1} = diag(exp(Δ_t A))`` (in ``A_t``; no gate reads ``h``);
      ``∂h/∂ξ_{t-1}``: ``A_t`` ``diag(Δ_t) B_tᵀ`` per channel times ``E_t``, ``B_t``
      ``[q_{is} ∂Δ_i/∂a + Δ_i a_i ∂B_s/∂a] E_t`` with
      ``q = A ⊙ exp(Δ A) ⊙ h_{t-1} + a_t B_tᵀ`` and ``∂Δ/∂a = diag(softplus') W_Δ W_x^δ``.
    * ``ξ`` rows: the shift ``ξ_{t,k} = ξ_{t-1,k+1}`` (in ``A_t``; the newest entry is the
      input's).
    * ``y`` rows: ``W_out diag(g_t) ∂o_t``: on ``h_{t-1}``, ``C_{t,s} exp(Δ_t A)_{is}`` per
      channel (``A_t``); on ``ξ_{t-1}``, ``(D + Δ_t (C_t · B_t)) ⊙ E_t`` (``A_t``) and
      ``Σ_s C_s ∂h_s + h_t ∂C/∂a E_t`` of the gate terms (``B_t``).
    * ``y_{t-1}`` does not feed the step: zero columns.

    The per-step Jacobian is structured: diagonal on ``h``, a nilpotent shift on ``ξ``; ``h``
    and ``y`` read ``ξ``, and nothing but ``h`` itself and ``y`` reads ``h``. It is block lower
    triangular in the order ``(ξ, h, y)``, so a transport product's ``h``-on-``h`` block is
    the product of the diagonals ``∏ exp(Δ_j A)`` (``traj.retention``), and a window entry
    feeds ``h`` directly only during the ``W`` steps it stays in the window. The dense
    ``(B, T, N, N)`` matrices built here are for small sizes.

    mambapy's ``step`` differs from its ``forward`` for ``d_conv = 1`` (its cache grows to one
    past input, which the step then reads); the cell computes ``forward``'s maths there.

    Args:
        input_size: ``m`` (mambapy's ``d_model`` for a ``MambaBlock``).
        hidden_size: ``n``, the output width (``d_model``).
        bias: biases on ``in_proj`` and ``out_proj`` (mambapy's ``bias``, default off).
        d_state: ``S``, states per inner channel.
        expand: ``d = expand · n`` inner channels (mambapy's ``expand_factor``).
        d_conv: ``K``, the convolution's width (``K - 1`` past inputs in the window).
        dt_rank: the rank of ``Δ``'s projection, or ``"auto"`` for ``ceil(n / 16)``.
        conv_bias: a bias on the convolution (mambapy's ``conv_bias``, default on).
        dt_min, dt_max, dt_init, dt_scale, dt_init_floor: mambapy's initialisation of
            ``dt_proj`` (``Δ`` at initialisation log-uniform in ``[dt_min, dt_max]``).
    """

    description = ("Mamba (mambapy MambaBlock.step): conv window + selective SSM "
                   "h = exp(ΔA) h + Δ B x; retention exp(ΔA), gate Δ")
    #: Whether the cell has a learned, data-dependent update gate (docs/maths.md#cells).
    gated: ClassVar[bool] = True
    gate_kind = "step size"

    def __init__(self, input_size: int, hidden_size: int, bias: bool = False,
                 d_state: int = 16, expand: int = 2, d_conv: int = 4,
                 dt_rank: int | str = "auto", conv_bias: bool = True, dt_min: float = 0.001,
                 dt_max: float = 0.1, dt_init: str = "random", dt_scale: float = 1.0,
                 dt_init_floor: float = 1e-4) -> None:
        super().__init__(input_size, hidden_size)
        for name, value in (("bias", bias), ("conv_bias", conv_bias)):
            if not isinstance(value, bool):
                raise TypeError(f"{name} must be True or False, got {value!r}")
        if dt_init not in DT_INITS:
            raise ValueError(f"dt_init must be one of {DT_INITS}, got {dt_init!r}")
        if not (isinstance(dt_min, int | float) and isinstance(dt_max, int | float)
                and 0 < dt_min <= dt_max):
            raise ValueError(f"dt_min and dt_max must satisfy 0 < dt_min <= dt_max, got "
                             f"dt_min={dt_min!r}, dt_max={dt_max!r}")
        self.d_state = _positive_size("d_state", d_state)
        self.expand = _positive_size("expand", expand)
        self.d_conv = _positive_size("d_conv", d_conv)
        self.d_inner = self.expand * self.hidden_size
        if dt_rank == "auto":
            dt_rank = math.ceil(self.hidden_size / 16)
        elif isinstance(dt_rank, str):
            raise ValueError(f"dt_rank must be 'auto' or an int >= 1, got {dt_rank!r}")
        self.dt_rank = _positive_size("dt_rank", dt_rank)
        d, S, R, K = self.d_inner, self.d_state, self.dt_rank, self.d_conv
        self.in_proj = nn.Linear(self.input_size, 2 * d, bias=bias)
        self.conv1d = nn.Conv1d(d, d, kernel_size=K, bias=conv_bias, groups=d, padding=K - 1)
        self.x_proj = nn.Linear(d, R + 2 * S, bias=False)
        self.dt_proj = nn.Linear(R, d, bias=True)
        std = R**-0.5 * dt_scale
        with torch.no_grad():
            if dt_init == "constant":
                self.dt_proj.weight.fill_(std)
            else:
                self.dt_proj.weight.uniform_(-std, std)
            dt = torch.exp(torch.rand(d) * (math.log(dt_max) - math.log(dt_min))
                           + math.log(dt_min)).clamp(min=dt_init_floor)
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus⁻¹(dt)
        self.A_log = nn.Parameter(torch.log(torch.arange(
            1, S + 1, dtype=self.dt_proj.weight.dtype)).repeat(d, 1))
        self.D = nn.Parameter(torch.ones(d))
        self.out_proj = nn.Linear(d, self.hidden_size, bias=bias)

    def extra_repr(self) -> str:
        return (f"d_inner={self.d_inner}, d_state={self.d_state}, d_conv={self.d_conv}, "
                f"dt_rank={self.dt_rank}")

    @property
    def window_size(self) -> int:
        """``d W``, the entries of the convolution window ``ξ``."""
        return self.d_inner * (self.d_conv - 1)

    @property
    def state_size(self) -> int:
        return self.hidden_size + self.window_size + self.retention_size

    @property
    def retention_size(self) -> int:
        """``exp(Δ A)`` acts on the SSM state ``h``, the last ``d S`` entries."""
        return self.d_inner * self.d_state

    def split_state(self, state: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(y, ξ, h)`` of a state ``(..., N)``: ``(..., n)``, ``(..., d, W)``,
        ``(..., d, S)`` (mambapy's ``inputs`` and ``h``)."""
        n, dW = self.hidden_size, self.window_size
        return (state[..., :n], state[..., n:n + dW].unflatten(-1, (self.d_inner, -1)),
                state[..., n + dW:].unflatten(-1, (self.d_inner, self.d_state)))

    def join_state(self, y: Tensor, window: Tensor, h: Tensor) -> Tensor:
        """Inverse of :meth:`split_state`: ``(..., N)``."""
        return torch.cat([y, window.flatten(-2), h.flatten(-2)], -1)

    def decay_rates(self) -> Tensor:
        """``A = -exp(A_log)``: ``(d, S)``."""
        return -torch.exp(self.A_log)

    def compute(self, h, u, held=None):
        _, window, ssm = self.split_state(h)
        S, W = self.d_state, self.d_conv - 1
        x, z = self.in_proj(u).chunk(2, -1)
        taps = self.conv1d.weight[:, 0]                                  # (d, K)
        c = (window * taps[:, :W]).sum(-1) + taps[:, W] * x
        if self.conv1d.bias is not None:
            c = c + self.conv1d.bias
        a = F.silu(c)
        low, Bv, Cv = self.x_proj(a).split([self.dt_rank, S, S], -1)
        pre = self.dt_proj(low)
        delta = F.softplus(pre)
        if held is not None:
            delta, Bv, Cv = held
        decay = torch.exp(delta.unsqueeze(-1) * self.decay_rates())     # (..., d, S)
        ssm = decay * ssm + (delta * a).unsqueeze(-1) * Bv.unsqueeze(-2)
        inner = (ssm * Cv.unsqueeze(-2)).sum(-1) + self.D * a
        gate_z = F.silu(z)
        y = self.out_proj(inner * gate_z)
        window = torch.cat([window, x.unsqueeze(-1)], -1)[..., 1:]  # empty for d_conv = 1
        return {"state": self.join_state(y, window, ssm), "held": (delta, Bv, Cv),
                "gate": delta, "retention": decay.flatten(-2),
                "activation": a, "activation_slope": silu_slope(c),
                "delta_slope": torch.where(pre > SOFTPLUS_THRESHOLD, torch.ones_like(pre),
                                           torch.sigmoid(pre)),
                "B": Bv, "C": Cv, "ssm_output": inner, "z_gate": gate_z,
                "z_slope": silu_slope(z)}

    def _through_activation(self, traj: Trajectory, Ea: Tensor
                            ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The rows of ``∂h_t/∂X`` and ``∂o_t/∂X`` from ``Ea = ∂a_t/∂X`` (``(B, T, d, k)``):
        ``(h_held (B, T, d S, k), o_held (B, T, d, k), h_gates, o_gates)``, the parts with
        ``Δ_t, B_t, C_t`` held and the parts through them (see the class docstring)."""
        S = self.d_state
        delta, Bv, Cv, a = (traj.gates, traj.cache["B"], traj.cache["C"],
                            traj.cache["activation"])
        decay = traj.retention.unflatten(-1, (self.d_inner, S))
        previous = self.split_state(traj.previous_states)[2]
        current = self.split_state(traj.states[:, 1:])[2]
        h_held = (delta.unsqueeze(-1) * Bv.unsqueeze(-2)).unsqueeze(-1) * Ea.unsqueeze(-2)
        o_held = (self.D + delta * (Bv * Cv).sum(-1, keepdim=True)).unsqueeze(-1) * Ea
        W_low, W_B, W_C = self.x_proj.weight.split([self.dt_rank, S, S], 0)
        d_delta = traj.cache["delta_slope"].unsqueeze(-1) * (self.dt_proj.weight @ W_low @ Ea)
        q = self.decay_rates() * decay * previous + a.unsqueeze(-1) * Bv.unsqueeze(-2)
        h_gates = (q.unsqueeze(-1) * d_delta.unsqueeze(-2)
                   + (delta * a)[..., None, None] * (W_B @ Ea).unsqueeze(-3))
        o_gates = (torch.einsum("bts,btisk->btik", Cv, h_gates) + current @ (W_C @ Ea))
        return h_held.flatten(-3, -2), o_held, h_gates.flatten(-3, -2), o_gates

    def _window_activation(self, traj: Trajectory) -> Tensor:
        """``E_t = ∂a_t/∂ξ_{t-1}``: ``(B, T, d, d W)``, block rows ``silu'(c_t) w_{:,k}``."""
        W = self.d_conv - 1
        taps = self.conv1d.weight[:, 0, :W]
        return block_rows(traj.cache["activation_slope"].unsqueeze(-1) * taps)

    def _rows(self, traj: Trajectory, h_window: Tensor, o_window: Tensor, held: bool
              ) -> Tensor:
        """The full ``(B, T, N, N)`` matrix from its blocks on the window columns, adding the
        blocks of ``A_t`` that no gate enters (the shift, ``diag(exp(Δ A))`` and its output
        rows) when ``held``."""
        Bsz, T = traj.batch_size, traj.seq_len
        n, dW, dS = self.hidden_size, self.window_size, self.retention_size
        r = traj.retention
        if held:
            h_ssm = eye_like(r)
            o_ssm = block_rows(traj.cache["C"].unsqueeze(-2)
                               * r.unflatten(-1, (self.d_inner, self.d_state)))
            k = torch.arange(self.d_conv - 1, device=r.device)
            shift = (k.unsqueeze(-1) + 1 == k).to(r.dtype)  # ξ_{t,k} = ξ_{t-1,k+1}
            w_window = torch.kron(torch.eye(self.d_inner, dtype=r.dtype, device=r.device),
                                  shift).expand(Bsz, T, dW, dW)
        else:
            h_ssm = r.new_zeros(Bsz, T, dS, dS)
            o_ssm = r.new_zeros(Bsz, T, self.d_inner, dS)
            w_window = r.new_zeros(Bsz, T, dW, dW)
        o_rows = torch.cat([o_window, o_ssm], -1)
        y_rows = self.out_proj.weight @ (traj.cache["z_gate"].unsqueeze(-1) * o_rows)
        inner = torch.cat([
            y_rows,
            torch.cat([w_window, w_window.new_zeros(Bsz, T, dW, dS)], -1),
            torch.cat([h_window, h_ssm], -1)], -2)
        return torch.cat([inner.new_zeros(Bsz, T, n + dW + dS, n), inner], -1)

    def retention_structure(self, traj: Trajectory) -> JacobianStructure:
        """``diag(exp(Δ_t A))``: the ``h``-on-``h`` block of every transport product is the
        product of the steps' diagonals, since nothing but ``h`` itself feeds ``h`` (the
        class docstring; docs/maths.md#retention-structure)."""
        return JacobianStructure(traj.retention)

    def retention_from_inputs(self, u: Tensor) -> Tensor:
        """``exp(Δ_t A)`` of every step from the inputs alone, without the SSM scan: ``Δ_t``
        reads only the causal convolution of the inputs (zero window at the start, as in an
        unroll from the zero state).

        Args:
            u: ``(B, T, m)``.

        Returns:
            ``(B, T, d S)``, equal to ``self.unroll(u).retention``.
        """
        x = self.in_proj(u)[..., :self.d_inner]
        c = self.conv1d(x.transpose(1, 2))[..., :u.shape[1]].transpose(1, 2)
        low = self.x_proj(F.silu(c))[..., :self.dt_rank]
        delta = F.softplus(self.dt_proj(low))
        return torch.exp(delta.unsqueeze(-1) * self.decay_rates()).flatten(-2)

    def analytic_jacobian_split(self, traj):
        """``(A_t, B_t)`` (see the class docstring): each ``(B, T, N, N)``."""
        h_held, o_held, h_gates, o_gates = self._through_activation(
            traj, self._window_activation(traj))
        return (self._rows(traj, h_held, o_held, held=True),
                self._rows(traj, h_gates, o_gates, held=False))

    def analytic_input_jacobian(self, traj):
        """``∂state_t/∂u_t``: through ``a_t`` (``∂a/∂u = diag(silu'(c) w_{:,W}) W_x``) on
        ``h`` and ``o``, plus ``diag(o_t ⊙ silu'(z_t)) W_z`` on ``o``; ``W_x`` on the newest
        window entries. ``(B, T, N, m)``."""
        d, W = self.d_inner, self.d_conv - 1
        W_x, W_z = self.in_proj.weight.split(d, 0)
        newest = self.conv1d.weight[:, 0, W]
        Ea = (traj.cache["activation_slope"] * newest).unsqueeze(-1) * W_x
        h_held, o_held, h_gates, o_gates = self._through_activation(traj, Ea)
        o_rows = (traj.cache["z_gate"].unsqueeze(-1) * (o_held + o_gates)
                  + (traj.cache["ssm_output"] * traj.cache["z_slope"]).unsqueeze(-1) * W_z)
        newest_entry = (torch.arange(W, device=W_x.device) == W - 1).to(W_x.dtype)
        window = (newest_entry[:, None] * W_x.unsqueeze(1)).flatten(0, 1)  # (d W, m)
        return torch.cat([self.out_proj.weight @ o_rows,
                          window.expand(*Ea.shape[:2], *window.shape),
                          h_held + h_gates], -2)
