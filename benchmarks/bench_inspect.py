"""``gs.inspect`` at a real size: a 2-layer ``nn.LSTM`` (input 32, hidden 256), B = 8.

Each sequence length runs in its own subprocess, so its peak memory (``resource`` maxrss) is
its own. Prints, per T, the wall time of ``gs.inspect`` (no report written), the time of each
part of each layer, and the peak memory; then the ratio of the times.

    PYTHONPATH=src python benchmarks/bench_inspect.py              # T = 2000 and 4000
    PYTHONPATH=src python benchmarks/bench_inspect.py --layers 1   # one layer

The target (issue 11): 2 layers, T = 2000 in <= 3 min on a 2-core machine with < 4 GiB,
T = 4000 in <= 2.3x the T = 2000 time.
"""

from __future__ import annotations

import argparse
import time

from child_process import print_result, run_child


def child(T: int, layers: int, batch: int, hidden: int, threads: int | None) -> None:
    import torch

    import gatescope as gs

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    module = torch.nn.LSTM(32, hidden, num_layers=layers, batch_first=True)
    x = torch.randn(batch, T, 32)
    t0 = time.perf_counter()
    result = gs.inspect(module, x, quiet=True)
    wall = time.perf_counter() - t0
    parts = {u["label"]: u["timings"] for u in result.summary["units"]}
    print_result(T=T, wall_s=wall, parts=parts)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--T", type=int, nargs="+", default=[2000, 4000])
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default torch's)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.T[0], args.layers, args.batch, args.hidden, args.threads)
        return
    runs = []
    for T in args.T:
        options = ["--T", str(T), "--layers", str(args.layers), "--batch", str(args.batch),
                   "--hidden", str(args.hidden)]
        if args.threads:
            options += ["--threads", str(args.threads)]
        run = run_child(__file__, options)
        runs.append(run)
        print(f"nn.LSTM(32, {args.hidden}, num_layers={args.layers}), B={args.batch}, T={T}: "
              f"{run['wall_s']:.1f} s, peak memory {run['peak_gib']:.2f} GiB")
        for label, parts in run["parts"].items():
            print(f"    {label}: " + ", ".join(f"{k} {v:.1f} s" for k, v in parts.items()))
    if len(runs) >= 2:
        print(f"time ratio T={runs[1]['T']} / T={runs[0]['T']}: "
              f"{runs[1]['wall_s'] / runs[0]['wall_s']:.2f}")


if __name__ == "__main__":
    main()
