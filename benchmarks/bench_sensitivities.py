"""Speed and accuracy of ``gs.sensitivities`` against the paper code's naive method.

The naive method loops over every pair ``(t, k)`` in Python (batched over the probe batch),
multiplies the transport product and estimates its norm with 5 power iterations.

Run: ``python benchmarks/bench_sensitivities.py`` (prints medians of ``--repeats`` runs and
their ratio, both methods' worst relative error against ``torch.linalg.matrix_norm(M, 2)``,
and the peak memory of ``sensitivities``).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch

import gatescope as gs


def naive_sensitivities(J: torch.Tensor, power_iterations: int = 5) -> torch.Tensor:
    """The paper code's method: a Python loop over example, end and start time, one
    matmul per pair and 5 power iterations (chain-rule order here, unlike the paper's)."""
    Bsz, T, N, _ = J.shape
    S = torch.full((Bsz, T + 1, T + 1), float("nan"), dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    for b in range(Bsz):
        for t in range(1, T + 1):
            M = torch.eye(N, dtype=J.dtype)
            for k in range(t - 1, -1, -1):
                M = M @ J[b, k]
                v = torch.randn(N, generator=gen, dtype=J.dtype)
                v = v / v.norm()
                for _ in range(power_iterations):
                    v = M @ v
                    v = v / (v.norm() + 1e-12)
                S[b, t, k] = (M @ v).norm().item()
    return S


def reference(J: torch.Tensor) -> torch.Tensor:
    """Exact norms pair by pair in float64 (slow, used for the error only)."""
    Bsz, T, N, _ = J.shape
    S = torch.full((Bsz, T + 1, T + 1), float("nan"), dtype=torch.float64)
    J = J.double()
    for k in range(T):
        M = torch.eye(N, dtype=J.dtype).expand(Bsz, N, N)
        for t in range(k + 1, T + 1):
            M = J[:, t - 1] @ M
            S[:, t, k] = torch.linalg.matrix_norm(M, 2)
    return S


def worst_relative_error(S: torch.Tensor, ref: torch.Tensor) -> float:
    lower = torch.tril_indices(ref.shape[1], ref.shape[2], offset=-1)
    a, b = S[:, lower[0], lower[1]], ref[:, lower[0], lower[1]]
    return ((a - b).abs() / b).max().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=12)
    parser.add_argument("--seq-len", type=int, default=80)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--cell", default="multi_gate")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    torch.manual_seed(0)
    cell = gs.make_cell(args.cell, 4, args.hidden)
    with torch.no_grad():
        traj = cell.unroll(torch.rand(args.batch, args.seq_len, 4))
    J = gs.jacobians(cell, traj)
    pairs = args.batch * args.seq_len * (args.seq_len + 1) // 2

    def timed(fn):
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            out = fn(J)
            times.append(time.perf_counter() - start)
        return statistics.median(times), out

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fast_time, fast = timed(gs.sensitivities)
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    naive_time, naive = timed(naive_sensitivities)
    ref = reference(J)
    print(f"{args.cell}: B={args.batch} T={args.seq_len} n={args.hidden} float32, {pairs} products")
    print(f"gs.sensitivities  median {fast_time:.3f} s  worst rel. error "
          f"{worst_relative_error(fast, ref):.2e}")
    print(f"naive loop (5 PI) median {naive_time:.3f} s  worst rel. error "
          f"{worst_relative_error(naive, ref):.2e}")
    print(f"speed-up {naive_time / fast_time:.2f}x")
    print(f"peak RSS growth during gs.sensitivities: {(rss_after - rss_before) / 1024:.0f} MiB "
          f"(process peak {rss_after / 1024:.0f} MiB)")


if __name__ == "__main__":
    main()
