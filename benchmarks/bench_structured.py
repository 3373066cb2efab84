"""The structured fast path at a Mamba layer's size, and its ratio to the dense path.

The issue's goal: a layer with ``N = 8192`` diagonal channels (Mamba: d_model 256, expand 2,
d_state 16), ``T = 4096``, ``B = 4``: sensitivities at every lag from 64 start times
(:func:`~gatescope.dynamics.structured.start_sensitivities`), plus the effective rates'
envelope and neuron dispersion (``gs.effective_rate_summary``, first order) at 64 geometric
lags and the time scales (``gatescope.measures.time_scales``), in ≤ 10 s with peak memory
< 2 GiB. ``--cell mamba`` (the default) is that Mamba layer (``MambaCell(256, 256,
d_state=16, expand=2)``, float32, on Gaussian inputs ``(B, T, 256)``): its retention
``exp(Δ_t A)`` ``(B, T, 8192)`` comes from the inputs without the SSM scan
(``retention_from_inputs``), and the analysis runs on its retention structure
(docs/maths.md#retention-structure), so the sensitivities are those of the SSM-state block
``[M_{t,k}]_{hh}`` (the full state's norms also see the convolution window and are not on
this path). ``--cell synthetic`` is a bare diagonal structure on a random retention in
``(0.5, 1)``; another registered cell name (``min_gru``, ``rg_lru``, ``lru``) unrolls that cell
with ``hidden_size = N`` (its trajectory then counts in the peak memory).

The dense path cannot run at this size (``(B, T, N, N)`` Jacobians). It is timed at small
``N`` and ``T`` (``min_gru`` with its structure hidden: ``gs.jacobians``, ``gs.sensitivities``
and ``gs.effective_rate_summary`` from ``J``), its time fitted as ``c·N^p`` and extrapolated
to ``N``, and scaled from its ``T₀(T₀+1)/2`` pairs to the 64·T pairs asked (the dense work
grows with the pairs): an **extrapolation**, printed as such.

The **floor** it prints is what any implementation of these outputs pays on this machine in
float64: every rate entry ``μ_{t,ℓ,q}`` (``B·Σ_ℓ(T+1-ℓ)·N`` of them) is a different
window's product, so at least one arithmetic pass each (timed as one multiplication: the
anchored products of ``gatescope.dynamics.structured`` take two, plus the moments' passes),
and every sensitivity entry at least a subtraction and a max; each timed on a cache-sized
block and scaled by the entries. The ``exp`` per rate entry that a direct
``exp(L_t - L_{t-ℓ})`` pays is printed beside it, as what the anchoring saves. The
structured path's time over the floor is what an implementation could still win.

Run: ``python benchmarks/bench_structured.py`` (medians of ``--repeats`` runs of wall and
process-CPU seconds, the rates in float64 and with ``precision="float32"``; the peak memory
is the subprocess' maxrss, input included). On a shared machine, ``--threads 1`` and the
CPU column measure the work; the floor is measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time

import torch
from child_process import print_result, run_child

import gatescope as gs
from gatescope.cells.base import RecurrentCell, Trajectory
from gatescope.cells.structure import JacobianStructure
from gatescope.dynamics.structured import (
    CHUNK_ELEMENTS,
    retention_structure_of,
    start_sensitivities,
    structure_of,
)
from gatescope.measures import time_scales


class SyntheticDiagonal(RecurrentCell):
    """A bare diagonal structure: ``J_t = diag(r_t)``, ``r`` the trajectory's retention (the
    benchmark never steps it)."""

    def jacobian_structure(self, traj: Trajectory) -> JacobianStructure:
        return JacobianStructure(traj.retention)


def synthetic(B: int, T: int, N: int) -> tuple[RecurrentCell, Trajectory]:
    """The cell and a trajectory whose retention ``(B, T, N)`` float32 lies in ``(0.5, 1)``;
    inputs and states are zero-stride views (the structured path reads neither)."""
    gen = torch.Generator().manual_seed(0)
    r = 1 - 0.5 * torch.rand(B, T, N, generator=gen)
    zero = torch.zeros(1, 1, 1)
    traj = Trajectory(inputs=zero.expand(B, T, 1), states=zero.expand(B, T + 1, N),
                      gates=None, retention=r, cell_type=SyntheticDiagonal)
    return SyntheticDiagonal(1, N), traj


def mamba_layer(B: int, T: int, d_model: int = 256, d_state: int = 16, expand: int = 2
                ) -> tuple[RecurrentCell, Trajectory]:
    """A Mamba layer and a trajectory holding its retention on Gaussian inputs (from the
    inputs alone: no SSM scan); the states are a zero-stride view (not read)."""
    torch.manual_seed(0)
    cell = gs.make_cell("mamba", input_size=d_model, hidden_size=d_model, d_state=d_state,
                        expand=expand)
    u = torch.randn(B, T, d_model)
    with torch.no_grad():
        r = cell.retention_from_inputs(u)
    zero = torch.zeros(1, 1, 1)
    traj = Trajectory(inputs=u, states=zero.expand(B, T + 1, cell.state_size), gates=None,
                      retention=r, cell_type=type(cell))
    return cell, traj


def unrolled(name: str, B: int, T: int, N: int, options: dict, m: int = 4):
    """A registered cell (``hidden_size = N`` and ``options``) unrolled on Gaussian inputs."""
    torch.manual_seed(0)
    cell = gs.make_cell(name, input_size=m, hidden_size=N, **options)
    with torch.no_grad():
        return cell, cell.unroll(torch.randn(B, T, m)).detach()


def plan(T: int, starts: int, lags: int) -> tuple[list[int], list[int]]:
    """``starts`` evenly spaced start times in ``[0, T-1]``; ``lags`` geometric lags in
    ``[1, T]`` (rounded, duplicates dropped)."""
    ks = torch.linspace(0, T - 1, starts).round().long().unique().tolist()
    ls = torch.logspace(0, math.log10(T), lags).round().long().unique().tolist()
    return ks, ls


def structured_run(cell, traj, ks, ls) -> dict[str, tuple[float, float]]:
    """Wall and process-CPU seconds of each part of the structured analysis (the CPU time
    of one thread is the work, whatever else shares the machine); the rates in both
    precisions, and the totals with each."""
    def transport_structure():  # the full state's, else the retention block's (Mamba)
        full = structure_of(cell, traj)
        return retention_structure_of(cell, traj) if full is None else full

    steps = {
        "sensitivities": lambda: start_sensitivities(transport_structure(), ks,
                                                     lengths=traj.lengths),
        "rates+envelope": lambda: gs.effective_rate_summary(cell, traj, ls, order=1,
                                                            chunk_size=1),
        "rates float32": lambda: gs.effective_rate_summary(cell, traj, ls, order=1,
                                                           chunk_size=1, precision="float32"),
        "time_scales": lambda: time_scales(cell, traj),
    }
    parts = {}
    for name, step in steps.items():
        wall, cpu = time.perf_counter(), time.process_time()
        step()
        parts[name] = (time.perf_counter() - wall, time.process_time() - cpu)
    for name, rates in (("total", "rates+envelope"), ("total float32", "rates float32")):
        parts[name] = tuple(sum(parts[k][i] for k in ("sensitivities", rates, "time_scales"))
                            for i in (0, 1))
    return parts


def child(args) -> None:
    """One subprocess: build the input, run the structured analysis ``repeats`` times, print
    the median parts and the peak memory as JSON."""
    torch.set_num_threads(args.threads)
    if args.cell == "synthetic":
        cell, traj = synthetic(args.batch, args.seq_len, args.channels)
    elif args.cell == "mamba":
        cell, traj = mamba_layer(args.batch, args.seq_len)
    else:
        cell, traj = unrolled(args.cell, args.batch, args.seq_len, args.channels,
                              json.loads(args.options))
    ks, ls = plan(args.seq_len, args.starts, args.lags)
    runs = [structured_run(cell, traj, ks, ls) for _ in range(args.repeats)]
    median = {k: [statistics.median(r[k][i] for r in runs) for i in (0, 1)] for k in runs[0]}
    print_result(parts=median, starts=len(ks), lags=len(ls), channels=cell.retention_size)


def dense_time(N: int, B: int, T: int, lags: list[int], repeats: int) -> float:
    """Median seconds of the dense path (min_gru, structure hidden) at ``(B, T, N)``."""
    torch.manual_seed(0)
    cell = gs.make_cell("min_gru", input_size=4, hidden_size=N, dtype=torch.float64)
    cell.jacobian_structure = lambda traj: None
    with torch.no_grad():
        traj = cell.unroll(torch.randn(B, T, 4, dtype=torch.float64))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        J = gs.jacobians(cell, traj)
        gs.sensitivities(J)
        gs.effective_rate_summary(cell, traj, lags, order=1, J=J)
        time_scales(cell, traj)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def floor_seconds(rate_entries: int, sensitivity_entries: int, repeats: int) -> dict[str, float]:
    """The machine's floor for the structured analysis: the seconds of the passes no
    algorithm for these outputs avoids, timed on a cache-sized float64 block and scaled by
    the entries: one multiplication per rate entry ``μ_{t,ℓ,q}`` (every entry is a
    different window's product), and one subtraction and one max per sensitivity entry
    (the window's log-moduli and their largest). Also the ``exp`` per rate entry of the
    direct formula (not part of the floor)."""
    x = torch.randn(CHUNK_ELEMENTS, dtype=torch.float64)
    y = torch.empty_like(x)

    def per_element(fn) -> float:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(64):
                fn()
            times.append((time.perf_counter() - t0) / (64 * x.numel()))
        return statistics.median(times)

    mul = per_element(lambda: torch.mul(x, y, out=y))
    sub_max = per_element(lambda: torch.sub(x, y, out=y).amax())
    exp = per_element(lambda: torch.exp(x, out=y))
    return {"rates (one mul each)": mul * rate_entries,
            "sensitivities (sub + max each)": sub_max * sensitivity_entries,
            "direct rates (one exp each)": exp * rate_entries}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cell", default="mamba")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=4096)
    parser.add_argument("--channels", type=int, default=8192,
                        help="N, the diagonal channels (not for --cell mamba: 512 x 16)")
    parser.add_argument("--options", default="{}",
                        help="JSON keyword options of a registered --cell (e.g. a mamba layer's)")
    parser.add_argument("--starts", type=int, default=64)
    parser.add_argument("--lags", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--dense-sizes", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--dense-seq-len", type=int, default=32)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    res = run_child(sys.argv[0], sys.argv[1:])
    p, N = res["parts"], res["channels"]
    print(f"structured ({args.cell}, B={args.batch}, T={args.seq_len}, N={N}, "
          f"{args.threads} threads; {res['starts']} start times x every lag, "
          f"{res['lags']} geometric rate lags), medians of {args.repeats}:")
    print(f"  {'':<16} {'wall':>8}   {'cpu':>8}")
    for name, (wall, cpu) in p.items():
        print(f"  {name:<16} {wall:8.2f} s {cpu:8.2f} s")
    print(f"  peak memory      {res['peak_gib']:8.2f} GiB (process maxrss, input included)")

    torch.set_num_threads(args.threads)
    ks, ls = plan(args.seq_len, args.starts, args.lags)
    rate_entries = args.batch * N * sum(args.seq_len + 1 - lag for lag in ls)
    sens_entries = args.batch * N * sum(args.seq_len + 1 - k for k in ks)
    floor = floor_seconds(rate_entries, sens_entries, args.repeats)
    print(f"floor on this machine ({args.threads} threads; float64, {rate_entries:.3g} rate "
          f"and {sens_entries:.3g} sensitivity entries):")
    direct = floor.pop("direct rates (one exp each)")
    for name, value in floor.items():
        print(f"  {name:<31} {value:8.2f} s")
    print(f"  total floor                     {sum(floor.values()):8.2f} s "
          f"(the structured path takes {p['total'][0] / sum(floor.values()):.2f}x it; "
          f"{p['total float32'][0] / sum(floor.values()):.2f}x with float32 rates)")
    print(f"  (not in the floor: one exp per rate entry, what exp(L_t - L_t-l) pays: "
          f"{direct:.2f} s; the rates part took {p['rates+envelope'][0] / direct:.2f}x it)")

    T0 = args.dense_seq_len
    _, small_lags = plan(T0, 1, args.lags)
    sizes = args.dense_sizes
    dense_time(sizes[0], args.batch, T0, small_lags, 1)  # warm-up: one-time imports, caches
    times = [dense_time(N, args.batch, T0, small_lags, args.repeats) for N in sizes]
    x, y = torch.tensor(sizes).double().log(), torch.tensor(times).double().log()
    slope = float(((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum())
    intercept = float(y.mean() - slope * x.mean())
    pairs_ratio = res["starts"] * args.seq_len / (T0 * (T0 + 1) / 2)
    extrapolated = math.exp(intercept + slope * math.log(N)) * pairs_ratio
    print(f"dense (min_gru, structure hidden; B={args.batch}, T={T0}), medians:")
    for size, t in zip(sizes, times, strict=True):
        print(f"  N={size:<5} {t:8.3f} s")
    local = math.log(times[-1] / times[-2]) / math.log(sizes[-1] / sizes[-2])
    print(f"  local exponent between the two largest N: {local:.2f} (the products' N^3 takes "
          f"over there; the fit over all N, below, is the conservative extrapolation)")
    print(f"  fit: time ∝ N^{slope:.2f}; EXTRAPOLATED to N={N} and "
          f"{res['starts']}x{args.seq_len} pairs (x{pairs_ratio:.0f} the T={T0} pairs): "
          f"{extrapolated:.3g} s")
    print(f"ratio dense/structured (extrapolated): {extrapolated / p['total'][0]:.3g}")


if __name__ == "__main__":
    main()
