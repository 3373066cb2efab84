"""The matched statistic ``ψ_t(ℓ)`` of the learnability-window follow-up (arXiv 2512.05790;
docs/matched-statistic.md).

One value per (sequence, end time ``t``, lag ``ℓ``), summed over the ``n`` retention neurons
``q`` (the last ``n`` state entries, those the effective rates ``μ`` are about)::

    ψ_t(ℓ) = Σ_q μ_t^{(q)}(ℓ) · δ_t^{(q)} · v_{t-ℓ}^{(q)}

* ``μ_t(ℓ)``: the first-order effective learning rates over the **matched** window
  ``j = t-ℓ+1..t`` (:func:`~gatescope.effective_learning_rates`, index ``t`` as there);
* ``δ_t = ∂L_b/∂h_t``: the output error at step ``t`` projected back through the readout
  (:func:`~gatescope.measures.anisotropy.state_gradients`: the loss term's direct gradient,
  the recurrence not differentiated, scaled per example);
* ``v_s = (∂h_s/∂θ)[w]``: how the state at ``s`` moves along one fixed random unit direction
  ``w`` of the cell's parameters, the tangent of one forward-mode pass through the whole
  unroll (the same ``w`` for every lag).

Why ``δ_t`` is the direct gradient and not the BPTT adjoint ``λ_t = Σ_{t'≥t} δ_{t'} M_{t',t}``:
``ψ`` is one term of the lag decomposition ``∇L = Σ_ℓ Σ_t δ_t M_{t,t-ℓ} ∂⁺h_{t-ℓ}/∂θ``
(docs/maths.md#lag-resolved-bptt) with the transport ``M_{t,t-ℓ}`` replaced by its first-order
diagonal ``μ_t(ℓ)``. The transport from ``t`` back to ``t-ℓ`` is already carried by ``μ``; the
adjoint would carry every later step's error back to ``t`` as well, counting each lag's
transport twice and mixing lags. The follow-up defines ``δ_t`` as the output error.

``ψ`` pairs ``δ`` on the retention entries with ``μ`` there; where the readout does not read
those entries its direct ``δ`` is zero and so is ``ψ``, identically: an LSTM (the readout
reads ``h`` of ``[h; c]``, the retention ``f`` acts on ``c``) and the diagonal cells with an
output projection (``y = W s`` read, ``s`` retained). :func:`readout_reads_retention` says
which cells these are.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.autograd import forward_ad
from torch.func import functional_call

from ..cells.base import RecurrentCell, Trajectory
from ..memory import check_dense, describe, tensor_bytes
from ..model import SequenceModel
from ._integers import integer_lags
from .anisotropy import state_gradients
from .rates import _needs_jacobians, auto_chunk_size, check_chunk_size, chunk_bytes, rate_windows


class _Unrolled(nn.Module):
    """``u ↦ cell.unroll(u, lengths=lengths)`` as a module, so that ``functional_call`` can
    run the whole unroll on substituted parameters (names ``cell.<name>``)."""

    def __init__(self, cell: RecurrentCell) -> None:
        super().__init__()
        self.cell = cell

    def forward(self, u: Tensor, lengths: Tensor | None) -> Trajectory:
        return self.cell.unroll(u, lengths=lengths)


def parameter_direction(cell: RecurrentCell, generator: torch.Generator) -> dict[str, Tensor]:
    """A random unit direction ``w`` in the space of the cell's trainable parameters.

    Every entry is a standard normal draw from ``generator`` (float64, complex128 for a
    complex parameter), in ``cell.named_parameters()`` order; the whole vector is then
    divided by its Euclidean norm over all parameters together, so ``Σ_k ‖w_k‖² = 1``.

    Returns:
        ``{name: (shape of the parameter)}`` in the parameters' dtype and device.

    Raises:
        TypeError: when ``generator`` is not a ``torch.Generator``.
        ValueError: when the cell has no trainable parameter.
    """
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator (e.g. "
                        f"torch.Generator().manual_seed(0)), got {type(generator).__name__}")
    params = {k: p for k, p in cell.named_parameters() if p.requires_grad}
    if not params:
        raise ValueError(f"the {type(cell).__name__} has no trainable parameter to draw a "
                         "direction in")
    draws = {k: torch.randn(p.shape, generator=generator, device=generator.device,
                            dtype=torch.complex128 if p.is_complex() else torch.float64)
             for k, p in params.items()}
    norm = math.sqrt(sum(float(d.abs().square().sum()) for d in draws.values()))
    return {k: (draws[k] / norm).to(dtype=p.dtype, device=p.device) for k, p in params.items()}


def unroll_tangent(cell: RecurrentCell, u: Tensor, direction: dict[str, Tensor],
                   lengths: Tensor | None = None) -> tuple[Trajectory, Tensor]:
    """The trajectory and ``v_s = (∂h_s/∂θ)[w]`` from one forward-mode pass of the unroll.

    The parameters named in ``direction`` enter as dual numbers with tangents ``w``
    (``torch.autograd.forward_ad``, what ``torch.func.jvp`` runs on), so every state carries
    its derivative along ``w`` through the whole recurrence; the others are held.

    Args:
        cell: the cell.
        u: ``(B, T, m)`` inputs.
        direction: ``{name: tangent}`` for some of ``cell.named_parameters()``
            (:func:`parameter_direction`).
        lengths: optional ``(B,)`` valid lengths (:meth:`~gatescope.RecurrentCell.unroll`).

    Returns:
        ``(traj, v)``: the detached trajectory, and ``v`` ``(B, T+1, N)`` with ``v[:, s]``
        the tangent of ``h_s`` (``v_0 = 0`` from ``h_0 = 0``).
    """
    params = {k: p.detach() for k, p in cell.named_parameters()}
    unknown = sorted(set(direction) - set(params))
    if unknown:
        raise ValueError(f"direction names parameters the cell does not have: {unknown}; "
                         f"its parameters: {sorted(params)}")
    with torch.no_grad(), forward_ad.dual_level():
        duals = {f"cell.{k}": forward_ad.make_dual(p, direction[k]) if k in direction else p
                 for k, p in params.items()}
        traj = functional_call(_Unrolled(cell), duals, (u, lengths))
        v = forward_ad.unpack_dual(traj.states).tangent
        traj = traj.detach()  # drops the tangents
    return traj, torch.zeros_like(traj.states) if v is None else v


def readout_reads_retention(model: SequenceModel) -> bool:
    """Whether the readout (state entries ``0..hidden_size-1``) reads any of the retention
    entries (the last ``retention_size``); where it does not, ``δ`` vanishes there and
    ``ψ ≡ 0`` (an LSTM, a diagonal cell with an output projection)."""
    cell = model.cell
    return cell.state_size - cell.retention_size < cell.hidden_size


def matched_statistic(model: SequenceModel, u: Tensor, y: Tensor, lags: Sequence[int],
                      generator: torch.Generator, mask: Tensor | None = None,
                      lengths: Tensor | None = None, chunk_size: int | None = None) -> Tensor:
    """The matched statistic ``ψ_t(ℓ) = Σ_q μ_t^{(q)}(ℓ) δ_t^{(q)} v_{t-ℓ}^{(q)}``.

    ``μ`` is streamed (:func:`~gatescope.measures.rates.rate_windows`): each chunk of
    examples and each lag's ``μ`` ``(c, times, n)`` is contracted with ``δ`` and ``v`` at
    once, so the ``(B, T+1, L, n)`` tensor is never held. Peak memory is ``ψ`` itself, the
    trajectory with ``δ`` and ``v`` (``(B, T+1, N)`` each), and one chunk's rate work.

    Args:
        model: a :class:`~gatescope.SequenceModel`; its cell is unrolled here (one
            forward-mode pass gives the trajectory and ``v``).
        u: ``(B, T, m)`` inputs.
        y: targets, as for :meth:`~gatescope.SequenceModel.loss`.
        lags: lags ``ℓ >= 0`` (ints), in the order wanted.
        generator: draws the direction ``w`` (:func:`parameter_direction`): the same seed
            gives the same ``w``, hence the same ``ψ``.
        mask: optional ``(B, T)`` step weights of the loss (readout ``"all"``).
        lengths: optional ``(B,)`` valid lengths: the state is held past them and ``ψ`` is
            NaN there (as ``μ``).
        chunk_size: examples per chunk of the rate pass; ``None`` picks the most whose work
            fits in half the dense budget (:func:`~gatescope.measures.rates.auto_chunk_size`).

    Returns:
        ``(B, T+1, L)`` float64: ``psi[b, t, i] = ψ_t(lags[i])`` of example ``b``
        (``t = 0..T``, tensor index = time); NaN where ``ℓ > t`` and at times past a
        sequence's length. Zero wherever ``δ_t = 0``: at ``t = 0``, at masked steps, at
        ``t < T`` for readout ``"last"``, and everywhere when the readout does not read the
        retention entries (:func:`readout_reads_retention`). Use :func:`loss_steps` to
        select the ``(b, t)`` that carry a loss term, :func:`oriented` for the sign.

    Raises:
        TypeError: for non-integer lags, or a ``generator`` that is not one.
        ValueError: for negative lags or a bad ``chunk_size``, before any compute.
        DenseBudgetExceeded: after the unroll and before the rate pass, when ``ψ`` and one
            chunk's work exceed :func:`gatescope.dense_budget`.
    """
    if not isinstance(model, SequenceModel):
        raise TypeError(f"model must be a gs.SequenceModel, got {type(model).__name__}")
    lags = integer_lags(lags)
    check_chunk_size(chunk_size)
    cell = model.cell
    direction = parameter_direction(cell, generator)
    B, T = u.shape[0], u.shape[1]
    shape = (B, T + 1, len(lags))
    traj, v = unroll_tangent(cell, u, direction, lengths)
    n, N = cell.retention_size, traj.states.shape[-1]
    with_jacobians = _needs_jacobians(cell, traj, None)
    chunk = (auto_chunk_size(traj, n, 1, with_jacobians) if chunk_size is None
             else min(chunk_size, B))
    check_dense(tensor_bytes(shape, 8) + chunk_bytes(traj, n, 1, with_jacobians, chunk),
                f"gs.matched_statistic: psi of {describe(shape, torch.float64)} (and {chunk} "
                "examples' rate work at once)", "pass chunk_size=, fewer lags or fewer examples")
    delta = state_gradients(model, traj.states, y, mask)[..., N - n:]
    v = v[..., N - n:]
    psi = torch.full(shape, math.nan, dtype=torch.float64, device=traj.states.device)
    for rows, lag, positions, times, mu in rate_windows(cell, traj, lags, 1, None, chunk):
        starts = slice(times.start - lag, times.stop - lag)
        terms = mu * delta[rows, times].double() * v[rows, starts].double()
        psi[rows, times, positions] = terms.sum(-1).unsqueeze(-1)
    return psi


def loss_steps(model: SequenceModel, batch_size: int, seq_len: int,
               mask: Tensor | None = None) -> Tensor:
    """``(B, T+1)`` bool: the ``(b, t)`` whose state ``h_t`` has a loss term, i.e. where
    ``δ_t`` can be nonzero: ``t = T`` for readout ``"last"``; ``t = 1..T`` with a nonzero
    ``mask`` weight for readout ``"all"``. The samples of ``ψ`` a summary should take."""
    steps = torch.zeros(batch_size, seq_len + 1, dtype=torch.bool)
    if model.readout_kind == "last":
        steps[:, -1] = True
    else:
        steps[:, 1:] = True if mask is None else mask.detach().cpu().ne(0)
    return steps


def oriented(psi: Tensor) -> Tensor:
    """``ψ`` with each lag's sign flipped so that its mean over ``(b, t)`` is positive.

    Args:
        psi: ``(B, T+1, L)`` from :func:`matched_statistic` (NaN entries are left out of the
            mean and stay NaN).

    Returns:
        The same shape: ``psi[..., i] · sign(mean_{b,t} psi[..., i])`` (a lag with mean
        exactly zero, or no value, is left as it is).
    """
    if psi.dim() != 3:
        raise ValueError(f"psi must be (B, T+1, L) from matched_statistic, got shape "
                         f"{tuple(psi.shape)}")
    mean = psi.nanmean((0, 1))
    return psi * torch.where(mean < 0, -1.0, 1.0).to(psi.dtype)
