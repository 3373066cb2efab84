"""The computations of :func:`gatescope.inspect`, each streaming in time (memory O(B·T·N),
no ``(B, T, N, N)`` stack and no all-pairs ``(B, T, T)`` table).

* :func:`instantaneous_time_scales` — ``τ_{b,t,q} = -1/log r_{b,t,q}`` for every neuron and
  step (docs/maths.md; ``τ = 0`` for ``r = 0``, ``∞`` for ``r = 1``).
* :func:`retained_diagonal_chunked` — ``diag(J_t)`` on the retained entries: entry by entry
  for the LSTM, GRU and plain cells, else from the analytic Jacobians a few steps at a
  time, so at most ``budget`` bytes of ``J`` exist.
* :func:`end_time_rates` — first-order effective rates ``μ_{t,ℓ,q}`` at sampled end times
  ``t`` and every lag, by the dual-number recursion of :mod:`gatescope.measures.rates`
  extended one step to the left per lag; gives the envelope ``f(ℓ)`` averaged over the
  sampled end times and the full ``μ`` at a few lags.
* :func:`structured_end_time_rates`, :func:`structured_transport_norms` — the same rates
  and the transport norms ``‖M_{t,t-ℓ}‖_2`` of a cell that declares its
  :meth:`~gatescope.RecurrentCell.jacobian_structure` (diagonal or 2×2 rotation blocks),
  exactly from the cumulative log-sums of :mod:`gatescope.dynamics.structured`
  (docs/maths.md#structured-jacobians): no ``diag(J)`` and no Lanczos over step products.
* :func:`output_lookback` — ``‖∂h_T/∂u_t‖_F²`` for every ``t`` by one backward sweep of
  per-step VJPs, batched over output directions: all ``n`` basis directions (exact) or
  ``k`` Gaussian directions (Hutchinson's estimate ``E_v ‖vᵀG‖² = ‖G‖_F²``, unbiased).
* :func:`saturation_fractions`, :func:`fit_decay`, :func:`memory_horizon`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from ..cells.base import RecurrentCell, Trajectory
from ..cells.gru import GRUCell
from ..cells.lstm import LSTMCell
from ..cells.plain import PlainCell
from ..cells.structure import JacobianStructure
from ..dynamics.matrix_free import _check_times, _int_list
from ..dynamics.structured import CHUNK_ELEMENTS, CumulativeLogs, start_sensitivities
from ..measures._quantile import quantile
from ..measures.rates import neuron_retention, retained_diagonal

#: Gate values within this distance of 0 or 1 (sigmoid) or of ±1 (tanh) count as saturated.
SATURATION_EPS = 0.05
#: Cache entries holding sigmoid gates / tanh outputs, by cell (names of the cells' caches).
SIGMOID_CACHE = {"reset": "reset gate r", "output_gate": "output gate o"}
TANH_CACHE = {"candidate": "candidate (tanh)", "phi": "state tanh(a)",
              "tanh_cell": "tanh(c)"}
#: The decay classes :func:`fit_decay` chooses between, and the R² below which neither fits.
DECAY_CLASSES = ("exponential", "power law")
DECAY_MIN_R2 = 0.9
#: Default memory-horizon threshold: the lookback has fallen below 1% of its peak.
HORIZON_THRESHOLD = 0.01

Progress = Callable[[int], object]


def no_progress(_: int) -> None:
    return None


def instantaneous_time_scales(cell: RecurrentCell, traj: Trajectory) -> Tensor:
    """``τ = -1/log r`` per example, step and neuron: ``(B, T, n)`` float64
    (``0`` where ``r = 0``, ``inf`` where ``r >= 1``)."""
    return tau_of(neuron_retention(cell, traj))


def tau_of(r: Tensor) -> Tensor:
    """``τ = -1/log r`` elementwise (``0`` at ``r = 0``, ``inf`` for ``r >= 1``)."""
    return torch.where(r >= 1, torch.inf, -1.0 / torch.log(r))


def _lstm_diagonal(cell: LSTMCell, traj: Trajectory) -> Tensor:
    """The LSTM's ``c``–``c`` block is exactly ``diag(f)`` (the gates see ``c`` only
    through ``h``; see :mod:`gatescope.cells.lstm`)."""
    return traj.retention


def _gru_diagonal(cell: GRUCell, traj: Trajectory) -> Tensor:
    """``diag(A + B)`` of :class:`~gatescope.cells.gru.GRUCell`'s split, entry by entry:
    ``diag(diag(v) W) = v ⊙ diag(W)``."""
    z, r = traj.retention, traj.cache["reset"]
    c, hn, h = traj.cache["candidate"], traj.cache["hn"], traj.previous_states
    through_c = (1 - z) * (1 - c**2)
    w = [cell.recurrent_block(k).diagonal() for k in range(3)]
    return (z + through_c * r * w[2] + through_c * hn * r * (1 - r) * w[0]
            + (h - c) * z * (1 - z) * w[1])


def _plain_diagonal(cell: PlainCell, traj: Trajectory) -> Tensor:
    """``diag(D_t W_r) = (1 - φ²) ⊙ diag(W_r)``."""
    return (1 - traj.cache["phi"] ** 2) * cell.recurrent.weight.diagonal()


#: ``diag(J)`` on the retained entries in O(n) per step, for cells whose Jacobian is known
#: entry by entry; other cells build ``J`` a few steps at a time.
DIAGONALS = {LSTMCell: _lstm_diagonal, GRUCell: _gru_diagonal, PlainCell: _plain_diagonal}


def retained_diagonal_chunked(cell: RecurrentCell, traj: Trajectory,
                              budget: int = 2**27, progress: Progress = no_progress
                              ) -> Tensor:
    """``diag(J_t)`` on the retained entries (see :func:`gatescope.measures.rates.
    retained_diagonal`), ``(B, T, n)`` float64.

    Cells in :data:`DIAGONALS` (exactly these classes, not subclasses, which may change the
    step) compute it entry by entry; any other builds the analytic Jacobians with at most
    about ``budget`` bytes alive at once (the split ``A``, ``B`` and their sum, hence the
    factor 3).
    """
    shortcut = DIAGONALS.get(type(cell))
    if shortcut is not None:
        with torch.no_grad():
            diagonal = shortcut(cell, traj.detach()).double()
        progress(traj.seq_len)
        return diagonal
    B, T, N = traj.batch_size, traj.seq_len, cell.state_size
    per_step = 3 * B * N * N * traj.states.element_size()
    chunk = max(1, budget // per_step)
    parts = []
    for start in range(0, T, chunk):
        stop = min(T, start + chunk)
        parts.append(retained_diagonal(cell, traj.steps(start, stop)))
        progress(stop - start)
    return torch.cat(parts, dim=1)


def end_time_rates(r: Tensor, d: Tensor, ends: Sequence[int], keep_lags: Sequence[int],
                   progress: Progress = no_progress, lengths: Tensor | None = None
                   ) -> tuple[Tensor, Tensor]:
    """First-order rates ``μ = μ⁰ + μ¹`` at the end times ``ends`` for every lag.

    Args:
        r: ``(B, T, n)`` retention, step ``j`` at index ``j - 1``.
        d: ``(B, T, n)`` ``diag(J) - r`` on the retained entries.
        ends: end times ``t`` in ``1..T``.
        keep_lags: lags in ``1..T`` at which the whole ``μ`` is returned.
        lengths: ``(B,)`` valid lengths: an end time past a sequence's length is left out
            for that sequence (NaN in ``kept``).

    Returns:
        ``envelope`` ``(T,)``: ``f(ℓ) = mean over (b, t ∈ ends with t ≥ ℓ, q) |μ_{t,ℓ,q}|``
        for ``ℓ = 1..T`` (index ``ℓ - 1``), and ``kept`` ``(B, S, L, n)``: ``μ_{t,ℓ,q}`` at
        ``keep_lags``, NaN where ``ℓ > t``. float64.
    """
    r, d = r.double(), d.double()
    B, T, n = r.shape
    e = torch.as_tensor(list(ends), dtype=torch.long, device=r.device)
    keep = {lag: i for i, lag in enumerate(keep_lags)}
    p = r.new_ones(B, len(e), n)
    s = r.new_zeros(B, len(e), n)
    envelope = r.new_full((T,), math.nan)
    kept = r.new_full((B, len(e), len(keep), n), math.nan)
    inside = (torch.ones(B, len(e), dtype=torch.bool, device=r.device) if lengths is None
              else e.unsqueeze(0) <= lengths.to(r.device).unsqueeze(-1))  # (B, S)
    for lag in range(1, T + 1):
        valid = e >= lag                    # window t-ℓ+1..t needs step t-ℓ+1 >= 1
        idx = (e - lag).clamp_min(0)        # step j = t-ℓ+1 is at index t-ℓ
        rj, dj = r[:, idx], d[:, idx]
        s = s * rj + p * dj
        p = p * rj
        mu = (p + s).masked_fill(~inside.unsqueeze(-1), math.nan)[:, valid]
        if (~mu.isnan()).any():
            envelope[lag - 1] = mu.abs().nanmean()
        if lag in keep:
            kept[:, valid, keep[lag]] = mu
        progress(1)
    return envelope, kept


def structured_end_time_rates(structure: JacobianStructure, ends: Sequence[int],
                               keep_lags: Sequence[int], progress: Progress = no_progress,
                               lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """:func:`end_time_rates` of a structured cell, from cumulative log-sums.

    With ``Λ_j = diag(m_j)`` or ``blockdiag(m_{j,q} R(θ_{j,q}))``, ``L_t = Σ_{j≤t} log m_j``
    and ``D_t = Σ_{j≤t} (cos θ_j - 1)`` (:class:`~gatescope.dynamics.structured.
    CumulativeLogs`), the first-order rate of the window ``(t-ℓ, t]`` is, per channel,

        μ_{t,ℓ,q} = exp(L_{t,q} - L_{t-ℓ,q}) · (1 + D_{t,q} - D_{t-ℓ,q})

    (``1 + ...`` only for rotation blocks; a diagonal's ``diag(J) = m`` leaves ``μ¹ = 0``),
    the value of :meth:`~gatescope.dynamics.structured.CumulativeLogs.rates` at order 1,
    repeated over a block's two entries. All (end time, lag) windows of a chunk of lags are
    gathered at once: ``O(B·S·T·K)`` in all, chunks of
    :data:`~gatescope.dynamics.structured.CHUNK_ELEMENTS` values.

    Args:
        structure: from :func:`~gatescope.dynamics.structured.structure_of` (held past the
            lengths; its output map is not read).
        ends, keep_lags, progress, lengths: as for :func:`end_time_rates`.

    Returns:
        ``(envelope (T,), kept (B, S, L, n))`` as :func:`end_time_rates`, ``n = b·K``.
    """
    B, T, K = structure.modulus.shape
    device = structure.modulus.device
    logs = CumulativeLogs.of(JacobianStructure(structure.modulus, structure.angle))
    e = torch.as_tensor(list(ends), dtype=torch.long, device=device)
    keep = {lag: i for i, lag in enumerate(keep_lags)}
    envelope = torch.full((T,), math.nan, dtype=torch.float64, device=device)
    kept = torch.full((B, len(e), len(keep), structure.inner_size), math.nan,
                      dtype=torch.float64, device=device)
    inside = (torch.ones(B, len(e), dtype=torch.bool, device=device) if lengths is None
              else e.unsqueeze(0) <= lengths.to(device).unsqueeze(-1))  # (B, S)
    per_chunk = max(1, CHUNK_ELEMENTS // max(1, B * len(e) * K))
    for first in range(1, T + 1, per_chunk):
        lags = torch.arange(first, min(T, first + per_chunk - 1) + 1, device=device)
        starts = e.unsqueeze(1) - lags                                   # (S, Lc): k = t - ℓ
        mu = _window_rates(logs, e.unsqueeze(1), starts.clamp_min(0))   # (B, S, Lc, K)
        valid = (starts >= 0) & inside.unsqueeze(-1)                     # (B, S, Lc)
        total = mu.abs().sum(-1).masked_fill_(~valid, 0).sum((0, 1))    # (Lc,)
        count = valid.sum((0, 1))
        envelope[lags - 1] = torch.where(count > 0, total / (K * count.clamp_min(1)),
                                         math.nan)
        here = [(j, keep[lag]) for j, lag in enumerate(lags.tolist()) if lag in keep]
        if here:
            columns, slots = (list(c) for c in zip(*here, strict=True))
            chosen = mu[:, :, columns].masked_fill_(~valid[:, :, columns, None], math.nan)
            kept[:, :, slots] = chosen.repeat_interleave(structure.block, -1)
        progress(len(lags))
    return envelope, kept


def _window_rates(logs: CumulativeLogs, ends: Tensor, starts: Tensor) -> Tensor:
    """First-order ``μ`` per channel for the windows ``(starts, ends]`` (index tensors
    broadcastable to one shape ``W``): ``(B, *W, K)`` float64;
    :meth:`CumulativeLogs.first_order`'s factor ``1 + Σ (cos θ_j - 1)`` at gathered
    windows."""
    log_m, _ = logs.window(ends, starts)
    mu = log_m.exp_()
    if logs.cos_defect is not None:
        mu.mul_(1 + logs.cos_defect[:, ends] - logs.cos_defect[:, starts])
    return mu


def structured_transport_norms(structure: JacobianStructure, ends: Sequence[int],
                               lags: Sequence[int], rtol: float) -> Tensor:
    """``‖M_{t,t-ℓ}‖_2`` of a structured cell at the end times ``ends`` and the lags
    ``lags`` (the windows of :func:`gatescope.transport_norms`), exactly.

    The factors commute, so a window's product ``Φ(t, t-ℓ)`` is itself one structured step,
    of modulus ``exp(L_t - L_{t-ℓ})`` and angle ``Θ_t - Θ_{t-ℓ}``
    (:meth:`CumulativeLogs.window`), and ``M_{t,t-ℓ} = [[0, CΦ], [0, Φ]]`` (``ℓ ≥ 1``) is
    that step's transport: :func:`~gatescope.dynamics.structured.start_sensitivities` of
    the ``B·S·L`` one-step windows at start 0, lag 1 (``max_q |Φ_q|`` without output rows;
    with them Lanczos on the inner state to ``rtol``, at most to the Krylov space's
    exhaustion, where it is exact). ``M = I`` at ``ℓ = 0``.

    Args:
        structure: from :func:`~gatescope.dynamics.structured.structure_of` (held past the
            lengths).
        ends: ``(S,)`` end times ``t``, each ``≥ max(lags)`` and ``≤ T``.
        lags: ``(L,)`` lags ``ℓ ≥ 0``.
        rtol: the Lanczos tolerance with output rows.

    Returns:
        ``(B, S, L)`` float64.

    Raises:
        ValueError, TypeError: for lags or end times that are not ints in range, before
            any compute.
    """
    B, T, K = structure.modulus.shape
    lags = _int_list("lags", lags, f"0 <= lag <= T={T}")
    _check_times("lags", lags, 0, T, f"0 <= lag <= T={T}")
    allowed = f"max(lags)={max(lags)} <= t <= T={T}"
    ends = _int_list("ends", ends, allowed)
    _check_times("ends", ends, max(lags), T, allowed)
    device = structure.modulus.device
    logs = CumulativeLogs.of(JacobianStructure(structure.modulus, structure.angle))
    e = torch.as_tensor(list(ends), dtype=torch.long, device=device).unsqueeze(1)
    lag = torch.as_tensor(list(lags), dtype=torch.long, device=device)
    log_m, angle = logs.window(e.expand(-1, len(lag)), e - lag)           # (B, S, L, K)
    step = JacobianStructure(log_m.exp_().flatten(0, 2).unsqueeze(1),
                             None if angle is None else angle.flatten(0, 2).unsqueeze(1),
                             structure.output_map)
    norms = start_sensitivities(step, [0], rtol)[:, 0, 1].view(B, len(e), len(lag))
    return norms.masked_fill_(lag == 0, 1.0)


def aligned_at_ends(x: Tensor, lengths: Tensor) -> Tensor:
    """``(B, T)`` per-time values shifted so each sequence ends at index ``T - 1``: entry
    ``[b, T-1-ℓ]`` is ``x[b, len_b-1-ℓ]`` (NaN for ``ℓ ≥ len_b``)."""
    B, T = x.shape
    lag = torch.arange(T - 1, -1, -1, device=x.device)           # index i holds lag T-1-i
    source = lengths.view(-1, 1) - 1 - lag.view(1, -1)            # (B, T)
    taken = x.gather(1, source.clamp_min(0))
    return taken.masked_fill(source < 0, math.nan)


def output_lookback(cell: RecurrentCell, traj: Trajectory, probes: int | None = None,
                    generator: torch.Generator | None = None,
                    progress: Progress = no_progress) -> Tensor:
    """``‖∂h_T/∂u_t‖_F²`` per example and input time, by one backward VJP sweep.

    ``h_T`` is the readout part ``states[:, T, :n]``. The sweep carries ``k`` cotangents
    ``λ_t = vᵀ ∂h_T/∂h_t`` from ``t = T`` down to ``1`` (one VJP of the step per ``t``,
    batched over the ``k`` directions), reading ``vᵀ ∂h_T/∂u_t`` on the way.

    Args:
        probes: ``None`` for the exact value (the ``n`` basis directions, ``k = n``), or
            ``k`` Gaussian directions ``v ~ N(0, I_n)``: ``mean_v ‖vᵀG‖²``, an unbiased
            estimate of ``‖G‖_F²`` whose relative spread is about ``√(2/k)`` per example.
        generator: the generator of the Gaussian directions.

    Returns:
        ``(B, T)`` float64, input time ``t`` at index ``t - 1``.
    """
    B, T, N, n = traj.batch_size, traj.seq_len, cell.state_size, cell.hidden_size
    states, inputs = traj.states.detach(), traj.inputs.detach()
    if probes is None:
        v = torch.eye(n, dtype=states.dtype, device=states.device).unsqueeze(1).expand(n, B, n)
    else:
        v = torch.randn(probes, B, n, generator=generator, dtype=states.dtype,
                        device=generator.device if generator is not None else "cpu"
                        ).to(states.device)
    lam = torch.cat([v, v.new_zeros(v.shape[0], B, N - n)], dim=-1)   # (k, B, N)
    scale = 1.0 if probes is None else 1.0 / probes
    out = torch.empty(B, T, dtype=torch.float64, device=states.device)

    def step(h, u):
        return cell.compute(h, u)["state"]

    inside = traj.step_mask.to(states.device)  # past a length the state is held: J = I, no u
    for t in range(T - 1, -1, -1):
        _, vjp = torch.func.vjp(step, states[:, t], inputs[:, t])
        new, g_u = torch.func.vmap(vjp)(lam)
        keep = inside[:, t].view(1, B, 1)
        lam, g_u = torch.where(keep, new, lam), g_u * keep
        out[:, t] = g_u.double().pow(2).sum((0, 2)) * scale
        progress(1)
    return out


#: Levels of :func:`step_size_spectrum`.
STEP_SIZE_LEVELS = (0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99)


def saturation_sources(traj: Trajectory, gate_kind: str = "sigmoid"
                       ) -> dict[str, tuple[Tensor, str]]:
    """The gates :func:`saturation_fractions` looks at: ``{label: (values, kind)}``, kind
    ``"sigmoid"`` or ``"tanh"``; the retention of a cell without one (plain: ``r = 0``) is
    left out, and so are gates that are not sigmoid values (``gate_kind``, the cell's
    :attr:`~gatescope.RecurrentCell.gate_kind`: Mamba's step sizes ``Δ`` do not saturate
    at 1)."""
    sources = {}
    if traj.gates is not None and gate_kind == "sigmoid":
        sources["update gate g"] = (traj.gates, "sigmoid")
    if bool(traj.retention.ne(0).any()):
        sources["retention r"] = (traj.retention, "sigmoid")
    for key, label in SIGMOID_CACHE.items():
        if key in traj.cache:
            sources[label] = (traj.cache[key], "sigmoid")
    for key, label in TANH_CACHE.items():
        if key in traj.cache:
            sources[label] = (traj.cache[key], "tanh")
    return sources


def saturation_fractions(traj: Trajectory, eps: float = SATURATION_EPS,
                         gate_kind: str = "sigmoid") -> dict[str, dict]:
    """Fraction of (example, step, neuron) entries of each gate near its limits.

    Sigmoid gates (the update gate ``traj.gates``, the retention, and the cells' reset and
    output gates): ``low`` = fraction ``< eps``, ``high`` = fraction ``> 1 - eps``. tanh
    outputs (candidates, ``tanh(c)``): ``high`` = fraction with ``|x| > 1 - eps``.

    Returns:
        ``{label: {"low": float | None, "high": float, "kind": "sigmoid" | "tanh"}}`` over
        :func:`saturation_sources` (with ``gate_kind``).
    """
    out = {}
    inside = traj.step_mask
    for label, (x, kind) in saturation_sources(traj, gate_kind).items():
        x = x.detach().double()[inside.to(x.device)]  # (entries within the lengths, ...)
        if kind == "sigmoid":
            out[label] = {"kind": kind, "low": float((x < eps).double().mean()),
                          "high": float((x > 1 - eps).double().mean())}
        else:
            out[label] = {"kind": kind, "low": None,
                          "high": float((x.abs() > 1 - eps).double().mean())}
    return out


def step_size_spectrum(traj: Trajectory) -> dict:
    """Quantiles of Mamba's step sizes ``Δ_t`` (``traj.gates``, ``(B, T, d)``) over every
    (sequence, step, channel) entry within the lengths, and each channel's median over
    (sequence, step): a collapsed ``Δ`` (all small) freezes the state, since the retention
    is ``exp(Δ A)``.

    Returns:
        ``{"levels": [...], "quantiles": [...], "per_channel_median": [...]}``.
    """
    delta = traj.gates.detach().double()[traj.step_mask.to(traj.gates.device)]  # (entries, d)
    levels = torch.tensor(STEP_SIZE_LEVELS, dtype=torch.float64, device=delta.device)
    return {"levels": list(STEP_SIZE_LEVELS),
            "quantiles": quantile(delta.flatten(), levels).tolist(),
            "per_channel_median": quantile(delta, 0.5, dim=0).tolist()}


def log_lag_grid(T: int, count: int) -> list[int]:
    """About ``count`` distinct lags in ``1..T``, evenly spaced in ``log ℓ``."""
    return sorted({int(round(x)) for x in np.geomspace(1, T, num=max(2, count))})


def fit_decay(lags: np.ndarray, f: np.ndarray, count: int = 50) -> dict:
    """Fit the envelope as exponential and as power law and pick the class.

    Both fits are least squares of ``log f`` on a log-spaced grid of lags (``count`` points in
    ``1..max lag``, so the long tail does not outvote the short lags): ``log f = a - ℓ/λ``
    (exponential, decay length ``λ``) and ``log f = a - α log ℓ`` (power law, exponent
    ``α``). **Criterion:** the class with the higher ``R²``; ``"neither"`` when both are
    below :data:`DECAY_MIN_R2`, or fewer than three positive finite points exist.

    Returns:
        ``{"class", "criterion", "exponential": {"decay_length", "r2"}, "power law":
        {"exponent", "r2"}, "lags_fitted"}``.
    """
    lags, f = np.asarray(lags, float), np.asarray(f, float)
    ok = np.isfinite(f) & (f > 0) & (lags >= 1)
    grid = set(log_lag_grid(int(lags[ok].max()), count)) if ok.any() else set()
    pick = ok & np.isin(lags, sorted(grid))
    x, y = lags[pick], np.log(f[pick]) if pick.any() else np.array([])
    result = {"criterion": f"higher R² of the least-squares fit of log f on ℓ (exponential) "
                           f"or on log ℓ (power law) over {int(pick.sum())} log-spaced lags; "
                           f"'neither' when both R² < {DECAY_MIN_R2}",
              "lags_fitted": x.astype(int).tolist()}
    if pick.sum() < 3:
        return {**result, "class": "neither", "exponential": {"decay_length": None, "r2": None},
                "power law": {"exponent": None, "r2": None}}
    slope_e, r2_e = _line(x, y)
    slope_p, r2_p = _line(np.log(x), y)
    best = max(((r2_e, DECAY_CLASSES[0]), (r2_p, DECAY_CLASSES[1])), key=lambda a: a[0])
    cls = best[1] if best[0] >= DECAY_MIN_R2 else "neither"
    return {**result, "class": cls,
            "exponential": {"decay_length": -1.0 / slope_e if slope_e < 0 else math.inf,
                            "r2": r2_e, "slope": slope_e},
            "power law": {"exponent": -slope_p, "r2": r2_p}}


def _line(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares slope of ``y`` on ``x`` and its ``R²`` (1 when ``y`` is constant)."""
    xc, yc = x - x.mean(), y - y.mean()
    sxx, syy = float((xc**2).sum()), float((yc**2).sum())
    if sxx == 0:
        return math.nan, math.nan
    slope = float((xc * yc).sum()) / sxx
    return slope, 1.0 if syy == 0 else float(slope**2 * sxx / syy)


def memory_horizon(g: np.ndarray, threshold: float = HORIZON_THRESHOLD) -> int | None:
    """The longest lag at which the lookback is still ``>= threshold ×`` its peak.

    Args:
        g: ``(T,)`` lookback ``g(ℓ)`` for ``ℓ = 0..T-1`` (index ``ℓ``).

    Returns:
        That lag, or ``None`` when even the first input (``ℓ = T-1``) is above the
        threshold: the output looks back further than the sequence.
    """
    g = np.asarray(g, float)
    if not np.isfinite(g).any() or np.nanmax(g) == 0:
        return 0
    above = np.flatnonzero(g >= threshold * np.nanmax(g))
    last = int(above.max())
    return None if last == len(g) - 1 else last
