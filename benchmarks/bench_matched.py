"""The matched statistic and both envelopes at the follow-up's size (docs/matched-statistic.md).

A ``multi_gate`` model (float32, ``n = 128``, input 16, readout ``"all"``) on ``B = 128``
sequences of ``T = 1024`` steps, at the ``L = 128`` lags ``1..128`` (every lag: the dense
rate pass and the window products run through every lag up to the largest anyway, so
geometric lags up to 128 would cost the same): ``gs.measures.matched.matched_statistic``
(one forward-mode unroll, ``δ_t``, and ``μ`` streamed chunk by chunk),
``exact_envelope`` (products of the per-step Jacobians at the default
``DEFAULT_ENDS`` end times, all at once per chunk) and ``first_order_envelope`` on the same
``(b, t)``. Run under a dense budget of ``--budget`` (default 1 GiB), which sets the default
chunk sizes (half the budget for one chunk's work). The goal: peak memory under 2 GiB.

Run: ``python benchmarks/bench_matched.py`` (median seconds of ``--repeats`` runs; the peak
memory is the subprocess' maxrss, input, model and trajectory included).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from child_process import print_result, run_child

import gatescope as gs
from gatescope.measures.envelopes import (
    envelope_agreement,
    envelope_ends,
    exact_envelope,
    first_order_envelope,
)
from gatescope.measures.matched import matched_statistic


def run_once(model, u, y, lags) -> tuple[dict[str, float], dict]:
    """Seconds of each part, and what they measured (for a sanity line)."""
    parts = {}
    t0 = time.perf_counter()
    psi = matched_statistic(model, u, y, lags, torch.Generator().manual_seed(0))
    parts["matched_statistic"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    with torch.no_grad():
        traj = model.cell.unroll(u).detach()
    parts["unroll (for the envelopes)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    exact = exact_envelope(model.cell, traj, lags)
    parts["exact_envelope"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    first = first_order_envelope(model.cell, traj, lags)
    parts["first_order_envelope"] = time.perf_counter() - t0
    parts["total"] = sum(parts.values())
    agreement = envelope_agreement(exact, first, lags)
    facts = {"psi_defined": int((~psi.isnan()).sum()),
             "ends": envelope_ends(model.cell, traj, lags),
             "rank_correlation": agreement.rank_correlation,
             "slope_ratio": agreement.slope_ratio}
    return parts, facts


def child(args) -> None:
    """One subprocess: build the model and batch, run ``repeats`` times, print the median
    parts, the peak memory and the sanity facts as JSON."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cell = gs.make_cell("multi_gate", input_size=args.inputs, hidden_size=args.hidden)
    model = gs.SequenceModel(cell, readout="all")
    gen = torch.Generator().manual_seed(1)
    u = torch.randn(args.batch, args.seq_len, args.inputs, generator=gen)
    y = torch.randn(args.batch, args.seq_len, 1, generator=gen)
    lags = list(range(1, args.lags + 1))
    with gs.dense_budget_limit(args.budget):
        run_once(model, u[:2, :8], y[:2, :8], [1, 2])  # warm-up: one-time initialisation
        runs = [run_once(model, u, y, lags) for _ in range(args.repeats)]
    median = {k: statistics.median(r[0][k] for r in runs) for k in runs[0][0]}
    print_result(parts=median, facts=runs[-1][1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--hidden", type=int, default=128, help="n, the hidden units")
    parser.add_argument("--inputs", type=int, default=16)
    parser.add_argument("--lags", type=int, default=128, help="L: the lags 1..L")
    parser.add_argument("--budget", default="1GiB", help="the dense budget during the run")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    res = run_child(sys.argv[0], sys.argv[1:])
    print(f"multi_gate float32, B={args.batch}, T={args.seq_len}, n={args.hidden}, "
          f"lags 1..{args.lags}, dense budget {args.budget}, {args.threads} threads, "
          f"median of {args.repeats}:")
    for name, value in res["parts"].items():
        print(f"  {name:<28} {value:8.2f} s")
    print(f"  peak memory                  {res['peak_gib']:8.2f} GiB (process maxrss, input "
          f"included; goal < 2 GiB)")
    f = res["facts"]
    print(f"  ψ values defined: {f['psi_defined']}; dense end times {f['ends']}; "
          f"rank correlation {f['rank_correlation']:.4f}, slope ratio {f['slope_ratio']:.3f}")


if __name__ == "__main__":
    main()
