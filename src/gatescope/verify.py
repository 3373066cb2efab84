"""``gatescope verify``: check the analytic quantities against autograd on this machine.

For every registered cell (:func:`gatescope.list_cells`, so user-registered cells are
included) the suite builds a small random instance and compares

* the analytic Jacobians ``J_t`` with :func:`~gatescope.jacobians_autograd`;
* the analytic split ``(A_t, B_t)`` with :func:`~gatescope.jacobian_split_autograd`;
* the sum over lags of :func:`~gatescope.lag_gradients` (Jacobian-free) and of its twin
  through the analytic Jacobians (:func:`~gatescope.dynamics.lag_gradients.
  lag_gradients_dense`) with autograd's gradient, for both readouts (``"last"`` and
  ``"all"``);
* the effective learning rates (zeroth order and
  with the first-order term) with a brute-force evaluation of their definition
  (docs/maths.md#effective-learning-rates),
  and the per-example gradients with one autograd call per example (readout "last", and
  readout "all" with a step mask).

Each comparison reports its worst error relative to the reference's largest entry,
``max|x - x_ref| / max|x_ref|`` over everything the check compares.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .cells.base import RecurrentCell, Trajectory
from .cells.registry import cell_class, list_cells, make_cell
from .checks import as_device
from .dynamics.jacobians import (
    jacobian_split,
    jacobian_split_autograd,
    jacobians,
    jacobians_autograd,
)
from .dynamics.lag_gradients import lag_gradients, lag_gradients_dense
from .measures import effective_learning_rates, per_example_gradients
from .model import SequenceModel

#: Largest accepted relative error per dtype.
TOLERANCES = {torch.float64: 1e-10, torch.float32: 1e-4}

_DTYPES = {"float64": torch.float64, "float32": torch.float32}

#: Sizes of the random instances: batch, sequence length, input size, hidden size, outputs.
_BATCH, _SEQ_LEN, _INPUT, _HIDDEN, _OUTPUT = 3, 6, 3, 4, 2

_SEED = 0


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check on one cell.

    Attributes:
        cell: registry name of the cell.
        name: what was compared, e.g. ``"jacobians"``.
        error: worst relative error (NaN when the check did not run).
        tolerance: the largest error that passes.
        passed: whether the check passed (``True`` for a skipped check).
        skipped: whether the check was skipped (see ``note``).
        note: why the check was skipped or could not run (empty otherwise).
    """

    cell: str
    name: str
    error: float
    tolerance: float
    passed: bool
    skipped: bool = False
    note: str = ""


def run_checks(device: str | torch.device = "cpu", dtype: torch.dtype | str = torch.float64,
               cells: Sequence[str] | None = None) -> list[CheckResult]:
    """Run every check on every cell.

    Args:
        device: where the cells and tensors live.
        dtype: ``torch.float64`` or ``torch.float32`` (or their names); sets the tolerance
            (:data:`TOLERANCES`).
        cells: registry names to check; every registered cell when ``None``.

    Returns:
        One :class:`CheckResult` per cell and check, in registry order. A check that raises
        is recorded as failed, with the exception in ``note``; it does not stop the suite.

    Raises:
        ValueError: for an unknown cell name, an unsupported dtype or an unavailable device.
    """
    dtype = _resolve_dtype(dtype)
    device = as_device("device", device)
    names = list_cells() if cells is None else list(cells)
    for name in names:
        cell_class(name)  # ValueError naming the choices for an unknown cell
    results = []
    for name in names:
        with torch.random.fork_rng(devices=[]):  # leave the caller's random state alone
            torch.manual_seed(_SEED)
            results.extend(_check_cell(name, device, dtype))
    return results


def format_table(results: Sequence[CheckResult]) -> str:
    """A plain-text table of the results with a one-line summary below it.

    Args:
        results: as returned by :func:`run_checks`.

    Returns:
        The table: cell, check, worst error, tolerance, ``PASS``/``FAIL``/``SKIP``, note.
    """
    header = ("cell", "check", "worst error", "tolerance", "result", "note")
    rows = [
        (r.cell, r.name, "-" if math.isnan(r.error) else f"{r.error:.2e}", f"{r.tolerance:.0e}",
         "SKIP" if r.skipped else "PASS" if r.passed else "FAIL", r.note)
        for r in results
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in [header, tuple("-" * w for w in widths), *rows]]
    failed = sum(not r.passed for r in results)
    skipped = sum(r.skipped for r in results)
    lines.append(f"{len(results) - failed - skipped} passed, {failed} failed, "
                 f"{skipped} skipped")
    return "\n".join(lines)


def main(device: str = "cpu", dtype: str = "float64") -> int:
    """Run the suite, print the table, and return the exit status.

    Args:
        device: e.g. ``"cpu"`` or ``"cuda"``.
        dtype: ``"float64"`` or ``"float32"``.

    Returns:
        ``0`` when every check passes, ``1`` otherwise.

    Raises:
        ValueError: an unknown or unavailable device, or an unsupported dtype (before any
            check runs or anything is printed).
    """
    results = run_checks(device=device, dtype=dtype)
    print(f"gatescope verify: device={device}, dtype={dtype}, torch {torch.__version__}")
    print(format_table(results))
    return 0 if all(r.passed for r in results) else 1


def _resolve_dtype(dtype: torch.dtype | str) -> torch.dtype:
    resolved = _DTYPES.get(dtype) if isinstance(dtype, str) else dtype
    if resolved not in TOLERANCES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    return resolved


def _check_cell(name: str, device: torch.device, dtype: torch.dtype) -> list[CheckResult]:
    tol = TOLERANCES[dtype]
    try:
        cell = make_cell(name, _INPUT, _HIDDEN, dtype=dtype, device=device)
        gen = torch.Generator().manual_seed(_SEED)
        u = torch.randn(_BATCH, _SEQ_LEN, _INPUT, generator=gen, dtype=dtype).to(device)
        h0 = 0.5 * torch.randn(_BATCH, cell.state_size, generator=gen, dtype=dtype).to(device)
        traj = cell.unroll(u, h0)
    except Exception as exc:  # e.g. a user cell that needs options the suite cannot guess
        return [CheckResult(name, "build and unroll", math.nan, tol, False,
                            note=f"raised {type(exc).__name__}: {exc}")]
    checks: list[tuple[str, Callable[[], float]]] = [
        ("jacobians", lambda: _check_jacobians(cell, traj)),
        ("jacobian split A, B", lambda: _check_split(cell, traj)),
        ("lag gradients, readout last", lambda: _check_lag_gradients(cell, u, "last", gen)),
        ("lag gradients, readout all", lambda: _check_lag_gradients(cell, u, "all", gen)),
        ("effective rates", lambda: _check_effective_rates(cell, traj)),
        ("per-example gradients",
         lambda: _check_per_example_gradients(cell, u, gen)),
    ]
    return [_run(name, check, fn, tol) for check, fn in checks]


class _Skip(Exception):
    """Raised by a check that does not apply; its message is the note."""


def _run(cell: str, check: str, fn: Callable[[], float], tol: float) -> CheckResult:
    try:
        error = fn()
    except _Skip as skip:
        return CheckResult(cell, check, math.nan, tol, True, skipped=True, note=str(skip))
    except Exception as exc:
        return CheckResult(cell, check, math.nan, tol, False,
                           note=f"raised {type(exc).__name__}: {exc}")
    return CheckResult(cell, check, error, tol, error <= tol)


def _worst_error(pairs: Sequence[tuple[Tensor, Tensor]]) -> float:
    """``max|x - ref|`` over all pairs divided by ``max|ref|`` over all pairs.

    NaNs must sit at the same places in ``x`` and ``ref``; they are then ignored.
    """
    diff, scale = 0.0, 0.0
    for x, ref in pairs:
        if x.shape != ref.shape:
            raise ValueError(f"shape {tuple(x.shape)} != reference {tuple(ref.shape)}")
        nan = ref.isnan()
        if not torch.equal(x.isnan(), nan):
            raise ValueError("NaNs at different places than in the reference")
        x, ref = x.masked_fill(nan, 0), ref.masked_fill(nan, 0)
        diff = max(diff, (x - ref).abs().max().item())
        scale = max(scale, ref.abs().max().item())
    return diff / scale if scale > 0 else diff


def _analytic_or_skip(analytic, traj: Trajectory) -> None:
    """Skip the check when the cell's closed form ``analytic`` (a bound method) has none."""
    with torch.no_grad():
        if analytic(traj.detach()) is None:
            raise _Skip("no closed form (gatescope uses torch.func for this cell)")


def _check_jacobians(cell: RecurrentCell, traj: Trajectory) -> float:
    _analytic_or_skip(cell.analytic_jacobian, traj)
    return _worst_error([(jacobians(cell, traj), jacobians_autograd(cell, traj))])


def _check_split(cell: RecurrentCell, traj: Trajectory) -> float:
    _analytic_or_skip(cell.analytic_jacobian_split, traj)
    pairs = zip(jacobian_split(cell, traj), jacobian_split_autograd(cell, traj), strict=True)
    return _worst_error(list(pairs))


def _model(cell: RecurrentCell, readout: str) -> SequenceModel:
    return SequenceModel(cell, _OUTPUT, readout=readout)


def _targets(model: SequenceModel, u: Tensor, gen: torch.Generator) -> Tensor:
    shape = (u.shape[0], _OUTPUT) if model.readout_kind == "last" else (*u.shape[:2], _OUTPUT)
    return torch.randn(shape, generator=gen, dtype=u.dtype).to(u.device)


def _check_lag_gradients(cell: RecurrentCell, u: Tensor, readout: str,
                         gen: torch.Generator) -> float:
    model = _model(cell, readout)
    y = _targets(model, u, gen)
    names = [k for k, _ in model.named_parameters()]
    grads = torch.autograd.grad(model.loss(u, y), list(model.parameters()))
    pairs = []
    for method in (lag_gradients, lag_gradients_dense):
        parts = method(model, u, y)
        if sorted(parts) != sorted(names):
            raise ValueError(f"{method.__name__} returned {sorted(parts)}, expected "
                             f"{sorted(names)}")
        pairs += [(parts[k].sum(0), g) for k, g in zip(names, grads, strict=True)]
    return _worst_error(pairs)


def _product(factors: list[Tensor], one: Tensor) -> Tensor:
    out = one
    for f in factors:
        out = out * f
    return out


def _brute_force_rates(cell: RecurrentCell, traj: Trajectory,
                       lags: Sequence[int]) -> tuple[Tensor, Tensor]:
    """``μ⁰`` and ``μ⁰ + μ¹`` straight from their definition, each ``(B, T+1, L, n)`` float64
    (docs/maths.md#effective-learning-rates).

    ``μ⁰_{t,ℓ} = ∏_j r_j`` and ``μ¹_{t,ℓ} = Σ_j (∏_{i≠j} r_i) d_j`` with
    ``d_j = diag(J_j) - r_j`` over the window ``j = t-ℓ+1..t``, ``J`` from autograd and its
    diagonal read on the last ``n`` state entries, those the retention acts on (the cell
    state ``c`` of an LSTM's ``[h; c]``).
    """
    n = cell.retention_size
    diag = jacobians_autograd(cell, traj).diagonal(dim1=-2, dim2=-1)[..., -n:].double()
    r = traj.retention.detach().double().expand_as(diag)
    d = diag - r
    B, T = traj.batch_size, traj.seq_len
    zeroth = torch.full((B, T + 1, len(lags), n), math.nan, dtype=r.dtype, device=r.device)
    first = zeroth.clone()
    one = torch.ones_like(r[:, 0])
    for t in range(T + 1):
        for li, lag in enumerate(lags):
            if lag > t:
                continue
            window = range(t - lag, t)  # tensor indices of the steps t-ℓ+1..t
            zeroth[:, t, li] = _product([r[:, j] for j in window], one)
            first[:, t, li] = sum(
                (d[:, j] * _product([r[:, i] for i in window if i != j], one) for j in window),
                torch.zeros_like(one))
    return zeroth, zeroth + first


def _check_effective_rates(cell: RecurrentCell, traj: Trajectory) -> float:
    lags = list(range(traj.seq_len + 1))
    zeroth, full = _brute_force_rates(cell, traj, lags)
    with torch.no_grad():
        pairs = [(effective_learning_rates(cell, traj, lags=lags, order=0), zeroth),
                 (effective_learning_rates(cell, traj, lags=lags, order=1), full)]
    return _worst_error(pairs)


def _check_per_example_gradients(cell: RecurrentCell, u: Tensor,
                                 gen: torch.Generator) -> float:
    """Rows of ``per_example_gradients`` against one autograd call per example, for readout
    "last" and for readout "all" with a step mask."""
    mask = torch.rand(u.shape[:2], generator=gen).to(u.device) > 0.3
    pairs = []
    for readout, m in (("last", None), ("all", mask)):
        model = _model(cell, readout)
        y = _targets(model, u, gen)
        params = list(model.parameters())
        ref = torch.stack([
            torch.cat([g.flatten() for g in torch.autograd.grad(
                model.loss(u[i:i + 1], y[i:i + 1], None if m is None else m[i:i + 1]),
                params)])
            for i in range(u.shape[0])
        ])
        pairs.append((per_example_gradients(model, u, y, m), ref))
    return _worst_error(pairs)
