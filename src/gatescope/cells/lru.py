"""The linear recurrent unit (Orvieto et al. 2023), step for step ``LRU_pytorch.LRU``, with its
complex state written as real 2×2 rotation blocks.

``λ = exp(-exp(ν) + i exp(θ_log))`` per channel (``ν = nu_log``), ``γ = exp(gamma_log)``,
``x_t = λ ⊙ x_{t-1} + γ ⊙ (B u_t)``, output ``y_t = Re(C x_t) + D u_t`` with complex
``B = B_re + i B_im`` (``(N_s, m)``) and ``C = C_re + i C_im`` (``(n, N_s)``).

State layout (docs/maths.md#lru): ``[y_t (n); Re x_1, Im x_1, Re x_2, Im x_2, …]``, the
complex channels **interleaved** after the output, so ``∂x_t/∂x_{t-1}`` is block diagonal with
one 2×2 block ``|λ_q| R(θ_q)`` per channel. ``N = n + 2 N_s``.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .base import RecurrentCell, _positive_size
from .diagonal import output_rows, with_output_columns
from .registry import register_cell
from .structure import JacobianStructure


def interleave(re: Tensor, im: Tensor, dim: int = -1) -> Tensor:
    """``[re_1, im_1, re_2, im_2, …]`` along ``dim`` (``re``, ``im`` of the same shape)."""
    return torch.stack([re, im], dim=dim if dim < 0 else dim + 1).flatten(
        dim - 1 if dim < 0 else dim, dim if dim < 0 else dim + 1)


def rotation_blocks(re: Tensor, im: Tensor) -> Tensor:
    """The block-diagonal real matrix of ``diag(re + i im)`` in the interleaved layout:
    ``(..., N_s), (..., N_s) -> (..., 2N_s, 2N_s)`` with blocks ``[[re, -im], [im, re]]``."""
    zero = torch.zeros_like(im)
    upper = interleave(-im, zero)[..., :-1]   # entries (2q, 2q+1)
    lower = interleave(im, zero)[..., :-1]    # entries (2q+1, 2q)
    diag = interleave(re, re)
    return (torch.diag_embed(diag) + torch.diag_embed(upper, offset=1)
            + torch.diag_embed(lower, offset=-1))


@register_cell("lru")
class LRUCell(RecurrentCell):
    """LRU: a constant complex diagonal recurrence; retention ``|λ_q|`` on both entries of
    channel ``q``; no learned data-dependent gate (``traj.gates`` is ``None``).

    Jacobian split: nothing in the step depends on the state but the linear term ``λ ⊙ x``,
    so ``B_t = 0`` and ``J_t = A_t``: ``blockdiag(|λ_q| R(θ_q))`` on ``x``, ``C̃`` times that
    on the output rows (``C̃`` the real ``(n, 2N_s)`` map of ``Re(C x)``: columns
    ``C_re[:, q], -C_im[:, q]``), zero columns for ``y_{t-1}``.

    Args:
        input_size: ``m`` (the reference's ``in_features``).
        hidden_size: ``n`` (``out_features``), the output width.
        bias: a bias on the output's ``D u_t`` term (not in the reference; default off).
        state_features: ``N_s``, the number of complex channels (default ``n``).
        r_min, r_max, max_phase: the reference's initialisation ranges of ``|λ|`` and ``θ``.
    """

    description = "LRU (LRU_pytorch): complex diagonal x = λ x + γ B u, y = Re(C x) + D u"
    #: Whether the cell has a learned, data-dependent update gate (docs/maths.md#cells).
    gated: ClassVar[bool] = False

    def __init__(self, input_size: int, hidden_size: int, bias: bool = False,
                 state_features: int | None = None, r_min: float = 0.0, r_max: float = 1.0,
                 max_phase: float = 6.283) -> None:
        super().__init__(input_size, hidden_size)
        if not 0 <= r_min < r_max <= 1:
            raise ValueError(f"r_min and r_max must satisfy 0 <= r_min < r_max <= 1, got "
                             f"r_min={r_min}, r_max={r_max}")
        if not max_phase > 0:
            raise ValueError(f"max_phase must be > 0, got {max_phase}")
        self.state_features = (self.hidden_size if state_features is None
                               else _positive_size("state_features", state_features))
        m, n, k = self.input_size, self.hidden_size, self.state_features
        self.D = nn.Parameter(torch.randn(n, m) / math.sqrt(m))
        u1, u2 = torch.rand(k), torch.rand(k)
        self.nu_log = nn.Parameter(torch.log(-0.5 * torch.log(
            u1 * (r_max + r_min) * (r_max - r_min) + r_min**2)))
        self.theta_log = nn.Parameter(torch.log(max_phase * u2))
        modulus = torch.exp(-torch.exp(self.nu_log.detach()))
        self.gamma_log = nn.Parameter(torch.log(torch.sqrt(1 - modulus**2)))
        self.B_re = nn.Parameter(torch.randn(k, m) / math.sqrt(2 * m))
        self.B_im = nn.Parameter(torch.randn(k, m) / math.sqrt(2 * m))
        self.C_re = nn.Parameter(torch.randn(n, k) / math.sqrt(k))
        self.C_im = nn.Parameter(torch.randn(n, k) / math.sqrt(k))
        self.bias = nn.Parameter(torch.zeros(n)) if bias else None

    def extra_repr(self) -> str:
        return f"state_features={self.state_features}"

    @property
    def state_size(self) -> int:
        return self.hidden_size + 2 * self.state_features

    @property
    def retention_size(self) -> int:
        """``|λ|`` acts on the ``2 N_s`` interleaved entries of ``x``, the last ones."""
        return 2 * self.state_features

    def eigenvalues(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(Re λ, Im λ, |λ|)``, each ``(N_s,)``."""
        modulus = torch.exp(-torch.exp(self.nu_log))
        theta = torch.exp(self.theta_log)
        return modulus * torch.cos(theta), modulus * torch.sin(theta), modulus

    def output_map(self) -> Tensor:
        """``C̃``, the real ``(n, 2N_s)`` map with ``Re(C x) = C̃ x`` in the interleaved layout."""
        return interleave(self.C_re, -self.C_im)

    def input_map(self) -> Tensor:
        """``∂x_t/∂u_t = γ ⊙ B`` in the interleaved layout: ``(2N_s, m)``."""
        gamma = torch.exp(self.gamma_log).unsqueeze(-1)
        return interleave(gamma * self.B_re, gamma * self.B_im, dim=0)

    def compute(self, h, u, held=None):
        n = self.hidden_size
        x = h[..., n:].unflatten(-1, (self.state_features, 2))
        re, im, modulus = self.eigenvalues()
        gamma = torch.exp(self.gamma_log)
        drive_re, drive_im = gamma * F.linear(u, self.B_re), gamma * F.linear(u, self.B_im)
        new_re = re * x[..., 0] - im * x[..., 1] + drive_re
        new_im = im * x[..., 0] + re * x[..., 1] + drive_im
        y = F.linear(new_re, self.C_re) - F.linear(new_im, self.C_im) + F.linear(
            u, self.D, self.bias)
        retention = interleave(modulus, modulus).expand(*u.shape[:-1], self.retention_size)
        return {"state": torch.cat([y, interleave(new_re, new_im)], -1), "held": (),
                "gate": None, "retention": retention}

    def analytic_jacobian(self, traj):
        """``J_t`` (the same at every step; see the class docstring): ``(B, T, N, N)``."""
        re, im, _ = self.eigenvalues()
        inner = output_rows(rotation_blocks(re, im), self.output_map())
        J = with_output_columns(inner, self.hidden_size)
        return J.expand(traj.batch_size, traj.seq_len, *J.shape).clone()

    def jacobian_structure(self, traj):
        """The rotation blocks ``|λ_q| R(θ_q)``, ``θ_q = exp(θ_log_q)``, with the output map
        ``C̃`` (:meth:`output_map`): the
        :class:`~gatescope.cells.structure.JacobianStructure` of :meth:`analytic_jacobian`."""
        shape = (traj.batch_size, traj.seq_len, self.state_features)
        modulus = torch.exp(-torch.exp(self.nu_log))
        return JacobianStructure(modulus.expand(shape), torch.exp(self.theta_log).expand(shape),
                                 self.output_map())

    def analytic_jacobian_split(self, traj):
        """``(A, B) = (J, 0)`` (see the class docstring)."""
        J = self.analytic_jacobian(traj)
        return J, torch.zeros_like(J)

    def analytic_input_jacobian(self, traj):
        """``∂[y; x]/∂u = [C̃ γ B̃ + D; γ B̃]``: ``(B, T, N, m)``."""
        E = output_rows(self.input_map(), self.output_map(), self.D)
        return E.expand(traj.batch_size, traj.seq_len, *E.shape).clone()
