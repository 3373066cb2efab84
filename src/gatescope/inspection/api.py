"""``gs.inspect``: a one-call report of how a recurrent model uses time, on the user's data.

Every (layer, direction) of the module becomes one gatescope cell and the input sequence
that torch feeds it (an *analysis unit*); each unit is measured through the inspection's
declared quantities (:mod:`gatescope.inspection.quantities`) on an
:class:`~gatescope.inspection.quantities.InspectContext`, timed part by part, and the plain
numbers are handed to :mod:`gatescope.reporting.inspect_report`.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from .. import metrics as M
from ..cells.base import RecurrentCell, check_lengths
from ..cells.stack import StackedCell
from ..checks import as_device, as_float, as_int
from ..convert import from_torch, layer_inputs
from ..converters import converter_for
from ..measures.rates import time_scales
from ..model import SequenceModel
from ..probes.measure import measure
from .data import check_inputs
from .errors import InspectInputError
from .quantities import INSPECT_QUANTITIES, InspectContext
from .sampled import (
    HORIZON_THRESHOLD,
    fit_decay,
    instantaneous_time_scales,
    log_lag_grid,
    memory_horizon,
    saturation_fractions,
    step_size_spectrum,
)

#: Defaults of :func:`inspect` (see its arguments).
END_TIMES = 16
RATE_LAGS = 24
TRANSPORT_LAGS = 8
TRANSPORT_MAX_LAG = 256
TRANSPORT_STARTS = 4
LYAPUNOV_COUNT = 8
EXACT_LOOKBACK_MAX_N = 64
LOOKBACK_PROBES = 16
HISTOGRAM_BINS = 40


@dataclass
class AnalysisUnit:
    """One (layer, direction) of a module: its cell and the inputs torch feeds it
    (``(B, T, m_k)``, batch first, in the time order the cell runs)."""

    layer: int
    direction: str
    cell: RecurrentCell
    inputs: Tensor

    @property
    def label(self) -> str:
        return f"layer {self.layer} {self.direction}"


@dataclass
class InspectResult:
    """What :func:`inspect` measured (``summary``, plain numbers and lists, the content of
    ``inspect.json``) and the files it wrote (``{"markdown", "html", "json", figure names}``;
    empty without ``out``)."""

    summary: dict
    files: dict[str, Path] = field(default_factory=dict)


def module_units(module: nn.Module | RecurrentCell, x: Tensor,
                 lengths: Tensor | None = None) -> list[AnalysisUnit]:
    """The analysis units of ``module`` for batch-first inputs ``x``: one per (layer,
    direction), each layer's cell (:func:`~gatescope.from_torch` with ``layer`` and
    ``direction``) with the inputs torch feeds it (:func:`~gatescope.layer_inputs`, run on
    the module's own lower layers, packed with ``lengths`` when given), bottom layer first,
    forward before backward.

    Raises:
        InspectInputError: for a module ``from_torch`` cannot convert (its message).
    """
    if isinstance(module, StackedCell):
        return stacked_units(module, x, lengths)
    if isinstance(module, RecurrentCell):
        return [AnalysisUnit(0, "forward", module, x)]
    if not isinstance(module, nn.RNNBase):  # a torch cell (nn.GRUCell, ...): one unit
        return [AnalysisUnit(0, "forward", _converted(module), x)]
    directions = ("forward", "backward") if module.bidirectional else ("forward",)
    own_layout = x if module.batch_first else x.transpose(0, 1)
    return [AnalysisUnit(k, d, _converted(module, layer=k, direction=d),
                         layer_inputs(module, own_layout, layer=k, direction=d,
                                      lengths=lengths))
            for k in range(module.num_layers) for d in directions]


def stacked_units(cell: StackedCell, x: Tensor, lengths: Tensor | None = None
                  ) -> list[AnalysisUnit]:
    """One analysis unit per layer of a stack (bottom first): layer ``k``'s inputs are the
    outputs ``h`` of layer ``k - 1`` (its first ``hidden_size`` state entries), from one
    unroll of the stack."""
    with torch.no_grad():
        traj = cell.unroll(x, lengths=lengths)
    return [AnalysisUnit(k, "forward", layer, cell.layer_trajectory(traj, k).inputs)
            for k, layer in enumerate(cell.layers)]


def _converted(module: nn.Module, **unit) -> RecurrentCell:
    """``from_torch(module, **unit)``, its refusals as :class:`InspectInputError`."""
    try:
        return from_torch(module, **unit)
    except (NotImplementedError, TypeError, ValueError) as err:
        raise InspectInputError(f"module: {err}") from None


def _module_dtype(module: nn.Module) -> torch.dtype:
    p = next(module.parameters(), None)
    return torch.float32 if p is None else p.dtype


def _resolve_device(device: str | torch.device | None, module: nn.Module) -> torch.device:
    """``device``, checked (:func:`gatescope.checks.as_device`), or the module's."""
    if device is None:
        p = next(module.parameters(), None)
        return torch.device("cpu") if p is None else p.device
    try:
        return as_device("--device", device)
    except ValueError as err:
        raise InspectInputError(str(err)) from None


def _check_settings(end_times, rate_lags, lookback_probes, horizon_threshold, max_sequences):
    """The sampling settings, checked with :mod:`gatescope.checks` before any compute."""
    _checked(as_int, "end_times", end_times, minimum=1)
    _checked(as_int, "rate_lags", rate_lags, minimum=1)
    _checked(as_float, "horizon_threshold", horizon_threshold, above=0, below=1)
    if lookback_probes not in ("auto", None):
        _checked(as_int, "lookback_probes", lookback_probes, minimum=1,
                 other="'auto' or None (exact)")
    if max_sequences is not None:
        _checked(as_int, "max_sequences", max_sequences, minimum=1, other="None")


def _checked(check: Callable, name: str, value, other: str | None = None, **bounds) -> None:
    """``check(name, value, **bounds)`` with its ``ValueError`` as an
    :class:`InspectInputError`, naming the ``other`` values also allowed."""
    try:
        check(name, value, **bounds)
    except ValueError as err:
        raise InspectInputError(str(err) if other is None else f"{err} (or {other})") from None


def sampled_end_times(T: int, count: int) -> list[int]:
    """``count`` end times evenly spread over ``1..T``, ``T`` included (fewer when
    ``T < count``)."""
    return sorted({int(round(x)) for x in np.linspace(T / count, T, count)} - {0})


def inspect(module: nn.Module | RecurrentCell, inputs: Tensor, targets: Tensor | None = None,
            out: str | Path | None = None, *, batch_first: bool = True,
            end_times: int = END_TIMES, rate_lags: int = RATE_LAGS,
            lookback_probes: int | str | None = "auto", transport_lags: int = TRANSPORT_LAGS,
            lyapunov_count: int = LYAPUNOV_COUNT,
            horizon_threshold: float = HORIZON_THRESHOLD, max_sequences: int | None = None,
            seed: int = 0, lengths: Tensor | None = None,
            device: str | torch.device | None = None,
            dtype: torch.dtype | None = None, quiet: bool = False,
            jacobian_budget: int = 2**27, module_description: str | None = None
            ) -> InspectResult:
    """How a recurrent model uses time, on the given inputs; optionally written as a report.

    Per analysis unit (each layer and direction of a stacked or bidirectional module, run
    on the inputs torch feeds it; a cell is one unit) it measures:

    * the **time-scale spectrum** of the gates: ``τ = -1/log r`` over every (sequence, step,
      neuron), as quantiles and a histogram of ``log10 τ``, plus the per-neuron ``τ_q`` of
      the mean retention (:func:`gatescope.measures.rates.time_scales`);
    * the **envelope** ``f(ℓ)`` of the first-order effective rates, ``ℓ = 1..T``, averaged
      over ``end_times`` sampled end times (not all ``T``), with its decay class
      (:func:`~gatescope.inspection.sampled.fit_decay`: the higher ``R²`` of an exponential
      and a power-law fit of ``log f``);
    * **how far back the output looks**: ``‖∂h_T/∂u_{T-ℓ}‖_F`` (RMS over sequences) for
      ``ℓ = 0..T-1`` by one backward VJP sweep, and the **memory horizon**, the longest ``ℓ``
      at which it is still ``>= horizon_threshold ×`` its peak (``None``: beyond the
      sequence);
    * the **effective-rate dispersion** across neurons (CV of ``|μ|``) at ``rate_lags``
      log-spaced lags;
    * **transport sensitivity** ``‖M_{t,t-ℓ}‖_2`` at ``transport_lags`` log-spaced lags up
      to ``min(T/2, 256)`` and 4 end times, matrix-free (:func:`gatescope.transport_norms`,
      tolerance 1e-3, at most 30 Lanczos steps; the converged fraction is reported);
    * the top ``lyapunov_count`` **Lyapunov exponents** (:func:`gatescope.
      lyapunov_exponents`) beside the gates' zeroth-order prediction ``E_t log r_t``;
    * **gate saturation** fractions per gate;
    * what was sampled and how long each part took.

    Args:
        module: ``nn.RNN``/``nn.GRU``/``nn.LSTM`` (or their cells; anything
            :func:`gatescope.from_torch` converts) or a gatescope cell.
        inputs: ``(B, T, m)`` (``batch_first``) or ``(T, B, m)``; finite.
        targets: optional targets with ``B`` rows; checked and recorded, not used by any
            section of this version.
        out: folder for ``REPORT.md``, ``report.html``, ``inspect.json`` and the figures;
            ``None`` writes nothing.
        batch_first: the layout of ``inputs``.
        end_times: sampled end times of the effective rates.
        rate_lags: log-spaced lags of the dispersion.
        transport_lags: log-spaced lags of the transport norms (``0``: not measured).
        lyapunov_count: how many Lyapunov exponents (``0``: not measured).
        lookback_probes: ``None`` exact (``n`` directions); an int: that many Gaussian
            directions (Hutchinson); ``"auto"``: exact when ``n <= 64``, else 16.
        horizon_threshold: the memory horizon's fraction of the peak, in ``(0, 1)``.
        max_sequences: analyse at most this many sequences, drawn with ``seed``.
        seed: seed of the sequence sample and the Gaussian directions.
        lengths: ``(B,)`` valid lengths of padded ``inputs``: each layer runs torch's packed
            sequences (the backward direction reversed within each length), steps past a
            length are left out of every section, and the lookback aligns each sequence
            at its own end.
        device: where to compute (default: the module's).
        dtype: compute dtype (default: the module's).
        quiet: no progress bar.
        jacobian_budget: bytes of per-step Jacobians alive at once (for ``diag J``).
        module_description: how the report names the module (default: its repr).

    Raises:
        InspectInputError: (a ``ValueError``) for inputs of the wrong shape or with NaN/Inf,
            a module gatescope cannot convert or a bad setting, before any compute.
    """
    _check_settings(end_times, rate_lags, lookback_probes, horizon_threshold, max_sequences)
    if converter_for(module) is not None:  # a third-party package's module (gatescope[models])
        module = _converted(module)
    _checked(as_int, "transport_lags", transport_lags, minimum=0)
    _checked(as_int, "lyapunov_count", lyapunov_count, minimum=0)
    dev = _resolve_device(device, module)
    dtype = _module_dtype(module) if dtype is None else dtype
    x = check_inputs(inputs, module.input_size, batch_first, dtype, name="inputs")
    if targets is not None and (not hasattr(targets, "shape") or targets.shape[0] != x.shape[0]):
        raise InspectInputError(f"targets must have B={x.shape[0]} rows (one per sequence), "
                                f"got {getattr(targets, 'shape', type(targets).__name__)}")
    if lengths is not None:
        try:
            lengths = check_lengths(lengths, x.shape[0], x.shape[1])
        except (TypeError, ValueError) as err:
            raise InspectInputError(str(err)) from None
    chosen = _sample_sequences(x.shape[0], max_sequences, seed)
    x = x[chosen].to(dev)
    lengths = None if lengths is None else lengths[chosen].to(dev)
    module = copy.deepcopy(module).to(device=dev, dtype=dtype)  # the caller's is left as is
    units = module_units(module, x, lengths)
    started = time.perf_counter()
    B, T = x.shape[:2]
    ends = sampled_end_times(T, end_times)
    rlags = log_lag_grid(T, rate_lags)
    # lags up to half the sequence (so the end times spread over its second half)
    tlags = (log_lag_grid(max(1, min(T // 2, TRANSPORT_MAX_LAG)), transport_lags)
             if transport_lags else [])
    tstarts = sampled_end_times(T, TRANSPORT_STARTS)
    tstarts = [t for t in tstarts if t >= max(tlags, default=0)] or [T]
    sampling = {"ends": ends, "rate_lags": rlags, "transport_lags": tlags,
                "transport_starts": tstarts, "lyapunov_count": lyapunov_count}
    with _progress_bar(len(units) * (3 + bool(lyapunov_count)) * T, quiet) as bar:
        results = [_inspect_unit(u, sampling, lookback_probes, horizon_threshold, seed,
                                 jacobian_budget, bar.update, lengths) for u in units]
    summary = {
        "module": module_description or repr(module).replace("\n", " "),
        "settings": {"batch_first": batch_first, "end_times": end_times,
                     "rate_lags": rate_lags, "lookback_probes": lookback_probes,
                     "transport_lags": transport_lags, "lyapunov_count": lyapunov_count,
                     "horizon_threshold": horizon_threshold, "max_sequences": max_sequences,
                     "seed": seed, "device": str(dev), "dtype": str(dtype).replace("torch.", ""),
                     "jacobian_budget": jacobian_budget},
        "sampled": {"sequences": chosen.tolist(), "sequences_given": int(inputs.shape[
                    0 if batch_first else 1]), "batch": B, "seq_len": T,
                    "input_size": int(x.shape[-1]), "end_times": ends,
                    "envelope_lags": [1, T], "rate_lags": rlags,
                    "transport_lags": tlags, "transport_end_times": tstarts,
                    "lengths": None if lengths is None else lengths.tolist()},
        "targets": None if targets is None else "given; not used by any section of this "
                                                "version",
        "units": results,
        "timings": {"total_s": time.perf_counter() - started},
    }
    files = {}
    if out is not None:
        from ..reporting.inspect_report import write_inspect_report

        t0 = time.perf_counter()
        files = write_inspect_report(Path(out), summary)
        summary["timings"]["report_s"] = time.perf_counter() - t0
    return InspectResult(summary, files)


def _sample_sequences(B: int, max_sequences: int | None, seed: int) -> Tensor:
    """Indices of the analysed sequences: all, or ``max_sequences`` drawn with ``seed``."""
    if max_sequences is None or max_sequences >= B:
        return torch.arange(B)
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(B, generator=gen)[:max_sequences].sort().values


class _progress_bar:
    """A tqdm bar (imported lazily) or, when quiet, an object whose ``update`` does nothing."""

    def __init__(self, total: int, quiet: bool) -> None:
        self.total, self.quiet, self.bar = total, quiet, None

    def __enter__(self):
        if not self.quiet:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, desc="inspect", unit="step", leave=False)
        return self

    def update(self, count: int) -> None:
        if self.bar is not None:
            self.bar.update(count)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()


def _timed(timings: dict, name: str, work: Callable):
    t0 = time.perf_counter()
    value = work()
    timings[name] = time.perf_counter() - t0
    return value


def _inspect_unit(unit: AnalysisUnit, sampling: dict, lookback_probes,
                  horizon_threshold: float, seed: int, jacobian_budget: int,
                  progress: Callable[[int], object], lengths: Tensor | None = None) -> dict:
    """Every number of one analysis unit, as plain Python/numpy-convertible values
    (``sampling``: the end times, rate lags, transport lags and end times, Lyapunov count)."""
    ends, rlags = sampling["ends"], sampling["rate_lags"]
    cell, x = unit.cell, unit.inputs
    B, T = x.shape[:2]
    n = cell.hidden_size
    probes = (None if n <= EXACT_LOOKBACK_MAX_N else LOOKBACK_PROBES) \
        if lookback_probes == "auto" else lookback_probes
    y = x.new_zeros(B, 1)
    ctx = InspectContext(model=SequenceModel(cell), u=x, y=y, mask=None, lengths=lengths,
                         optimizer=None,
                         lags=tuple(range(1, T + 1)), rank=1, samples_per_lag=1, step=0,
                         rate_lags=tuple(rlags), sampling_seed=seed, end_times=tuple(ends),
                         lookback_probes=probes, jacobian_budget=jacobian_budget,
                         transport_lags=tuple(sampling["transport_lags"]),
                         transport_starts=tuple(sampling["transport_starts"]),
                         lyapunov_count=sampling["lyapunov_count"], progress=progress)
    timings: dict[str, float] = {}
    traj = _timed(timings, "forward", lambda: ctx.trajectory)
    record, skipped = {}, {}
    for q in INSPECT_QUANTITIES:
        values, skip = _timed(timings, q.name, lambda q=q: measure(ctx, [q]))
        record.update(values)
        skipped.update(skip)
    hist = _timed(timings, "time_scale_histogram",
                  lambda: _tau_histogram(instantaneous_time_scales(cell, traj)[traj.step_mask]))
    saturation = saturation_fractions(traj, gate_kind=cell.gate_kind)
    lookback = record["output_lookback"][::-1]          # index ℓ = 0..T-1
    envelope = record.get("sampled_envelope")
    decay = fit_decay(np.arange(1, T + 1), envelope) if envelope is not None else None
    return {
        "layer": unit.layer, "direction": unit.direction, "label": unit.label,
        "cell": type(cell).__name__, "hidden_size": n, "state_size": cell.state_size,
        "input_size": cell.input_size,
        "time_scales": None if "tau_quantiles" not in record else {
            "levels": [0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99],
            "quantiles": record["tau_quantiles"].tolist(),
            "infinite_fraction": float(record["tau_infinite_fraction"]),
            "per_neuron": time_scales(cell, traj).cpu().numpy().tolist(), **hist},
        "envelope": None if envelope is None else {
            "lags": [1, T], "values": envelope.tolist(), "fit": decay,
            "end_times": ends},
        "lookback": {"values": lookback.tolist(), "lags": [0, T - 1],
                     "method": "exact: n basis directions" if probes is None else
                     f"Hutchinson estimate: {probes} Gaussian directions (seed {seed})",
                     "horizon": memory_horizon(lookback, horizon_threshold),
                     "horizon_threshold": horizon_threshold},
        "spectrum": None if "phase" not in record else {
            "phase": M.label_of(M.PHASE_LABELS, record["phase"]),
            "envelope_law": M.label_of(M.ENVELOPE_MODEL_LABELS, record["envelope_model"]),
            "beta": float(record["tail_beta"]),
            "interval": [float(record["tail_beta_low"]), float(record["tail_beta_high"])],
            "prob_below_one": float(record["tail_prob_below_one"]),
            "tail_r2": float(record["tail_r2"]),
            "fitted_tau_median": float(np.nanmedian(record["fitted_time_scale"]))},
        "dispersion": None if "sampled_rate_cv" not in record else {
            "lags": rlags, "cv": record["sampled_rate_cv"].tolist()},
        "transport": None if "sampled_transport_norm" not in record else {
            "lags": sampling["transport_lags"], "end_times": sampling["transport_starts"],
            "norms": record["sampled_transport_norm"].tolist(),
            "converged_fraction": float(record["transport_norm_converged"])},
        "lyapunov": None if "lyapunov_exponents" not in record else {
            "exponents": record["lyapunov_exponents"].tolist(),
            "gate_prediction": None if "gate_exponents" not in record
            else record["gate_exponents"].tolist()},
        "step_sizes": step_size_spectrum(traj) if cell.gate_kind == "step size" else None,
        "saturation": saturation,
        "saturation_totals": {k: float(record[k]) for k in
                              ("gate_saturated_fraction", "tanh_saturated_fraction")
                              if k in record},
        "skipped": skipped,
        "timings": timings,
    }


def _tau_histogram(tau: Tensor, bins: int = HISTOGRAM_BINS) -> dict:
    """Histogram of ``log10 τ`` over the finite positive entries, and the counts left out."""
    t = tau.flatten().cpu().numpy()
    finite = t[np.isfinite(t) & (t > 0)]
    counts, edges = (np.histogram(np.log10(finite), bins=bins) if finite.size
                     else (np.zeros(0, int), np.zeros(0)))
    return {"histogram_log10_edges": edges.tolist(), "histogram_counts": counts.tolist(),
            "count_zero": int((t == 0).sum()), "count_infinite": int(np.isinf(t).sum()),
            "count_total": int(t.size)}
