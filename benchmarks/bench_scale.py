"""Dense all-pairs sensitivities against matrix-free sampled transport norms, as T grows.

Dense: ``gs.sensitivities(gs.jacobians(cell, traj))``, every ``‖M_{t,k}‖_2`` (the ``(B, T, N, N)``
Jacobian stack plus ``T(T+1)/2`` products per example; time includes forming ``J``).
Matrix-free: ``gs.transport_norms(cell, traj, lags)`` at a fixed handful of lags and its
default 5 end times (no Jacobian formed). The error column is the matrix-free norms' worst
relative difference from the dense ones at the same pairs.

Run: ``python benchmarks/bench_scale.py`` (single-layer GRU, n = 128, B = 2,
T = 100, 200, 400; medians of ``--repeats`` runs; one torch thread, ``--threads``). The
dense path is skipped above ``--dense-max-T`` (default 200: at T = 400 it takes minutes per
run, its time growing as ``T²``); ``--dense-max-T 400`` times it too.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import gatescope as gs


def median_time(fn, repeats: int) -> tuple[float, object]:
    """Median wall time of ``repeats`` calls of ``fn`` (seconds) and the last result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def warm_up(cell: gs.RecurrentCell) -> None:
    """One small call of each path, so one-time imports (forward-mode AD loads torch's
    decompositions) are not timed."""
    with torch.no_grad():
        traj = cell.unroll(torch.randn(1, 3, cell.input_size, dtype=torch.float64))
    gs.transport_norms(cell, traj, [1])
    gs.sensitivities(gs.jacobians(cell, traj))


def row(cell: gs.RecurrentCell, traj: gs.Trajectory, lags: list[int], repeats: int,
        dense: bool) -> str:
    """One line of the table: both paths' median times, their ratio, the matrix-free norms'
    worst relative error against the dense ones and whether every entry converged."""
    free_s, out = median_time(lambda: gs.transport_norms(cell, traj, lags), repeats)
    dense_col, ratio, err = "skipped", "-", "-"
    if dense:
        dense_s, S = median_time(lambda: gs.sensitivities(gs.jacobians(cell, traj)), repeats)
        t = out.starts.view(-1, 1)
        k = t - out.lags.view(1, -1)
        error = ((out.norms - S[:, t, k]).abs() / S[:, t, k]).max().item()
        dense_col, ratio, err = f"{dense_s:.3f}", f"{dense_s / free_s:.1f}x", f"{error:.1e}"
    return (f"{traj.seq_len:>6} {dense_col:>18} {free_s:>14.3f} {ratio:>8} {err:>12} "
            f"{bool(out.converged.all())!s:>10}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 200, 400],
                        help="sequence lengths T")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--cell", default="gru")
    parser.add_argument("--lags", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: the matrix-free path's small "
                             "products only lose to thread start-up on a shared machine)")
    parser.add_argument("--dense-max-T", type=int, default=200,
                        help="skip the dense path for longer sequences")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    cell = gs.make_cell(args.cell, 4, args.hidden, dtype=torch.float64)
    print(f"{args.cell} n={args.hidden} B={args.batch} float64, lags {args.lags}, "
          f"5 end times; median of {args.repeats}; torch threads {torch.get_num_threads()}")
    print(f"{'T':>6} {'dense all pairs s':>18} {'matrix-free s':>14} {'ratio':>8} "
          f"{'max rel err':>12} {'converged':>10}")
    warm_up(cell)
    for T in args.sizes:
        with torch.no_grad():
            traj = cell.unroll(torch.randn(args.batch, T, 4, dtype=torch.float64))
        lags = [lag for lag in args.lags if lag <= T]
        print(row(cell, traj, lags, args.repeats, dense=args.dense_max_T >= T))


if __name__ == "__main__":
    main()
