"""Bias, spread and speed of the tail-index estimators on Chambers–Mallows–Stuck samples
(docs/tail-index.md).

For each ``α`` of ``--alphas`` and each sample size of ``--n``, ``--replicates`` rows of
symmetric α-stable samples of scale ``σ = 1`` are fitted in one vectorised call per
estimator; the table gives the median error ``median(α̂) - α``, the median ``|α̂ - α|``, the
interquartile range of ``α̂``, the median of ``σ̂/σ`` and its interquartile range, and the
fraction of rows flagged reliable. The timing table gives the wall time of one call on
``--timing-rows`` rows of ``n = max(--n)`` samples at ``α = 1.5`` (median of ``--repeats``),
scaled to 1000 rows.

Run: ``python benchmarks/bench_stable_estimators.py`` (n = 10⁴, α = 1.2, 1.5, 1.8, 2.0,
20 replicates, one torch thread; about 30 s).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from gatescope.measures import koutrouvelis, mcculloch, stable_samples
from gatescope.measures._quantile import quantile

ESTIMATORS = {"McCulloch": mcculloch, "Koutrouvelis": koutrouvelis}


def spread(values: torch.Tensor) -> tuple[float, float]:
    """The median and the interquartile range of ``values`` (1-D)."""
    q25, q50, q75 = quantile(values, torch.tensor([0.25, 0.5, 0.75])).tolist()
    return q50, q75 - q25


def accuracy_rows(alphas: list[float], n: int, replicates: int, seed: int) -> list[str]:
    """The accuracy table's lines for sample size ``n``."""
    alpha = torch.tensor(alphas, dtype=torch.float64).repeat_interleave(replicates)
    x = stable_samples(alpha[:, None], (alpha.numel(), n), torch.Generator().manual_seed(seed))
    lines = []
    for name, estimator in ESTIMATORS.items():
        fit = estimator(x)
        for a in alphas:
            rows = alpha == a
            a_med, a_iqr = spread(fit.alpha[rows])
            s_med, s_iqr = spread(fit.scale[rows])
            abs_err = (fit.alpha[rows] - a).abs().median().item()
            share = fit.reliable[rows].double().mean().item()
            lines.append(f"| {name} | {n} | {a:.1f} | {a_med - a:+.4f} | {abs_err:.4f} | "
                         f"{a_iqr:.4f} | {s_med:.4f} | {s_iqr:.4f} | {share:.2f} |")
    return lines


def seconds_per_call(fn, repeats: int) -> float:
    """Median wall time of ``repeats`` calls of ``fn``."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--alphas", type=float, nargs="+", default=[1.2, 1.5, 1.8, 2.0])
    parser.add_argument("--n", type=int, nargs="+", default=[10_000])
    parser.add_argument("--replicates", type=int, default=20)
    parser.add_argument("--timing-rows", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    print("| estimator | n | α | median α̂ − α | median abs error | IQR α̂ | median σ̂/σ "
          "| IQR σ̂/σ | reliable |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n in args.n:
        print("\n".join(accuracy_rows(args.alphas, n, args.replicates, args.seed)))

    n = max(args.n)
    x = stable_samples(1.5, (args.timing_rows, n), torch.Generator().manual_seed(args.seed))
    print(f"\n| estimator | seconds per 1000 rows of n = {n} ({args.threads} thread"
          f"{'s' if args.threads > 1 else ''}) |")
    print("|---|---|")
    for name, estimator in ESTIMATORS.items():
        seconds = seconds_per_call(lambda e=estimator: e(x), args.repeats)
        print(f"| {name} | {seconds * 1000 / args.timing_rows:.2f} |")


if __name__ == "__main__":
    main()
